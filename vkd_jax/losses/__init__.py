"""Distillation losses: pure functions of arrays, usable without any config object.

Per-example losses return ``(B,)`` float32 arrays (the caller reduces and
weights them); the RKD losses are batch-level scalars. Every function computes
in float32 even for bfloat16 inputs and works under ``jit``, ``grad`` and ``vmap``::

    from vkd_jax import losses
    per_example = losses.kd_loss(student_logits, teacher_logits, temperature=4.0)

``losses.objective`` builds the configured total loss of docs/design.md (eq. T1) from model
outputs (it is the only part that reads a config).
"""

from vkd_jax.losses import datw, feature, kd, objective, rkd, sdd
from vkd_jax.losses.datw import datw_loss, datw_weights
from vkd_jax.losses.feature import feature_kd_loss
from vkd_jax.losses.kd import cross_entropy, ensemble_targets, kd_loss, kd_loss_from_probs
from vkd_jax.losses.rkd import pairwise_distances, rkd_angle_loss, rkd_distance_loss
from vkd_jax.losses.sdd import (
    adaptive_avg_pool3d,
    fixed_projection,
    phi_cnn,
    phi_vit,
    sdd_adapter_loss,
    sdd_loss,
    sdd_target,
)

__all__ = [
    "adaptive_avg_pool3d",
    "cross_entropy",
    "datw",
    "datw_loss",
    "datw_weights",
    "ensemble_targets",
    "feature",
    "feature_kd_loss",
    "fixed_projection",
    "kd",
    "kd_loss",
    "kd_loss_from_probs",
    "objective",
    "pairwise_distances",
    "phi_cnn",
    "phi_vit",
    "rkd",
    "rkd_angle_loss",
    "rkd_distance_loss",
    "sdd",
    "sdd_adapter_loss",
    "sdd_loss",
    "sdd_target",
]
