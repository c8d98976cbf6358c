"""Centered kernel alignment (CKA): the maths. Kernels, HSIC, full-batch and streaming
minibatch CKA, and the block-structure score of a self map.

Running maps over models (features of batches of video), drawing and storing them is
:mod:`vkd_jax.cka_maps`.

CKA (Kornblith, Norouzi, Lee, Hinton, "Similarity of Neural Network Representations
Revisited", ICML 2019) compares two representations ``X`` (n, d1) and ``Y`` (n, d2) of the same
n examples through their Gram matrices ``K = k(X, X)`` and ``L = l(Y, Y)``:

    CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) * HSIC(L, L))                  (Kornblith Eq. 4)

with the biased HSIC estimator of Gretton et al. 2005,

    HSIC_0(K, L) = tr(K H L H) / (n - 1)^2,   H = I - 11^T / n,            (Kornblith Eq. 3)

or the unbiased estimator of Song et al. 2012 (Nguyen, Raghu, Kornblith 2021, Eq. 3),

    HSIC_1(K, L) = 1 / (n (n - 3)) * [ tr(K~ L~) + (1^T K~ 1)(1^T L~ 1) / ((n - 1)(n - 2))
                                        - 2 / (n - 2) * 1^T K~ L~ 1 ],

where ``K~`` is ``K`` with its diagonal set to zero. ``HSIC_1`` equals the inner product of the
U-centered Gram matrices (Szekely & Rizzo 2014) divided by ``n (n - 3)``; U-centering is what
Kornblith's reference ``center_gram(gram, unbiased=True)`` computes, and it is what we use here
because it turns all-pairs HSIC into one matrix product.

Kernels follow Kornblith's reference code: linear ``K = X X^T``; RBF
``K_ij = exp(-|x_i - x_j|^2 / (2 * threshold^2 * median_kl |x_k - x_l|^2))`` (the median of all
n^2 squared distances, diagonal included, exactly as ``gram_rbf``).

Minibatch CKA (Nguyen, Raghu, Kornblith, "Do Wide and Deep Networks Learn the Same Things?",
ICLR 2021, Eq. 2-3) averages ``HSIC_1`` over k minibatches of size n,

    CKA_minibatch = (1/k sum_i HSIC_1(K_i, L_i))
                    / sqrt((1/k sum_i HSIC_1(K_i, K_i)) (1/k sum_i HSIC_1(L_i, L_i))),

an estimate whose memory is constant in the dataset size. ``minibatch_cka_update`` computes it for
every pair of layers of two models at once: the (La, n, n) and (Lb, n, n) Gram stacks are
U-centered and all La x Lb HSIC values come from one (La, n^2) x (n^2, Lb) product.

Features of any shape are flattened per example: ``(n, T, H, W, C) -> (n, T*H*W*C)``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

KERNELS = ("linear", "rbf")

# Gram matrices and their contractions are sums of many products whose large terms cancel in the
# centering; TPUs would run default-precision matmuls in bfloat16, so ask for full precision.
_HIGHEST = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------------------------- Gram matrices


def flatten_features(x: jax.Array) -> jax.Array:
    """Flattens per-example features to a matrix in at least float32.

    Args:
      x: (n, ...) features of n examples, any trailing shape and float dtype.

    Returns:
      (n, d) array, d the product of the trailing dimensions; bfloat16/float16 become float32 so
      that the Gram sums do not lose the small differences that centering leaves.
    """
    x = jnp.asarray(x)
    x = x.reshape(x.shape[0], -1)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def gram_linear(x: jax.Array) -> jax.Array:
    """Linear-kernel Gram matrix ``X X^T`` (Kornblith et al. 2019, ``gram_linear``).

    Args:
      x: (n, ...) features.

    Returns:
      (n, n) Gram matrix.
    """
    x = flatten_features(x)
    return jnp.matmul(x, x.T, precision=_HIGHEST)


def gram_rbf(x: jax.Array, *, threshold: float = 1.0, mask: jax.Array | None = None) -> jax.Array:
    """RBF Gram matrix with a median-distance bandwidth (Kornblith et al. 2019, ``gram_rbf``).

    ``K_ij = exp(-D_ij / (2 * threshold^2 * median(D)))`` with ``D_ij = |x_i - x_j|^2`` and the
    median taken over all n^2 entries of ``D`` (diagonal zeros included), as in the reference.

    Args:
      x: (n, ...) features.
      threshold: bandwidth as a fraction of the median distance.
      mask: optional (n,) validity mask; the median is taken over valid pairs only, and the rows
        and columns of invalid examples are meaningless (the centering zeroes them).

    Returns:
      (n, n) Gram matrix.
    """
    x = flatten_features(x)
    dot = jnp.matmul(x, x.T, precision=_HIGHEST)
    sq_norms = jnp.diagonal(dot)
    # Clip: float cancellation can leave tiny negative distances, whose exp would exceed 1.
    sq_distances = jnp.maximum(sq_norms[:, None] + sq_norms[None, :] - 2.0 * dot, 0.0)
    if mask is None:
        sq_median = jnp.median(sq_distances)
    else:
        valid = _pair_mask(mask, sq_distances.dtype) > 0
        sq_median = jnp.nanmedian(jnp.where(valid, sq_distances, jnp.nan))
    return jnp.exp(-sq_distances / (2.0 * threshold**2 * sq_median))


@functools.partial(jax.jit, static_argnames=("kernel",))
def gram(
    x: jax.Array, *, kernel: str = "linear", threshold: float = 1.0, mask: jax.Array | None = None
) -> jax.Array:
    """Gram matrix of ``x`` under ``kernel`` ("linear" or "rbf"); see gram_linear / gram_rbf."""
    if kernel == "linear":
        return gram_linear(x)
    if kernel == "rbf":
        return gram_rbf(x, threshold=threshold, mask=mask)
    raise ValueError(f"Unknown CKA kernel {kernel!r}; expected one of {KERNELS}.")


def _pair_mask(mask: jax.Array, dtype: Any) -> jax.Array:
    m = jnp.asarray(mask).astype(dtype)
    return m[:, None] * m[None, :]


# ------------------------------------------------------------------------------- centering


def center_gram(
    gram_matrix: jax.Array, *, unbiased: bool = False, mask: jax.Array | None = None
) -> jax.Array:
    """Centers a symmetric Gram matrix (Kornblith et al. 2019, ``center_gram``).

    Biased: ``H K H`` (double centering). Unbiased: U-centering (Szekely & Rizzo 2014, Sec. 1.1),
    ``K~_ij = K_ij - m_i - m_j`` off the diagonal and 0 on it, with
    ``m_i = sum_{j != i} K_ij / (n - 2) - sum_{k != l} K_kl / (2 (n - 1)(n - 2))``; then
    ``<K~, L~> / (n (n - 3))`` is Song et al.'s unbiased ``HSIC_1``.

    With a mask, only valid examples count (n is their number) and the rows and columns of
    invalid ones are zero, so padded batch entries drop out exactly.

    Args:
      gram_matrix: (..., n, n) symmetric Gram matrices.
      unbiased: U-centering instead of double centering.
      mask: optional (n,) validity mask (1 = real example, 0 = padding).

    Returns:
      (..., n, n) centered Gram matrices.
    """
    k = gram_matrix
    n = k.shape[-1]
    if mask is None:
        w = jnp.ones((n,), k.dtype)
    else:
        w = jnp.asarray(mask).astype(k.dtype)
    m = jnp.sum(w)
    pair = w[:, None] * w[None, :]
    k = k * pair
    if unbiased:
        k = k * (1.0 - jnp.eye(n, dtype=k.dtype))
        means = jnp.sum(k, axis=-2) / (m - 2.0)
        means = means - jnp.sum(means * w, axis=-1, keepdims=True) / (2.0 * (m - 1.0))
        k = k - means[..., :, None] - means[..., None, :]
        return k * (1.0 - jnp.eye(n, dtype=k.dtype)) * pair
    means = jnp.sum(k, axis=-2) / m
    means = means - jnp.sum(means * w, axis=-1, keepdims=True) / (2.0 * m)
    k = k - means[..., :, None] - means[..., None, :]
    return k * pair


def _hsic_scale(m: jax.Array, unbiased: bool) -> jax.Array:
    """The factor turning <centered K, centered L> into HSIC_1 (1/(n(n-3))) or HSIC_0."""
    return 1.0 / (m * (m - 3.0)) if unbiased else 1.0 / (m - 1.0) ** 2


def _check_n(n: int, unbiased: bool) -> None:
    if unbiased and n < 4:
        raise ValueError(
            f"The unbiased HSIC estimator (Song et al. 2012) needs n >= 4 examples; got n={n}."
        )
    if n < 2:
        raise ValueError(f"CKA needs at least 2 examples; got n={n}.")


@functools.partial(jax.jit, static_argnames=("unbiased",))
def hsic(
    gram_x: jax.Array, gram_y: jax.Array, *, unbiased: bool = False, mask: jax.Array | None = None
) -> jax.Array:
    """HSIC between two Gram matrices: ``HSIC_0`` (Gretton 2005) or ``HSIC_1`` (Song 2012).

    Args:
      gram_x: (n, n) Gram matrix.
      gram_y: (n, n) Gram matrix.
      unbiased: the unbiased U-statistic ``HSIC_1`` (Nguyen et al. 2021, Eq. 3).
      mask: optional (n,) validity mask.

    Returns:
      Scalar HSIC estimate.
    """
    n = gram_x.shape[-1]
    _check_n(n, unbiased)
    m = jnp.asarray(n, gram_x.dtype) if mask is None else jnp.sum(jnp.asarray(mask, gram_x.dtype))
    kc = center_gram(gram_x, unbiased=unbiased, mask=mask)
    lc = center_gram(gram_y, unbiased=unbiased, mask=mask)
    return jnp.vdot(kc, lc) * _hsic_scale(m, unbiased)


@functools.partial(jax.jit, static_argnames=("unbiased",))
def cka_from_grams(gram_x: jax.Array, gram_y: jax.Array, *, unbiased: bool = False) -> jax.Array:
    """CKA of two (n, n) Gram matrices (Kornblith et al. 2019, Eq. 4; reference ``cka``)."""
    _check_n(gram_x.shape[-1], unbiased)
    kc = center_gram(gram_x, unbiased=unbiased)
    lc = center_gram(gram_y, unbiased=unbiased)
    return jnp.vdot(kc, lc) / (jnp.linalg.norm(kc) * jnp.linalg.norm(lc))


# ---------------------------------------------------------------------------- full-batch CKA


def _linear_cka_features(x: jax.Array, y: jax.Array, unbiased: bool) -> jax.Array:
    """Linear CKA from (n, d) features without forming n x n Grams.

    Biased: ``||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)`` on column-centered features (Kornblith
    Eq. 5 with centered features). Unbiased: ``HSIC_1`` is invariant to centering the features
    (the shift only adds ``a 1^T + 1 a^T`` to K, which U-centering removes), and for centered X
    the terms of Song's formula reduce to feature-space quantities (Kornblith's reference
    ``_debiased_dot_product_similarity_helper``):
        n (n - 3) HSIC_1 = ||X^T Y||_F^2 - n / (n - 2) * <s_x, s_y>
                           + ||X||_F^2 ||Y||_F^2 / ((n - 1)(n - 2)),
    with ``s_x = diag(X X^T)`` the squared row norms. Exact, not an approximation.
    """
    n = x.shape[0]
    x = x - jnp.mean(x, axis=0, keepdims=True)
    y = y - jnp.mean(y, axis=0, keepdims=True)
    xty = jnp.sum(jnp.square(jnp.matmul(x.T, y, precision=_HIGHEST)))
    xtx = jnp.sum(jnp.square(jnp.matmul(x.T, x, precision=_HIGHEST)))
    yty = jnp.sum(jnp.square(jnp.matmul(y.T, y, precision=_HIGHEST)))
    if unbiased:
        sx = jnp.sum(jnp.square(x), axis=1)
        sy = jnp.sum(jnp.square(y), axis=1)
        nx, ny = jnp.sum(sx), jnp.sum(sy)

        def debias(dot, sa, sb, na, nb):
            return dot - n / (n - 2.0) * jnp.vdot(sa, sb) + na * nb / ((n - 1.0) * (n - 2.0))

        xty = debias(xty, sx, sy, nx, ny)
        xtx = debias(xtx, sx, sx, nx, nx)
        yty = debias(yty, sy, sy, ny, ny)
    return xty / jnp.sqrt(xtx * yty)


@functools.partial(jax.jit, static_argnames=("unbiased", "method"))
def linear_cka(
    x: jax.Array, y: jax.Array, *, unbiased: bool = False, method: str = "auto"
) -> jax.Array:
    """Linear CKA (Kornblith et al. 2019, Eq. 4 and 5), biased or unbiased (Song et al. 2012).

    Args:
      x: (n, ...) features of n examples (flattened per example to (n, d1)).
      y: (n, ...) features of the same n examples (flattened to (n, d2)).
      unbiased: use the unbiased ``HSIC_1`` (U-centering); needs n >= 4.
      method: "gram" (n x n Gram matrices), "features" (d1 x d2 cross-covariances, exact for both
        estimators) or "auto": features when n > max(d1, d2), where it is cheaper.

    Returns:
      Scalar CKA similarity (in [0, 1] for the biased estimator).

    Raises:
      ValueError: n < 4 with unbiased=True, or an unknown method.
    """
    x, y = flatten_features(x), flatten_features(y)
    n = x.shape[0]
    if y.shape[0] != n:
        raise ValueError(f"x and y must hold the same examples; got {x.shape} and {y.shape}.")
    _check_n(n, unbiased)
    if method == "auto":
        method = "features" if n > max(x.shape[1], y.shape[1]) else "gram"
    if method == "features":
        return _linear_cka_features(x, y, unbiased)
    if method == "gram":
        # Centering the features first is exact (see _linear_cka_features) and better conditioned.
        x, y = _center_features(x, None), _center_features(y, None)
        return cka_from_grams(gram_linear(x), gram_linear(y), unbiased=unbiased)
    raise ValueError(f"Unknown method {method!r}; expected auto, gram or features.")


@functools.partial(jax.jit, static_argnames=("unbiased",))
def rbf_cka(
    x: jax.Array, y: jax.Array, *, threshold: float = 1.0, unbiased: bool = False
) -> jax.Array:
    """RBF-kernel CKA (Kornblith et al. 2019, Sec. 3 "Kernel selection").

    Args:
      x: (n, ...) features.
      y: (n, ...) features of the same examples.
      threshold: RBF bandwidth as a fraction of the median distance (see gram_rbf).
      unbiased: use the unbiased ``HSIC_1``; needs n >= 4.

    Returns:
      Scalar CKA similarity.
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must hold the same examples; got {x.shape} and {y.shape}.")
    _check_n(x.shape[0], unbiased)
    return cka_from_grams(
        gram_rbf(x, threshold=threshold), gram_rbf(y, threshold=threshold), unbiased=unbiased
    )


# -------------------------------------------------------------------- streaming minibatch CKA


class MinibatchCKAState(NamedTuple):
    """Running sums of the minibatch HSIC estimates (a pytree; Nguyen et al. 2021, Eq. 2).

    Attributes:
      hsic_xy: (La, Lb) sum over minibatches of HSIC(K_i, L_j), layer i of model a, j of model b.
      hsic_xx: (La,) sum of HSIC(K_i, K_i).
      hsic_yy: (Lb,) sum of HSIC(L_j, L_j).
      count: () number of minibatches that contributed.
      examples: () number of (valid) examples seen.
    """

    hsic_xy: jax.Array
    hsic_xx: jax.Array
    hsic_yy: jax.Array
    count: jax.Array
    examples: jax.Array


def minibatch_cka_init(
    la: int, lb: int | None = None, dtype: Any = jnp.float32
) -> MinibatchCKAState:
    """Zero sums for an (la, lb) layer map (lb defaults to la, for a model against itself)."""
    lb = la if lb is None else lb
    return MinibatchCKAState(
        hsic_xy=jnp.zeros((la, lb), dtype),
        hsic_xx=jnp.zeros((la,), dtype),
        hsic_yy=jnp.zeros((lb,), dtype),
        count=jnp.zeros((), dtype),
        examples=jnp.zeros((), dtype),
    )


def _stacked_centered_grams(
    feats: Sequence[jax.Array], kernel: str, threshold: float, unbiased: bool, mask, dtype
) -> jax.Array:
    if kernel == "linear":
        # Both estimators are invariant to centering the features (it adds a 1^T + 1 a^T to K,
        # which H K H and U-centering remove), and centered features keep the Gram entries small:
        # post-ReLU activations with large means would otherwise lose float32 digits when the
        # centering cancels them.
        feats = [_center_features(flatten_features(f), mask) for f in feats]
    # Widths differ per layer, so Grams are built one layer at a time; all are (n, n) and stack.
    grams = jnp.stack(
        [gram(f, kernel=kernel, threshold=threshold, mask=mask).astype(dtype) for f in feats]
    )
    return center_gram(grams, unbiased=unbiased, mask=mask)


def _center_features(x: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Subtracts the (valid examples') column mean from (n, d) features."""
    if mask is None:
        return x - jnp.mean(x, axis=0, keepdims=True)
    w = jnp.asarray(mask).astype(x.dtype)[:, None]
    return x - jnp.sum(w * x, axis=0, keepdims=True) / jnp.sum(w)


@functools.partial(jax.jit, static_argnames=("kernel", "unbiased"))
def minibatch_cka_update(
    state: MinibatchCKAState,
    feats_a: Sequence[jax.Array],
    feats_b: Sequence[jax.Array] | None = None,
    *,
    kernel: str = "linear",
    threshold: float = 1.0,
    unbiased: bool = True,
    mask: jax.Array | None = None,
) -> MinibatchCKAState:
    """Adds one minibatch's all-pairs HSIC to the running sums (Nguyen et al. 2021, Eq. 2).

    The La and Lb Gram matrices are U-centered (or double-centered) and stacked, and all pairs
    come from one contraction ``(La, n^2) @ (n^2, Lb)``; the self terms are the row-wise squared
    norms. The arrays may be sharded over a mesh (e.g. the batch axis over "data"): everything is
    jnp under jit, and XLA reduces the sharded contraction with one small all-reduce.

    Args:
      state: running sums from minibatch_cka_init or a previous update.
      feats_a: La arrays (n, ...) of model a's layers on this minibatch.
      feats_b: Lb arrays (n, ...) of model b's layers, or None to compare model a with itself
        (its Grams are then built once).
      kernel: "linear" or "rbf" (RBF bandwidth from this minibatch's median distance).
      threshold: RBF bandwidth as a fraction of the median distance.
      unbiased: ``HSIC_1`` (the minibatch estimator of Nguyen et al.) or ``HSIC_0``.
      mask: optional (n,) validity mask; padded entries drop out exactly (n counts valid ones).
        A minibatch with fewer than 4 (unbiased) or 2 (biased) valid examples adds nothing.

    Returns:
      Updated state.

    Raises:
      ValueError: unbiased with n < 4 (unmasked batch size), or a layer count that does not match
        the state.
    """
    la, lb = state.hsic_xy.shape
    if len(feats_a) != la or (feats_b is not None and len(feats_b) != lb):
        raise ValueError(
            f"State is for a {la} x {lb} map; got {len(feats_a)} and "
            f"{la if feats_b is None else len(feats_b)} layers."
        )
    n = feats_a[0].shape[0]
    _check_n(n, unbiased)
    dtype = state.hsic_xy.dtype
    ka = _stacked_centered_grams(feats_a, kernel, threshold, unbiased, mask, dtype)
    flat_a = ka.reshape(la, n * n)
    m = jnp.asarray(n, dtype) if mask is None else jnp.sum(jnp.asarray(mask).astype(dtype))
    scale = _hsic_scale(m, unbiased)
    # Too few valid examples for the estimator: contribute nothing rather than inf/nan.
    # Too few valid examples for the estimator (a mostly padded batch): its centering divides by
    # zero, so select its contribution away (not multiply: nan * 0 is nan).
    ok = m >= (4.0 if unbiased else 2.0)
    keep = lambda v: jnp.where(ok, v, jnp.zeros_like(v))
    hsic_xx = jnp.einsum("lk,lk->l", flat_a, flat_a, precision=_HIGHEST) * scale
    if feats_b is None:
        flat_b, hsic_yy = flat_a, hsic_xx
    else:
        kb = _stacked_centered_grams(feats_b, kernel, threshold, unbiased, mask, dtype)
        flat_b = kb.reshape(lb, n * n)
        hsic_yy = jnp.einsum("lk,lk->l", flat_b, flat_b, precision=_HIGHEST) * scale
    hsic_xy = jnp.matmul(flat_a, flat_b.T, precision=_HIGHEST) * scale
    return MinibatchCKAState(
        hsic_xy=state.hsic_xy + keep(hsic_xy),
        hsic_xx=state.hsic_xx + keep(hsic_xx),
        hsic_yy=state.hsic_yy + keep(hsic_yy),
        count=state.count + ok.astype(dtype),
        examples=state.examples + keep(m),
    )


@jax.jit
def minibatch_cka_result(state: MinibatchCKAState) -> jax.Array:
    """The (La, Lb) minibatch CKA map (Nguyen et al. 2021, Eq. 3); the 1/k factors cancel."""
    return state.hsic_xy / jnp.sqrt(state.hsic_xx[:, None] * state.hsic_yy[None, :])


# ----------------------------------------------------------------- block structure score


def _check_self_map(cka_map: Any) -> np.ndarray:
    m = np.asarray(cka_map, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"a self-CKA map is square (L, L), got shape {m.shape}")
    return m


def block_structure_score(cka_map: Any, *, threshold: float = 0.8, min_gap: int = 2) -> float:
    """Share of layer pairs at least ``min_gap`` layers apart whose CKA is ``>= threshold``.

    Nguyen, Raghu & Kornblith ("Do Wide and Deep Networks Learn the Same Things?",
    ICLR 2021, Sec. 3) name *block structure* the large sets of contiguous layers
    with near-identical representations that show up as bright squares on the
    diagonal of a self-CKA map, and the ensemble-distillation study (Kumar et al.,
    "A Large-Scale Analysis on Self-Supervised Video Representation Learning", 2023,
    Fig. 1) reads it by eye. This is the number behind that reading (docs/design.md
    eq. C7): in a map without blocks, CKA falls off away from the diagonal and the share is 0; in a
    map that is one block it is 1. Adjacent layers (gap < ``min_gap``) are left
    out, since neighbouring layers are similar in every network.

    Args:
      cka_map: ``(L, L)`` self-CKA map of one model's layers in network order.
      threshold: CKA at or above which two layers count as the same representation.
      min_gap: least distance ``j - i`` in layers of the pairs counted (>= 1).

    Returns:
      A fraction in [0, 1]; NaN when no pair is ``min_gap`` apart (``L <= min_gap``).
    """
    m = _check_self_map(cka_map)
    if min_gap < 1:
        raise ValueError(f"min_gap must be >= 1, got {min_gap}")
    i, j = np.triu_indices(m.shape[0], k=min_gap)
    if i.size == 0:
        return float("nan")
    # Both triangles: a streaming estimate is symmetric only up to rounding.
    pairs = np.minimum(m[i, j], m[j, i])
    return float(np.mean(pairs >= threshold))


def largest_block(cka_map: Any, *, threshold: float = 0.8) -> int:
    """Layers in the largest contiguous block whose every pair has CKA ``>= threshold``.

    The other reading of Nguyen et al. 2021's block structure: the side of the largest
    bright square on the diagonal (1 when no two neighbouring layers are alike).

    Args:
      cka_map: ``(L, L)`` self-CKA map in network order.
      threshold: as in :func:`block_structure_score`.

    Returns:
      The block's size in layers (0 for an empty map).
    """
    m = _check_self_map(cka_map)
    alike = np.minimum(m, m.T) >= threshold
    best = 0
    for start in range(m.shape[0]):
        end = start + 1
        while end < m.shape[0] and alike[start : end + 1, start : end + 1].all():
            end += 1
        best = max(best, end - start)
    return best
