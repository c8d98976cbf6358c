"""Discrepancy-Aware Teacher Weighting (DATW) for dual/multi-teacher distillation.

The adaptive dual-teacher paper ("Revisiting Cross-Architecture Distillation:
Adaptive Dual-Teacher Transfer for Lightweight Video Models", seeds/001) weights
teachers per sample by their confidence and their discrepancy from the student,
but gives no formula. This module implements the formulation documented in
DESIGN.md ("DATW"); for each sample, teacher ``k`` with logits ``z_k`` and the
student's logits ``s`` (gradient stopped):

* confidence   ``c_k = 1 - H(softmax(z_k / T)) / log(C)``                  (eq. D1)
* discrepancy  ``d_k = 1 - cos(z_k, s)``                                  (eq. D2)
* efficacy     ``e_k = a c_k + b d_k``  or  ``e_k = c_k^a d_k^b``           (eq. D3)
* weights      ``w = softmax_k(e / gamma)``                               (eq. D4)
* loss         ``T^2 KL(softmax(sum_k w_k z_k / T) || softmax(s / T))``    (eq. D5)

The weights carry no gradient: the student's logits are gradient-stopped inside
the weighting and the weights themselves are gradient-stopped, so the student
is trained only through the KL term against a fixed target.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from vkd_jax.losses import kd

Array = jax.Array

_COMBINES = ("sum", "product")
_EPS = 1e-12


def teacher_confidence(teacher_logits: Array, *, temperature: float) -> Array:
    """Normalized confidence ``c_k = 1 - H(softmax(z_k / T)) / log(C)`` (DESIGN.md eq. D1).

    Args:
      teacher_logits: ``(..., C)`` logits.
      temperature: softmax temperature ``T``.

    Returns:
      ``(...)`` float32 confidences in ``[0, 1]`` (1 = one-hot, 0 = uniform).
    """
    z = teacher_logits.astype(jnp.float32) / temperature
    log_p = jax.nn.log_softmax(z, axis=-1)
    p = jnp.exp(log_p)
    entropy = -jnp.sum(jnp.where(p > 0, p * log_p, 0.0), axis=-1)
    num_classes = z.shape[-1]
    # A single class carries no uncertainty; avoid 0 / log(1).
    norm = math.log(num_classes) if num_classes > 1 else 1.0
    return jnp.clip(1.0 - entropy / norm, 0.0, 1.0)


def logit_discrepancy(teacher_logits: Array, student_logits: Array) -> Array:
    """Cosine distance ``d_k = 1 - cos(z_k, s)`` in logit space (DESIGN.md eq. D2).

    Args:
      teacher_logits: ``(..., C)`` teacher logits.
      student_logits: ``(..., C)`` student logits (broadcastable).

    Returns:
      ``(...)`` float32 distances in ``[0, 2]``; a zero logit vector counts as cos = 0.
    """
    z = teacher_logits.astype(jnp.float32)
    s = student_logits.astype(jnp.float32)
    dot = jnp.sum(z * s, axis=-1)
    # Safe norms: max(|z||s|, eps) keeps a zero vector (e.g. an untrained head) finite.
    denom = jnp.sqrt(jnp.maximum(jnp.sum(z * z, axis=-1) * jnp.sum(s * s, axis=-1), _EPS**2))
    return jnp.clip(1.0 - dot / denom, 0.0, 2.0)


def datw_terms(
    student_logits: Array,
    teacher_logits: Array,
    *,
    temperature: float,
    confidence_weight: float = 1.0,
    discrepancy_weight: float = 1.0,
    weight_temperature: float = 1.0,
    combine: str = "sum",
) -> tuple[Array, Array, Array]:
    """DATW weights with the confidence and discrepancy they come from, DESIGN.md eqs. D1-D4.

    Arguments as in :func:`datw_weights`.

    Returns:
      ``(weights, confidence, discrepancy)``, each ``(B, K)`` float32 and
      gradient-stopped: the weights of eq. D4, ``c_k`` of eq. D1, ``d_k`` of eq. D2.
      Training logs the last two to show why a teacher got its weight.
    """
    if combine not in _COMBINES:
        raise ValueError(f"combine must be one of {_COMBINES}, got {combine!r}")
    s = jax.lax.stop_gradient(student_logits.astype(jnp.float32))
    z = jax.lax.stop_gradient(teacher_logits.astype(jnp.float32))
    if z.ndim != 3:
        raise ValueError(f"teacher_logits must be (K, B, C), got shape {z.shape}")
    c = teacher_confidence(z, temperature=temperature)  # (K, B)
    d = logit_discrepancy(z, s[None])  # (K, B)
    if combine == "sum":
        e = confidence_weight * c + discrepancy_weight * d
    else:
        # c, d >= 0 by the clips above, so the powers are real.
        e = jnp.power(c, confidence_weight) * jnp.power(d, discrepancy_weight)
    w = jax.nn.softmax(e / weight_temperature, axis=0)  # over teachers
    return jax.lax.stop_gradient((w.T, c.T, d.T))


def datw_weights(
    student_logits: Array,
    teacher_logits: Array,
    *,
    temperature: float,
    confidence_weight: float = 1.0,
    discrepancy_weight: float = 1.0,
    weight_temperature: float = 1.0,
    combine: str = "sum",
) -> Array:
    """Per-sample DATW teacher weights, DESIGN.md eqs. D1-D4.

    Args:
      student_logits: ``(B, C)`` student logits ``s`` (gradient-stopped here).
      teacher_logits: ``(K, B, C)`` stacked teacher logits ``z_k``.
      temperature: ``T`` of the confidence entropy (the distillation temperature).
      confidence_weight: ``a`` in eq. D3.
      discrepancy_weight: ``b`` in eq. D3.
      weight_temperature: ``gamma > 0`` of the softmax over teachers (eq. D4);
        small ``gamma`` sharpens the weights towards the most effective teacher.
      combine: ``"sum"`` (``a c + b d``) or ``"product"`` (``c^a d^b``).

    Returns:
      ``(B, K)`` float32 weights, non-negative, each row summing to 1, gradient-stopped.
    """
    return datw_terms(
        student_logits,
        teacher_logits,
        temperature=temperature,
        confidence_weight=confidence_weight,
        discrepancy_weight=discrepancy_weight,
        weight_temperature=weight_temperature,
        combine=combine,
    )[0]


def datw_loss(
    student_logits: Array,
    teacher_logits: Array,
    *,
    temperature: float,
    confidence_weight: float = 1.0,
    discrepancy_weight: float = 1.0,
    weight_temperature: float = 1.0,
    combine: str = "sum",
) -> Array:
    """DATW distillation loss, DESIGN.md eq. D5 (Hinton KD against the DATW-weighted target).

    ``L = T^2 KL(softmax(sum_k w_k z_k / T) || softmax(s / T))`` with ``w`` from
    :func:`datw_weights`. With equal weights this is KD against the mean teacher
    logit (``kd.ensemble_targets``), the uniform dual-teacher baseline.

    Args:
      student_logits: ``(B, C)`` student logits ``s``.
      teacher_logits: ``(K, B, C)`` stacked teacher logits.
      temperature, confidence_weight, discrepancy_weight, weight_temperature, combine:
        as in :func:`datw_weights`.

    Returns:
      ``(B,)`` float32 per-example losses. Gradients reach only ``student_logits``
      and only through the KL term.
    """
    w = datw_weights(
        student_logits,
        teacher_logits,
        temperature=temperature,
        confidence_weight=confidence_weight,
        discrepancy_weight=discrepancy_weight,
        weight_temperature=weight_temperature,
        combine=combine,
    )
    target = kd.ensemble_targets(teacher_logits, weights=w, space="logits")
    return kd.kd_loss(student_logits, target, temperature=temperature)
