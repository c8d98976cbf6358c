"""Logit losses: cross-entropy, Hinton knowledge distillation, teacher ensembles.

All functions are pure functions of arrays with keyword-only options. They
compute in float32 even when given bfloat16 (log-softmax in low precision loses
the small probabilities that distillation transfers) and return per-example
values of shape ``(B,)``; the caller reduces and weights them.

The teacher side of every distillation loss is a constant: it is wrapped in
``jax.lax.stop_gradient``, so differentiating a loss never reaches a teacher
even when its logits are computed inside the same function.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

_SPACES = ("logits", "probs")


def _f32(x) -> Array:
    return jnp.asarray(x).astype(jnp.float32)


def _kl_from_log_probs(target_log_probs: Array, student_log_probs: Array) -> Array:
    """``KL(p || q) = sum_c p_c (log p_c - log q_c)`` over the last axis, ``0 log 0 = 0``."""
    p = jnp.exp(target_log_probs)
    # The where keeps 0 * (-inf) (a class with exactly zero target mass) at 0, not NaN.
    terms = jnp.where(p > 0, p * (target_log_probs - student_log_probs), 0.0)
    return jnp.sum(terms, axis=-1)


def cross_entropy(logits: Array, labels: Array, *, label_smoothing: float = 0.0) -> Array:
    """Softmax cross-entropy with optional label smoothing (Szegedy et al., CVPR 2016, Sec. 7).

    ``CE = -sum_c q_c log softmax(z)_c`` with ``q = (1 - eps) * onehot(y) + eps / C``.

    Args:
      logits: ``(B, C)`` student logits (any float dtype).
      labels: ``(B,)`` integer class labels, or ``(B, C)`` soft labels (rows sum to 1).
      label_smoothing: ``eps`` in ``[0, 1)``; mixes the labels with the uniform distribution.

    Returns:
      ``(B,)`` float32 per-example losses.
    """
    logits = _f32(logits)
    num_classes = logits.shape[-1]
    if labels.ndim == logits.ndim:
        targets = _f32(labels)
    else:
        targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    if label_smoothing:
        targets = (1.0 - label_smoothing) * targets + label_smoothing / num_classes
    return -jnp.sum(targets * jax.nn.log_softmax(logits, axis=-1), axis=-1)


def kd_loss(student_logits: Array, teacher_logits: Array, *, temperature: float) -> Array:
    """Knowledge distillation loss of Hinton, Vinyals & Dean, 2015 ("Distilling the Knowledge").

    ``L = T^2 * KL(softmax(t / T) || softmax(s / T))`` per example. The ``T^2``
    factor keeps the gradient magnitude independent of ``T`` (Hinton et al.,
    Sec. 2): for large ``T`` and zero-mean logits, ``L -> ||s - t||^2 / (2C)``.
    The teacher logits are gradient-stopped.

    Args:
      student_logits: ``(B, C)`` student logits ``s``.
      teacher_logits: ``(B, C)`` teacher logits ``t`` (e.g. an :func:`ensemble_targets`
        result in logit space).
      temperature: softmax temperature ``T > 0``.

    Returns:
      ``(B,)`` float32 per-example losses (0 where ``s == t``).
    """
    s = _f32(student_logits) / temperature
    t = jax.lax.stop_gradient(_f32(teacher_logits)) / temperature
    kl = _kl_from_log_probs(jax.nn.log_softmax(t, axis=-1), jax.nn.log_softmax(s, axis=-1))
    return temperature**2 * kl


def kd_loss_from_probs(student_logits: Array, target_probs: Array, *, temperature: float) -> Array:
    """Hinton et al. 2015 KD against given soft targets: ``T^2 * KL(q || softmax(s / T))``.

    Use with :func:`ensemble_targets` in ``space="probs"`` (which already applied
    the temperature to each teacher). The targets are gradient-stopped.

    Args:
      student_logits: ``(B, C)`` student logits ``s``.
      target_probs: ``(B, C)`` target distribution ``q`` (rows sum to 1, entries >= 0).
      temperature: softmax temperature ``T > 0`` applied to the student.

    Returns:
      ``(B,)`` float32 per-example losses.
    """
    s = _f32(student_logits) / temperature
    q = jax.lax.stop_gradient(_f32(target_probs))
    # Safe log: log(1) = 0 where q == 0, and those entries are masked in the KL.
    log_q = jnp.log(jnp.where(q > 0, q, 1.0))
    kl = jnp.sum(jnp.where(q > 0, q * (log_q - jax.nn.log_softmax(s, axis=-1)), 0.0), axis=-1)
    return temperature**2 * kl


def ensemble_targets(
    teacher_logits: Array,
    *,
    weights: Array | None = None,
    space: str = "logits",
    temperature: float = 1.0,
) -> Array:
    """Combines a teacher stack into one soft target (teacher-ensemble distillation).

    With weights ``w_k`` normalized to sum to one over the ``K`` teachers:

    * ``space="logits"``: returns the combined logits ``sum_k w_k z_k``, shape ``(B, C)``;
      feed them to :func:`kd_loss` (eq. K3 of docs/design.md, the DATW soft target
      ``softmax(sum_k w_k z_k / T)``, and with uniform weights the mean logit).
    * ``space="probs"``: returns the combined probabilities
      ``sum_k w_k softmax(z_k / T)``, shape ``(B, C)``, rows summing to one; feed
      them to :func:`kd_loss_from_probs` with the same ``T``.

    Args:
      teacher_logits: ``(K, B, C)`` stacked teacher logits.
      weights: ``None`` (uniform ``1 / K``), ``(K,)`` shared weights or ``(B, K)``
        per-sample weights. Non-negative; normalized to sum to one over ``K``.
      space: ``"logits"`` or ``"probs"``.
      temperature: softmax temperature of each teacher (``space="probs"`` only).

    Returns:
      ``(B, C)`` float32 combined logits or probabilities (see above).
    """
    if space not in _SPACES:
        raise ValueError(f"space must be one of {_SPACES}, got {space!r}")
    z = _f32(teacher_logits)
    if z.ndim != 3:
        raise ValueError(f"teacher_logits must be (K, B, C), got shape {z.shape}")
    num_teachers, batch, _ = z.shape
    if weights is None:
        w = jnp.full((batch, num_teachers), 1.0 / num_teachers, jnp.float32)
    else:
        w = _f32(weights)
        if w.shape == (num_teachers,):
            w = jnp.broadcast_to(w, (batch, num_teachers))
        elif w.shape != (batch, num_teachers):
            raise ValueError(
                f"weights must be ({num_teachers},) or ({batch}, {num_teachers}), got {w.shape}"
            )
        w = w / jnp.sum(w, axis=-1, keepdims=True)
    if space == "probs":
        z = jax.nn.softmax(z / temperature, axis=-1)
    return jnp.einsum("bk,kbc->bc", w, z)
