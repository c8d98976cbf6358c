"""Structure Discrepancy-aware Distillation (SDD) targets and loss.

From the adaptive dual-teacher paper ("Revisiting Cross-Architecture
Distillation: Adaptive Dual-Teacher Transfer for Lightweight Video Models"): the
student learns what the ViT teacher's features hold *beyond* the CNN teacher's,
at aligned stages, "with optional projections phi to match shapes". Both
teachers' maps are first brought to a common grid (docs/design.md, "SDD"):

* ``P``: adaptive average pooling of a ``(B, T, H, W, C)`` map to a common grid
  ``(T', H', W')`` (PyTorch ``AdaptiveAvgPool3d`` bins);
* ``N``: per-position normalization (zero mean, unit variance over channels),

so ``x = N(P(f_cnn))`` and ``y = N(P(f_vit))`` are ``(B, T', H', W', C_cnn)`` and
``(..., C_vit)``. Two targets are implemented (``config.loss.sdd.target``):

* ``"residual"`` (the default; docs/design.md eq. S1): a linear map ``(A, b)`` fitted
  once, before the student trains, by ridge regression of ``y`` on ``x`` over the
  training clips' positions (:class:`RidgeAccumulator`, :func:`fit_residual_map`),
  and the residual ``r = y - (x A + b)``, projected on the top ``D`` principal
  directions ``U`` of ``r`` itself when ``C_vit > D``: ``r = (y - x A - b) U``. ``r``
  is what the CNN teacher's features cannot explain linearly; when the ViT feature
  is a linear function of the CNN's, ``r = 0``. PCA of ``r`` (not of ``y``) keeps the
  ``D`` directions along which the ViT adds the most; the leading directions of
  ``y`` are often the ones the CNN explains.
* ``"random_projections"`` (the earlier form, kept so old runs reproduce; eq. S1'):
  ``r = phi_vit(f_vit) - phi_cnn(f_cnn)`` with ``phi(f) = N(P(f)) Q`` and two
  independent fixed orthogonal random projections ``Q_vit``, ``Q_cnn`` (``C -> D``).
  The difference of two unrelated bases is not a residual: when the ViT adds nothing
  it still has about twice the variance of one projected feature.

The loss compares the Structure Discrepancy Branch's prediction with ``r``, gradient
stopped (eq. S2). Projections and the fitted map are constants, never parameters: a
trainable target could collapse to zero.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vkd_jax.losses import rkd

# Pooling lives with the models' layers (the training-only branch pools too, and models do
# not import losses); re-exported as part of this module's API.
from vkd_jax.models.layers import adaptive_avg_pool3d, adaptive_pool_matrix  # noqa: F401

Array = jax.Array

LOSS_TYPES = ("mse", "smooth_l1", "cosine")
TARGETS = ("residual", "random_projections")
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
    x = pooled_features(features, grid)
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
    """Random-projection target ``r = stop_gradient(phi_vit(f_vit) - phi_cnn(f_cnn))`` (eq. S1').

    The earlier form of SDD (``loss.sdd.target = "random_projections"``); not a
    residual (module docstring): :func:`residual_target` is.

    Returns:
      ``(B, T', H', W', D)`` float32, with no gradient to either teacher.
    """
    r = phi_vit(vit_features, grid=grid, dim=dim, seed=seed) - phi_cnn(
        cnn_features, grid=grid, dim=dim, seed=seed
    )
    return jax.lax.stop_gradient(r)


# ------------------------------------------------------------------- residual


def pooled_features(features: Array, grid: Sequence[int]) -> Array:
    """``N(P(f))``: a ``(B, T, H, W, C)`` map pooled to ``grid`` and normalized per position."""
    return normalize_positions(adaptive_avg_pool3d(features, grid))


class RidgeAccumulator:
    """Streams ``[x, 1]^T [x, 1]``, ``[x, 1]^T y`` and ``y^T y`` in float64 on the host.

    Rows are positions: ``x`` ``(N, C_x)``, ``y`` ``(N, C_y)``. Feed it batch by batch
    (:meth:`add`), then :func:`fit_residual_map`. Memory is ``O((C_x + C_y)^2)``,
    independent of the number of clips.
    """

    def __init__(self) -> None:
        self.xtx = None
        self.xty = None
        self.yty = None
        self.ysum = None
        self.n = 0

    def add(self, x, y) -> None:
        x = np.asarray(x, np.float64).reshape(-1, np.shape(x)[-1])
        y = np.asarray(y, np.float64).reshape(-1, np.shape(y)[-1])
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x has {x.shape[0]} positions, y {y.shape[0]}")
        xa = np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)
        if self.xtx is None:
            self.xtx = np.zeros((xa.shape[1],) * 2)
            self.xty = np.zeros((xa.shape[1], y.shape[1]))
            self.yty = np.zeros((y.shape[1],) * 2)
            self.ysum = np.zeros(y.shape[1])
        elif self.xtx.shape[0] != xa.shape[1] or self.yty.shape[0] != y.shape[1]:
            raise ValueError("feature widths changed between batches")
        self.xtx += xa.T @ xa
        self.xty += xa.T @ y
        self.yty += y.T @ y
        self.ysum += y.sum(axis=0)
        self.n += x.shape[0]


def fit_residual_map(acc: RidgeAccumulator, *, ridge: float, dim: int) -> dict[str, np.ndarray]:
    """Closed-form ridge fit of ``y ≈ x A + b`` and the PCA basis of its residual (eq. S1).

    Minimises ``(1/N) sum_i ||y_i - x_i A - b||^2 + ridge ||A||_F^2`` (the bias is not
    penalised, so the residual has zero mean over the fitted positions):
    ``[A; b] = (X~^T X~ + N ridge diag(1, .., 1, 0))^{-1} X~^T Y`` with ``X~ = [X, 1]``.
    The residual covariance ``S_r = (Y - X~W)^T (Y - X~W) / N`` follows from the same
    sums; ``U`` holds its top ``min(dim, C_y)`` eigenvectors (identity when
    ``C_y <= dim``, so no reduction happens).

    Args:
      acc: the accumulated sums (at least one position).
      ridge: ``lambda >= 0``, relative to the mean squared error (so it does not
        depend on the number of positions).
      dim: the branch's width ``D``.

    Returns:
      float32 arrays ``weight`` ``(C_x, C_y)``, ``bias`` ``(C_y,)``, ``basis``
      ``(C_y, D')``, and float64 scalars ``r2`` (the share of ``y``'s variance the
      map explains on the fitted positions), ``residual_variance`` (mean over the
      ``D'`` kept directions of ``r``'s variance), ``kept_variance`` (the share of the
      residual's variance the basis keeps), ``ridge`` and ``num_positions``.
    """
    if acc.n < 1 or acc.xtx is None:
        raise ValueError("no features were accumulated for the SDD residual fit")
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    n = float(acc.n)
    penalty = np.full(acc.xtx.shape[0], n * float(ridge))
    penalty[-1] = 0.0  # The bias.
    w = np.linalg.lstsq(acc.xtx + np.diag(penalty), acc.xty, rcond=None)[0]
    rtr = acc.yty - w.T @ acc.xty - acc.xty.T @ w + w.T @ acc.xtx @ w
    cov_r = (rtr + rtr.T) / (2.0 * n)
    ymean = acc.ysum / n
    cov_y = acc.yty / n - np.outer(ymean, ymean)
    c_y = cov_r.shape[0]
    eigval, eigvec = np.linalg.eigh(cov_r)
    order = np.argsort(eigval)[::-1]
    eigval, eigvec = np.maximum(eigval[order], 0.0), eigvec[:, order]
    if c_y <= dim:
        basis, kept = np.eye(c_y), 1.0
        residual_variance = float(np.trace(cov_r)) / c_y
    else:
        basis = eigvec[:, :dim]
        # A deterministic sign: the largest entry of each direction is positive.
        signs = np.sign(basis[np.argmax(np.abs(basis), axis=0), np.arange(dim)])
        basis = basis * np.where(signs == 0, 1.0, signs)[None, :]
        total = float(eigval.sum())
        kept = float(eigval[:dim].sum() / total) if total > 0 else 1.0
        residual_variance = float(eigval[:dim].mean())
    total_y = float(np.trace(cov_y))
    return {
        "weight": w[:-1].astype(np.float32),
        "bias": w[-1].astype(np.float32),
        "basis": basis.astype(np.float32),
        "r2": 1.0 - float(np.trace(cov_r)) / total_y if total_y > 0 else 0.0,
        "residual_variance": residual_variance,
        "kept_variance": kept,
        "ridge": float(ridge),
        "num_positions": float(acc.n),
    }


def residual_width(vit_channels: int, dim: int) -> int:
    """Width ``D'`` of the residual target: ``min(D, C_vit)``."""
    return min(int(dim), int(vit_channels))


def residual_target(
    vit_features: Array,
    cnn_features: Array,
    residual_map: Mapping[str, Any],
    *,
    grid: Sequence[int],
) -> Array:
    """``r = (N(P(f_vit)) - N(P(f_cnn)) A - b) U``, gradient stopped (eq. S1).

    Args:
      vit_features: ``(B, T, H, W, C_vit)`` ViT-teacher map.
      cnn_features: ``(B, T2, H2, W2, C_cnn)`` CNN-teacher map.
      residual_map: :func:`fit_residual_map`'s ``weight``, ``bias`` and ``basis``.
      grid: ``(T', H', W')``.

    Returns:
      ``(B, T', H', W', D')`` float32.
    """
    y = pooled_features(vit_features, grid)
    x = pooled_features(cnn_features, grid)
    weight = jnp.asarray(residual_map["weight"], jnp.float32)
    bias = jnp.asarray(residual_map["bias"], jnp.float32)
    basis = jnp.asarray(residual_map["basis"], jnp.float32)
    if weight.shape != (x.shape[-1], y.shape[-1]):
        raise ValueError(
            f"the SDD residual map is {weight.shape[0]} -> {weight.shape[1]} channels but the "
            f"teachers' features have {x.shape[-1]} (CNN) and {y.shape[-1]} (ViT)"
        )
    r = (y - x @ weight - bias) @ basis
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
    residual_map: Mapping[str, Any] | None = None,
) -> Array:
    """SDD loss: the branch's prediction against the ViT-CNN residual (eqs. S1-S2).

    Args:
      predicted_residual: ``(B, T', H', W', D)`` output of
        ``vkd_jax.models.sdb.StructureDiscrepancyBranch``.
      vit_features: ``(B, T, H, W, C_vit)`` ViT teacher features ``f_vit``.
      cnn_features: ``(B, T2, H2, W2, C_cnn)`` CNN teacher features ``f_cnn``.
      grid: common grid ``(T', H', W')``.
      dim: common width ``D`` (of the random projections; the residual map's basis
        sets the residual's width).
      seed: seed of the fixed projections.
      loss_type: ``mse`` | ``smooth_l1`` | ``cosine`` (see :func:`regression_loss`).
      residual_map: the fitted map of :func:`fit_residual_map`: the residual target
        (eq. S1). ``None``: the random-projection target (eq. S1').

    Returns:
      ``(B,)`` float32 per-example losses; no gradient reaches the teacher features.
    """
    if residual_map is not None:
        target = residual_target(vit_features, cnn_features, residual_map, grid=grid)
    else:
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
