"""Discrepancy-Aware Teacher Weighting (DATW), its variants, controls and published peers.

The adaptive dual-teacher paper ("Revisiting Cross-Architecture Distillation:
Adaptive Dual-Teacher Transfer for Lightweight Video Models") weights teachers per
sample by their confidence and their discrepancy from the student, but gives no
formula. This module implements the formulation of docs/design.md ("DATW") and the
variants a fair test needs. For each sample, teacher ``k`` with logits ``z_k``, the
student's logits ``s`` (gradient stopped), ``C`` classes, ``K`` teachers, the KD
temperature ``T`` and the confidence temperature ``T_c`` (``T`` unless set):

* confidence (eq. D1), ``confidence=``
  - ``"entropy"``:  ``c_k = 1 - H(softmax(z_k / T_c)) / log(C)``   (the original, at ``T_c = T``)
  - ``"max_prob"``: ``c_k = max_j softmax(z_k / T_c)_j``
* discrepancy (eq. D2), ``discrepancy=``
  - ``"cosine"``:          ``d_k = 1 - cos(z_k, s)``                  (the original; not
    shift-invariant: adding a constant to the logits changes it)
  - ``"centered_cosine"``: ``d_k = 1 - cos(z_k - mean(z_k), s - mean(s))`` (shift-invariant)
  - ``"js"``:              ``d_k = JS(softmax(z_k / T), softmax(s / T)) / log 2`` in ``[0, 1]``
* optional batch standardisation (eq. D3'), ``standardize=True``: each term minus its
  mean over the batch's ``B x K`` entries, over their std (``+1e-6``), so that ``a``
  and ``b`` weigh comparable spreads and the softmax sees differences, not levels
* efficacy (eq. D3)  ``e_k = a c_k + b d_k``  or  ``e_k = c_k^a d_k^b``; ``a = 0`` is
  discrepancy-only, ``b = 0`` confidence-only
* weights (eq. D4)   ``w = softmax_k(e / gamma)``

Controls (never defaults) and published peers, each a ``(B, K)`` weight matrix:

* fixed weights (eq. D9) ``w_k = v_k / sum_j v_j`` for a given vector ``v`` (e.g.
  DATW's mean weights: separates the tilt between teachers from per-sample adaptivity);
* the oracle (eq. D6): per clip, uniform over the teachers whose top-1 is the label,
  uniform over all when none is right (uses labels: an upper bound, not a method);
* CA-MKD (Zhang, Chen and Wang, "Confidence-Aware Multi-Teacher Knowledge
  Distillation", ICASSP 2022; eq. D7): ``w_k = (1 - softmax_k(CE(z_k, y))) / (K - 1)``,
  the softmax taken over teachers of each teacher's cross-entropy with the label;
* EBKD (entropy-based; eq. D8): ``w_k = (1 - H_k / sum_j H_j) / (K - 1)`` with
  ``H_k = H(softmax(z_k / T_c))`` (sums to 1; ``K = 1`` gives 1).

Where the weights act (eq. D5), ``place=``:

* ``"mix"``: one target from the mixed logits, ``T^2 KL(softmax(sum_k w_k z_k / T) ||
  softmax(s / T))`` (the original DATW); or from mixed probabilities (``space="probs"``)
* ``"per_teacher"``: ``sum_k w_k T^2 KL(softmax(z_k / T) || softmax(s / T))`` (CA-MKD's place)

Every weight is gradient-stopped (so is the student's logit inside them): the student
is trained only through the KL terms against fixed targets.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from vkd_jax.losses import kd

Array = jax.Array

_COMBINES = ("sum", "product")
CONFIDENCES = ("entropy", "max_prob")
DISCREPANCIES = ("cosine", "centered_cosine", "js")
PLACES = ("mix", "per_teacher")
_EPS = 1e-12
_STD_EPS = 1e-6


def entropy(logits: Array, *, temperature: float) -> Array:
    """``H(softmax(z / T))`` in nats over the last axis, float32, ``0 log 0 = 0``."""
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
    p = jnp.exp(log_p)
    return -jnp.sum(jnp.where(p > 0, p * log_p, 0.0), axis=-1)


def max_probability(teacher_logits: Array, *, temperature: float) -> Array:
    """``c_k = max_j softmax(z_k / T)_j`` in ``[1/C, 1]`` (docs/design.md eq. D1, max_prob)."""
    return jnp.max(jax.nn.softmax(teacher_logits.astype(jnp.float32) / temperature, -1), -1)


def teacher_confidence(teacher_logits: Array, *, temperature: float) -> Array:
    """Normalized confidence ``c_k = 1 - H(softmax(z_k / T)) / log(C)`` (docs/design.md eq. D1).

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


def centered_cosine_discrepancy(teacher_logits: Array, student_logits: Array) -> Array:
    """``d_k = 1 - cos(z_k - mean(z_k), s - mean(s))`` (docs/design.md eq. D2, shift-invariant).

    A logit vector's mean carries no information (softmax ignores it, and the student's
    gets no gradient), so it is removed before the cosine. Returns ``(...)`` in ``[0, 2]``.
    """
    z = teacher_logits.astype(jnp.float32)
    s = student_logits.astype(jnp.float32)
    z = z - jnp.mean(z, axis=-1, keepdims=True)
    s = s - jnp.mean(s, axis=-1, keepdims=True)
    return logit_discrepancy(z, s)


def js_discrepancy(teacher_logits: Array, student_logits: Array, *, temperature: float) -> Array:
    """``d_k = JS(p_k, q) / log 2`` with ``p_k = softmax(z_k / T)``, ``q = softmax(s / T)``.

    Jensen-Shannon divergence ``JS(p, q) = (KL(p || m) + KL(q || m)) / 2``, ``m = (p + q) / 2``
    (docs/design.md eq. D2), divided by its maximum ``log 2``: in ``[0, 1]``, symmetric
    and shift-invariant.
    """
    p = jax.nn.softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
    q = jax.nn.softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
    m = 0.5 * (p + q)

    def kl(a, b):
        return jnp.sum(jnp.where(a > 0, a * (jnp.log(jnp.maximum(a, _EPS)) - jnp.log(b)), 0.0), -1)

    js = 0.5 * (kl(p, m) + kl(q, m))
    return jnp.clip(js / math.log(2.0), 0.0, 1.0)


def standardize(x: Array) -> Array:
    """``(x - mean) / (std + 1e-6)`` over all entries (docs/design.md eq. D3')."""
    return (x - jnp.mean(x)) / (jnp.std(x) + _STD_EPS)


def logit_discrepancy(teacher_logits: Array, student_logits: Array) -> Array:
    """Cosine distance ``d_k = 1 - cos(z_k, s)`` in logit space (docs/design.md eq. D2).

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
    confidence: str = "entropy",
    confidence_temperature: float | None = None,
    discrepancy: str = "cosine",
    standardize_terms: bool = False,
) -> tuple[Array, Array, Array]:
    """DATW weights with the confidence and discrepancy they come from, docs/design.md eqs. D1-D4.

    Arguments as in :func:`datw_weights`.

    Returns:
      ``(weights, confidence, discrepancy)``, each ``(B, K)`` float32 and
      gradient-stopped: the weights of eq. D4, ``c_k`` of eq. D1, ``d_k`` of eq. D2
      (before any standardisation). Training logs the last two to show why a teacher
      got its weight.
    """
    if combine not in _COMBINES:
        raise ValueError(f"combine must be one of {_COMBINES}, got {combine!r}")
    if confidence not in CONFIDENCES:
        raise ValueError(f"confidence must be one of {CONFIDENCES}, got {confidence!r}")
    if discrepancy not in DISCREPANCIES:
        raise ValueError(f"discrepancy must be one of {DISCREPANCIES}, got {discrepancy!r}")
    if combine == "product" and standardize_terms:
        raise ValueError("standardized terms can be negative: use combine='sum' with them")
    s = jax.lax.stop_gradient(student_logits.astype(jnp.float32))
    z = jax.lax.stop_gradient(teacher_logits.astype(jnp.float32))
    if z.ndim != 3:
        raise ValueError(f"teacher_logits must be (K, B, C), got shape {z.shape}")
    t_c = temperature if not confidence_temperature else confidence_temperature
    if confidence == "entropy":
        c = teacher_confidence(z, temperature=t_c)  # (K, B)
    else:
        c = max_probability(z, temperature=t_c)
    if discrepancy == "cosine":
        d = logit_discrepancy(z, s[None])  # (K, B)
    elif discrepancy == "centered_cosine":
        d = centered_cosine_discrepancy(z, s[None])
    else:
        d = js_discrepancy(z, s[None], temperature=temperature)
    c_used, d_used = (standardize(c), standardize(d)) if standardize_terms else (c, d)
    if combine == "sum":
        e = confidence_weight * c_used + discrepancy_weight * d_used
    else:
        # c, d >= 0 by the clips above, so the powers are real.
        e = jnp.power(c_used, confidence_weight) * jnp.power(d_used, discrepancy_weight)
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
    confidence: str = "entropy",
    confidence_temperature: float | None = None,
    discrepancy: str = "cosine",
    standardize_terms: bool = False,
) -> Array:
    """Per-sample DATW teacher weights, docs/design.md eqs. D1-D4.

    Args:
      student_logits: ``(B, C)`` student logits ``s`` (gradient-stopped here).
      teacher_logits: ``(K, B, C)`` stacked teacher logits ``z_k``.
      temperature: ``T`` of the confidence entropy (the distillation temperature).
      confidence_weight: ``a`` in eq. D3.
      discrepancy_weight: ``b`` in eq. D3.
      weight_temperature: ``gamma > 0`` of the softmax over teachers (eq. D4);
        small ``gamma`` sharpens the weights towards the most effective teacher.
      combine: ``"sum"`` (``a c + b d``) or ``"product"`` (``c^a d^b``).
      confidence: ``"entropy"`` or ``"max_prob"`` (eq. D1).
      confidence_temperature: ``T_c`` of the confidence (and of EBKD's entropy);
        ``None`` or 0 means ``temperature`` (the original DATW).
      discrepancy: ``"cosine"``, ``"centered_cosine"`` or ``"js"`` (eq. D2).
      standardize_terms: batch-standardise ``c`` and ``d`` before eq. D3 (eq. D3').

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
        confidence=confidence,
        confidence_temperature=confidence_temperature,
        discrepancy=discrepancy,
        standardize_terms=standardize_terms,
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
    """DATW distillation loss, docs/design.md eq. D5 (Hinton KD against the DATW-weighted target).

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


# ------------------------------------------------------------- controls and peers


def _labels_index(labels: Array) -> Array:
    labels = jnp.asarray(labels)
    if labels.ndim == 2:  # one-hot / soft labels
        return jnp.argmax(labels, axis=-1)
    return labels.astype(jnp.int32)


def fixed_weights(weights, batch: int) -> Array:
    """Fixed weights (docs/design.md eq. D9): ``v >= 0``, shape ``(K,)``, as rows ``v / sum(v)``."""
    v = jnp.asarray(weights, jnp.float32)
    if v.ndim != 1 or v.shape[0] < 1:
        raise ValueError(f"fixed weights must be a non-empty (K,) vector, got shape {v.shape}")
    return jnp.broadcast_to(v / jnp.sum(v), (batch, v.shape[0]))


def oracle_weights(teacher_logits: Array, labels: Array) -> Array:
    """The oracle control (docs/design.md eq. D6): per clip, uniform over the right teachers.

    ``w_k = r_k / sum_j r_j`` with ``r_k = [argmax z_k = y]``; uniform ``1/K`` when no
    teacher is right. Uses the labels: an upper bound on per-sample weighting, not a
    method.

    Returns:
      ``(B, K)`` float32, gradient-stopped.
    """
    z = jax.lax.stop_gradient(teacher_logits.astype(jnp.float32))
    y = _labels_index(labels)
    right = (jnp.argmax(z, axis=-1) == y[None]).astype(jnp.float32).T  # (B, K)
    count = jnp.sum(right, axis=-1, keepdims=True)
    w = jnp.where(count > 0, right / jnp.maximum(count, 1.0), 1.0 / z.shape[0])
    return jax.lax.stop_gradient(w)


def ca_mkd_weights(teacher_logits: Array, labels: Array) -> Array:
    """CA-MKD weights (Zhang, Chen and Wang, ICASSP 2022; docs/design.md eq. D7).

    ``w_k = (1 - softmax_k(CE(z_k, y))) / (K - 1)``: a teacher whose prediction has a
    lower cross-entropy with the label gets more weight. ``K = 1`` gives 1.

    Returns:
      ``(B, K)`` float32, rows summing to 1, gradient-stopped.
    """
    z = jax.lax.stop_gradient(teacher_logits.astype(jnp.float32))
    k = z.shape[0]
    if k == 1:
        return jnp.ones((z.shape[1], 1), jnp.float32)
    y = _labels_index(labels)
    ce = -jnp.take_along_axis(jax.nn.log_softmax(z, axis=-1), y[None, :, None], axis=-1)[..., 0]
    w = (1.0 - jax.nn.softmax(ce, axis=0)) / (k - 1)  # (K, B)
    return jax.lax.stop_gradient(w.T)


def ebkd_weights(teacher_logits: Array, *, temperature: float) -> Array:
    """Entropy-based weights (EBKD; docs/design.md eq. D8): ``(1 - H_k / sum_j H_j) / (K - 1)``.

    ``H_k = H(softmax(z_k / T))``; the less uncertain teacher gets more weight. Where
    every teacher is one-hot (all ``H_k = 0``) the weights are uniform. ``K = 1`` gives 1.

    Returns:
      ``(B, K)`` float32, rows summing to 1, gradient-stopped.
    """
    z = jax.lax.stop_gradient(teacher_logits.astype(jnp.float32))
    k = z.shape[0]
    if k == 1:
        return jnp.ones((z.shape[1], 1), jnp.float32)
    h = entropy(z, temperature=temperature)  # (K, B)
    total = jnp.sum(h, axis=0, keepdims=True)
    share = jnp.where(total > _EPS, h / jnp.maximum(total, _EPS), 1.0 / k)
    return jax.lax.stop_gradient(((1.0 - share) / (k - 1)).T)


def weighted_kd_loss(
    student_logits: Array,
    teacher_logits: Array,
    weights: Array,
    *,
    temperature: float,
    place: str = "mix",
    space: str = "logits",
) -> Array:
    """KD with per-sample teacher weights, at either place (docs/design.md eq. D5).

    * ``place="mix"``: KD against one target, ``sum_k w_k z_k`` (``space="logits"``) or
      ``sum_k w_k softmax(z_k / T)`` (``space="probs"``);
    * ``place="per_teacher"``: ``sum_k w_k T^2 KL(softmax(z_k / T) || softmax(s / T))``.

    Args:
      student_logits: ``(B, C)``.
      teacher_logits: ``(K, B, C)``.
      weights: ``(B, K)`` (gradient-stopped here) or ``(K,)``.
      temperature: ``T``.
      place: ``"mix"`` or ``"per_teacher"``.
      space: ``"logits"`` or ``"probs"`` (``place="mix"`` only).

    Returns:
      ``(B,)`` float32 per-example losses.
    """
    if place not in PLACES:
        raise ValueError(f"place must be one of {PLACES}, got {place!r}")
    w = jax.lax.stop_gradient(jnp.asarray(weights, jnp.float32))
    z = teacher_logits.astype(jnp.float32)
    if w.ndim == 1:
        w = jnp.broadcast_to(w, (z.shape[1], z.shape[0]))
    if place == "mix":
        target = kd.ensemble_targets(z, weights=w, space=space, temperature=temperature)
        if space == "probs":
            return kd.kd_loss_from_probs(student_logits, target, temperature=temperature)
        return kd.kd_loss(student_logits, target, temperature=temperature)
    w = w / jnp.sum(w, axis=-1, keepdims=True)
    per = jax.vmap(lambda zk: kd.kd_loss(student_logits, zk, temperature=temperature))(z)  # (K, B)
    return jnp.sum(w.T * per, axis=0)
