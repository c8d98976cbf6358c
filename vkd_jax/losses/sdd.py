"""Structure Discrepancy-aware Distillation (SDD) targets and loss.

From the adaptive dual-teacher paper ("Revisiting Cross-Architecture
Distillation: Adaptive Dual-Teacher Transfer for Lightweight Video Models",
seeds/001): the student learns the residual ``r = f_ViT - f_CNN`` between the
ViT and the CNN teacher's features at aligned stages, "with optional
projections phi to match shapes". DESIGN.md ("SDD") fixes the projections:

* ``P``: adaptive average pooling of a ``(B, T, H, W, C)`` map to a common grid
  ``(T', H', W')`` (PyTorch ``AdaptiveAvgPool3d`` bins);
* ``N``: per-position normalization (zero mean, unit variance over channels);
* ``Q``: a fixed orthogonal random projection ``C -> D`` generated from a seed,

so ``phi(f) = N(P(f)) Q`` and the residual target is                    (eq. S1)
``r = stop_gradient(phi_vit(f_vit) - phi_cnn(f_cnn))``, shape ``(B, T', H', W', D)``.
The loss compares the Structure Discrepancy Branch's prediction with ``r`` (eq. S2).

The projections are constants computed with NumPy at trace time, never
parameters: a trainable target could collapse to zero.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vkd_jax.losses import rkd

# Pooling lives with the models' layers (the training-only branch pools too, and models do
# not import losses); re-exported as part of this module's API.
from vkd_jax.models.layers import adaptive_avg_pool3d, adaptive_pool_matrix  # noqa: F401

Array = jax.Array

LOSS_TYPES = ("mse", "smooth_l1", "cosine")
_NORM_EPS = 1e-5
_COS_EPS = 1e-8
# Salts of the two projection streams, so phi_vit and phi_cnn differ for one seed.
_VIT_SALT = 0
_CNN_SALT = 1


# -------------------------------------------------------------- projections


@functools.lru_cache(maxsize=64)
def fixed_projection(in_dim: int, out_dim: int, seed: int, salt: int = 0) -> np.ndarray:
    """Fixed orthogonal random projection ``Q``, ``(in_dim, out_dim)`` float32, from a seed.

    ``Q`` has orthonormal columns (``in_dim >= out_dim``) or rows (otherwise), from the
    QR decomposition of a Gaussian matrix with the sign fix of Mezzadri (2007) so it
    is Haar-distributed and reproducible. It is scaled by ``sqrt(max(1, out/in))`` so
    that a unit-variance input gives unit-variance outputs in expectation.
    A pure function of its arguments: never a parameter.
    """
    rng = np.random.default_rng([int(seed), int(salt), int(in_dim), int(out_dim)])
    big, small = max(in_dim, out_dim), min(in_dim, out_dim)
    a = rng.standard_normal((big, small))
    q, r = np.linalg.qr(a)
    q = q * np.sign(np.where(np.diag(r) == 0, 1.0, np.diag(r)))[None, :]
    if in_dim < out_dim:
        q = q.T  # (in, out) with orthonormal rows
    q = q * math.sqrt(max(1.0, out_dim / in_dim))
    q = q.astype(np.float32)
    q.setflags(write=False)
    return q


def normalize_positions(x: Array, eps: float = _NORM_EPS) -> Array:
    """Per-position normalization: zero mean, unit variance over the channel axis."""
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.var(x, axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps)


def _phi(features: Array, grid: Sequence[int], dim: int, seed: int, salt: int) -> Array:
    x = normalize_positions(adaptive_avg_pool3d(features, grid))
    q = jnp.asarray(fixed_projection(x.shape[-1], int(dim), int(seed), salt))
    return x @ q


def phi_vit(features: Array, *, grid: Sequence[int], dim: int, seed: int = 0) -> Array:
    """``phi_vit(f) = N(P(f)) Q_vit``: ViT-teacher features on the common grid and width.

    Args:
      features: ``(B, T, H, W, C_vit)`` ViT tokens reshaped to a grid.
      grid: ``(T', H', W')``.
      dim: common width ``D``.
      seed: projection seed (``Q_vit`` and ``Q_cnn`` differ for one seed).

    Returns:
      ``(B, T', H', W', D)`` float32.
    """
    return _phi(features, grid, dim, seed, _VIT_SALT)


def phi_cnn(features: Array, *, grid: Sequence[int], dim: int, seed: int = 0) -> Array:
    """``phi_cnn(f) = N(P(f)) Q_cnn``: CNN-teacher features on the common grid and width.

    Args/Returns: as :func:`phi_vit`, for ``(B, T, H, W, C_cnn)`` CNN features.
    """
    return _phi(features, grid, dim, seed, _CNN_SALT)


def sdd_target(
    vit_features: Array, cnn_features: Array, *, grid: Sequence[int], dim: int, seed: int = 0
) -> Array:
    """Residual target ``r = stop_gradient(phi_vit(f_vit) - phi_cnn(f_cnn))`` (eq. S1).

    Returns:
      ``(B, T', H', W', D)`` float32, with no gradient to either teacher.
    """
    r = phi_vit(vit_features, grid=grid, dim=dim, seed=seed) - phi_cnn(
        cnn_features, grid=grid, dim=dim, seed=seed
    )
    return jax.lax.stop_gradient(r)


# --------------------------------------------------------------------- loss


def regression_loss(prediction: Array, target: Array, *, loss_type: str = "mse") -> Array:
    """Per-example distance between ``(B, ..., D)`` maps (eq. S2).

    * ``mse``: mean squared error over all non-batch entries;
    * ``smooth_l1``: smooth-L1 (beta 1) averaged over all non-batch entries;
    * ``cosine``: ``1 - cos`` along the last (width) axis, averaged over positions.

    The target is gradient-stopped.

    Returns:
      ``(B,)`` float32 per-example losses.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    p = prediction.astype(jnp.float32)
    t = jax.lax.stop_gradient(target.astype(jnp.float32))
    if p.shape != t.shape:
        raise ValueError(f"prediction {p.shape} and target {t.shape} shapes differ")
    axes = tuple(range(1, p.ndim))
    if loss_type == "mse":
        return jnp.mean(jnp.square(p - t), axis=axes)
    if loss_type == "smooth_l1":
        return jnp.mean(rkd.smooth_l1(p - t), axis=axes)
    dot = jnp.sum(p * t, axis=-1)
    # sqrt(max(|p|^2 |t|^2, eps^2)): finite value and gradient for zero vectors.
    denom = jnp.sqrt(jnp.maximum(jnp.sum(p * p, axis=-1) * jnp.sum(t * t, axis=-1), _COS_EPS**2))
    cos_dist = 1.0 - dot / denom
    return jnp.mean(cos_dist.reshape(cos_dist.shape[0], -1), axis=1)


def sdd_loss(
    predicted_residual: Array,
    vit_features: Array,
    cnn_features: Array,
    *,
    grid: Sequence[int],
    dim: int,
    seed: int = 0,
    loss_type: str = "mse",
) -> Array:
    """SDD loss: the branch's prediction against the ViT-CNN residual (eqs. S1-S2).

    Args:
      predicted_residual: ``(B, T', H', W', D)`` output of
        ``vkd_jax.models.sdb.StructureDiscrepancyBranch``.
      vit_features: ``(B, T, H, W, C_vit)`` ViT teacher features ``f_vit``.
      cnn_features: ``(B, T2, H2, W2, C_cnn)`` CNN teacher features ``f_cnn``.
      grid: common grid ``(T', H', W')``.
      dim: common width ``D``.
      seed: seed of the fixed projections.
      loss_type: ``mse`` | ``smooth_l1`` | ``cosine`` (see :func:`regression_loss`).

    Returns:
      ``(B,)`` float32 per-example losses; no gradient reaches the teacher features.
    """
    target = sdd_target(vit_features, cnn_features, grid=grid, dim=dim, seed=seed)
    return regression_loss(predicted_residual, target, loss_type=loss_type)


def sdd_adapter_loss(
    adapted_student: Array,
    cnn_features: Array,
    *,
    grid: Sequence[int],
    dim: int,
    seed: int = 0,
    loss_type: str = "mse",
) -> Array:
    """Optional feature KD of SDD: a student adapter matches ``phi_cnn(f_cnn)``.

    Args:
      adapted_student: ``(B, T', H', W', D)`` adapter output on the student feature.
      cnn_features: ``(B, T, H, W, C_cnn)`` CNN teacher features (gradient-stopped).
      grid, dim, seed, loss_type: as in :func:`sdd_loss`.

    Returns:
      ``(B,)`` float32 per-example losses.
    """
    target = jax.lax.stop_gradient(phi_cnn(cnn_features, grid=grid, dim=dim, seed=seed))
    return regression_loss(adapted_student, target, loss_type=loss_type)
