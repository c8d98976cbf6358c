"""The Structure Discrepancy Branch (SDB) of Structure Discrepancy-aware Distillation.

From the adaptive dual-teacher paper ("Revisiting Cross-Architecture
Distillation: Adaptive Dual-Teacher Transfer for Lightweight Video Models"):
a lightweight branch on the student, "often using a small non-local
block + squeeze-and-excitation", predicts the ViT-CNN teacher residual during
training and is discarded at inference. Following docs/design.md (eq. S3):

  student map (B, T, H, W, C)
    -> 1x1x1 conv to D
    -> non-local block (Wang et al., CVPR 2018, embedded Gaussian, eqs. 1, 3, 6)
    -> squeeze-and-excitation (Hu et al., CVPR 2018, eqs. 2-4)
    -> adaptive average pooling to the common grid (T', H', W')
  = predicted residual (B, T', H', W', D)

The branch has no batch norm (only LayerNorm), so its variables are a single
``params`` collection, independent of the batch and of ``train``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vkd_jax.models import layers

Array = jax.Array


class NonLocalBlock(nn.Module):
    """Embedded-Gaussian non-local block (Wang et al., CVPR 2018, eqs. 1, 3 and 6).

    ``y_i = sum_j softmax_j(theta(x_i) . phi(x_j) / sqrt(d)) g(x_j)``,
    ``z = x + LN(W_z y)``. The ``1/sqrt(d)`` scaling (as in dot-product attention)
    keeps the softmax unsaturated at any width; the LayerNorm scale starts at zero
    (the paper zero-inits its BN scale) so the block starts as the identity.

    Attributes:
      inner_dim: width ``d`` of theta/phi/g; ``None`` means ``C // 2`` (the paper).
      dtype: computation dtype; the attention softmax runs in float32.
    """

    inner_dim: int | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """``(B, T, H, W, C) -> (B, T, H, W, C)``."""
        b, t, h, w, c = x.shape
        d = self.inner_dim or max(c // 2, 1)
        tokens = x.reshape(b, t * h * w, c)
        theta = nn.Dense(d, dtype=self.dtype, name="theta")(tokens)
        phi = nn.Dense(d, dtype=self.dtype, name="phi")(tokens)
        g = nn.Dense(d, dtype=self.dtype, name="g")(tokens)
        logits = jnp.einsum("bid,bjd->bij", theta, phi).astype(jnp.float32) / jnp.sqrt(d)
        attn = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        y = jnp.einsum("bij,bjd->bid", attn, g)
        z = nn.Dense(c, dtype=self.dtype, name="out")(y)
        z = nn.LayerNorm(dtype=self.dtype, scale_init=nn.initializers.zeros, name="norm")(z)
        return x + z.reshape(b, t, h, w, c)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al., CVPR 2018, eqs. 2-4) over a video map.

    ``s = sigmoid(W_2 relu(W_1 mean_{t,h,w}(x)))``, ``y = s * x`` per channel.

    Attributes:
      reduction: channel reduction ratio ``r`` of the bottleneck.
      dtype: computation dtype.
    """

    reduction: int = 4
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """``(B, T, H, W, C) -> (B, T, H, W, C)``."""
        c = x.shape[-1]
        squeeze = jnp.mean(x.astype(jnp.float32), axis=(1, 2, 3)).astype(self.dtype)
        e = nn.Dense(max(c // self.reduction, 1), dtype=self.dtype, name="reduce")(squeeze)
        e = nn.relu(e)
        e = nn.sigmoid(nn.Dense(c, dtype=self.dtype, name="expand")(e))
        return x * e[:, None, None, None, :]


class StructureDiscrepancyBranch(nn.Module):
    """Predicts the SDD residual ``phi_vit(f_vit) - phi_cnn(f_cnn)`` from a student map.

    Attributes:
      dim: common width ``D`` of the residual (``config.loss.sdd.dim``).
      grid: common grid ``(T', H', W')`` (``config.loss.sdd.grid``).
      se_reduction: squeeze-and-excitation reduction ratio.
      dtype: computation dtype (parameters stay float32).
    """

    dim: int
    grid: Sequence[int]
    se_reduction: int = 4
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool = True) -> Array:
        """Maps a student feature to the predicted residual.

        Args:
          x: ``(B, T, H, W, C)`` student feature (e.g. its last stage).
          train: unused (the branch has no dropout or batch statistics); kept for
            the common module signature.

        Returns:
          ``(B, T', H', W', D)`` float32 predicted residual.
        """
        del train
        x = x.astype(self.dtype)
        x = nn.Conv(self.dim, (1, 1, 1), dtype=self.dtype, name="proj")(x)
        x = NonLocalBlock(dtype=self.dtype, name="non_local")(x)
        x = SqueezeExcite(self.se_reduction, dtype=self.dtype, name="se")(x)
        return layers.adaptive_avg_pool3d(x, self.grid)
