"""Relational knowledge distillation (Park, Kim, Lu & Cho, "Relational Knowledge
Distillation", CVPR 2019).

Both losses compare the *structure* of a batch of embeddings rather than the
embeddings themselves, so student and teacher may have different widths:

* distance-wise (Sec. 3.2.1, eqs. 3-5): ``psi_D(t_i, t_j) = ||t_i - t_j|| / mu`` with
  ``mu`` the mean distance over the ``N (N - 1)`` off-diagonal pairs;
  ``L = mean_{i,j} smooth_l1(psi_D(s_i, s_j) - psi_D(t_i, t_j))`` over all ``N^2`` entries.
* angle-wise (Sec. 3.2.2, eqs. 7-8): ``psi_A(t_i, t_j, t_k) = cos angle(t_j - t_i, t_k - t_i)``;
  ``L = mean_{i,j,k} smooth_l1(psi_A(s) - psi_A(t))`` over all ``N^3`` triplets.

Following the authors' reference code, entries with ``i == j`` count (with value
0 on both sides), the smooth-L1 (Huber, eq. 6) has ``beta = 1``, and a zero-length difference
has direction 0 (``F.normalize`` convention), so its cosines are 0.

Everything is derived from the centred Gram matrix ``G = X X^T``: no ``(N, N, C)``
difference tensor is materialized. Distances below a relative tolerance (duplicated
embeddings) are treated as exactly 0 through ``where``-guarded square roots, which
keeps gradients finite. Both functions return batch-level scalars; the teacher
side is gradient-stopped.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

# Squared distances below _REL_TOL * max squared norm (of the centred batch) count as
# 0: float32 Gram arithmetic cannot resolve them, and their direction is noise.
_REL_TOL = 1e-6
_TINY = 1e-30
# Upper bound on the (chunk, N, N) triplet block of the angle loss, in elements.
_MAX_BLOCK = 1 << 22


def smooth_l1(x: Array, beta: float = 1.0) -> Array:
    """Elementwise smooth-L1 (Huber) of a difference: ``0.5 x^2 / beta`` if ``|x| < beta``."""
    ax = jnp.abs(x)
    return jnp.where(ax < beta, 0.5 * x * x / beta, ax - 0.5 * beta)


def _flat_f32(x: Array) -> Array:
    x = jnp.asarray(x).astype(jnp.float32)
    return x.reshape(x.shape[0], -1)


def _gram_and_sq_dists(x: Array) -> tuple[Array, Array, Array]:
    """Centred Gram ``G``, squared distances ``D2`` (diagonal 0) and the tolerance."""
    # Centring is exact for distances/angles (translation invariance) and shrinks the
    # Gram entries, so ``G_ii + G_jj - 2 G_ij`` cancels less.
    x = x - jnp.mean(x, axis=0, keepdims=True)
    g = x @ x.T
    sq = jnp.diagonal(g)
    d2 = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * g, 0.0)
    d2 = d2 * (1.0 - jnp.eye(x.shape[0], dtype=d2.dtype))
    tol = _REL_TOL * jnp.max(sq) + _TINY
    return g, d2, tol


def _safe_sqrt(d2: Array, tol: Array) -> Array:
    """``sqrt(d2)``, exactly 0 (with zero gradient) where ``d2 <= tol``."""
    ok = d2 > tol
    return jnp.where(ok, jnp.sqrt(jnp.where(ok, d2, 1.0)), 0.0)


def _safe_rsqrt(d2: Array, tol: Array) -> Array:
    """``1 / sqrt(d2)``, 0 where ``d2 <= tol`` (a zero-length difference has no direction)."""
    ok = d2 > tol
    return jnp.where(ok, jax.lax.rsqrt(jnp.where(ok, d2, 1.0)), 0.0)


def pairwise_distances(emb: Array) -> Array:
    """Euclidean distance matrix ``(N, N)`` of ``(N, ...)`` embeddings via the Gram matrix."""
    _, d2, tol = _gram_and_sq_dists(_flat_f32(emb))
    return _safe_sqrt(d2, tol)


def _normalized_distances(emb: Array) -> Array:
    """``psi_D``: distances divided by their mean over off-diagonal pairs (Park et al. eqs. 3-4)."""
    d = pairwise_distances(emb)
    n = d.shape[0]
    mu = jnp.sum(d) / max(n * (n - 1), 1)  # the diagonal is 0
    return d / jnp.where(mu > 0, mu, 1.0)


def rkd_distance_loss(student_emb: Array, teacher_emb: Array) -> Array:
    """RKD distance-wise loss, Park et al. CVPR 2019 Sec. 3.2.1, eqs. (3)-(6).

    Args:
      student_emb: ``(N, D_s)`` student embeddings (extra trailing dims are flattened).
      teacher_emb: ``(N, D_t)`` teacher embeddings (gradient-stopped).

    Returns:
      Batch-level float32 scalar: smooth-L1 (beta 1) averaged over all ``N^2`` pairs.
    """
    s = _normalized_distances(student_emb)
    t = jax.lax.stop_gradient(_normalized_distances(teacher_emb))
    return jnp.mean(smooth_l1(s - t))


def _angle_setup(emb: Array) -> tuple[Array, Array]:
    g, d2, tol = _gram_and_sq_dists(_flat_f32(emb))
    return g, _safe_rsqrt(d2, tol)


def _anchor_cosines(g: Array, inv: Array, anchors: Array) -> Array:
    """``cos angle(x_j - x_i, x_k - x_i)`` for anchors ``i`` and all ``(j, k)``: ``(A, N, N)``.

    ``(x_j - x_i) . (x_k - x_i) = G_jk - G_ij - G_ik + G_ii``, divided by the two
    lengths ``sqrt(D2_ij) sqrt(D2_ik)`` (0 for zero-length differences).
    """
    gi = g[anchors]  # (A, N)
    gii = jnp.diagonal(g)[anchors]  # (A,)
    num = g[None] - gi[:, :, None] - gi[:, None, :] + gii[:, None, None]
    inv_i = inv[anchors]
    return num * inv_i[:, :, None] * inv_i[:, None, :]


def rkd_angle_loss(
    student_emb: Array, teacher_emb: Array, *, anchor_chunk: int | None = None
) -> Array:
    """RKD angle-wise loss, Park et al. CVPR 2019 Sec. 3.2.2, eqs. (6)-(8), via Gram matrices.

    Computes ``N^3`` triplet cosines per side without the ``(N, N, C)`` differences:
    ``O(N^2 C + N^3)`` time, ``O(chunk * N^2)`` memory, anchors processed in chunks.

    Args:
      student_emb: ``(N, D_s)`` student embeddings (extra trailing dims are flattened).
      teacher_emb: ``(N, D_t)`` teacher embeddings (gradient-stopped).
      anchor_chunk: anchors per chunk; ``None`` picks the largest chunk whose
        ``(chunk, N, N)`` block has at most ``2^22`` elements.

    Returns:
      Batch-level float32 scalar: smooth-L1 (beta 1) averaged over all ``N^3`` triplets.
    """
    gs, inv_s = _angle_setup(student_emb)
    gt, inv_t = jax.lax.stop_gradient(_angle_setup(teacher_emb))
    n = gs.shape[0]
    if gt.shape[0] != n:
        raise ValueError(f"student and teacher batch sizes differ: {n} vs {gt.shape[0]}")
    if anchor_chunk is None:
        anchor_chunk = max(1, min(n, _MAX_BLOCK // max(n * n, 1)))

    def block_sums(anchors: Array) -> Array:
        """Per-anchor sums of the smooth-L1 over all ``(j, k)``: ``(A,)``."""
        diff = _anchor_cosines(gs, inv_s, anchors) - _anchor_cosines(gt, inv_t, anchors)
        return jnp.sum(smooth_l1(diff), axis=(1, 2))

    if anchor_chunk >= n:
        total = jnp.sum(block_sums(jnp.arange(n)))
    else:
        # Pad the anchors to whole chunks (every lax.map step has one shape) and mask
        # the padding out.
        num_chunks = -(-n // anchor_chunk)
        padded = jnp.arange(num_chunks * anchor_chunk)
        valid = (padded < n).astype(jnp.float32)
        anchors = jnp.where(padded < n, padded, 0).reshape(num_chunks, anchor_chunk)
        sums = jax.lax.map(block_sums, anchors).reshape(-1)
        total = jnp.sum(sums * valid)
    return total / float(n) ** 3
