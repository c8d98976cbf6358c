"""Feature-map distillation (FitNets: Romero et al., "FitNets: Hints for Thin Deep
Nets", ICLR 2015).

FitNets' hint loss (eq. 3) is ``1/2 ||u_h(x) - r(v_g(x); W_r)||^2`` between the
teacher's hint layer ``u_h`` and a trainable regressor ``r`` (here: the adapter
in ``objective.DistillationHeads``) on the student's guided layer ``v_g``. We
average instead of sum (and drop the 1/2) so the scale does not depend on the
feature size; the loss weight absorbs the constant.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def feature_kd_loss(adapted_student: Array, teacher_features: Array) -> Array:
    """FitNets hint loss (Romero et al. 2015, eq. 3) as a per-example mean squared error.

    Args:
      adapted_student: ``(B, ...)`` student features after the adapter, same shape as
        the teacher's (e.g. ``(B, T, H, W, C_t)`` or ``(B, D_t)``).
      teacher_features: ``(B, ...)`` teacher features (gradient-stopped).

    Returns:
      ``(B,)`` float32 per-example mean squared errors over all non-batch entries.
    """
    s = adapted_student.astype(jnp.float32)
    t = jax.lax.stop_gradient(teacher_features.astype(jnp.float32))
    if s.shape != t.shape:
        raise ValueError(f"adapted student {s.shape} and teacher {t.shape} shapes differ")
    return jnp.mean(jnp.square(s - t).reshape(s.shape[0], -1), axis=1)
