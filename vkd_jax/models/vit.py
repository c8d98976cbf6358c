"""A plain video ViT with tubelet embedding, in Flax.

Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021, extended to
video as in ViViT (Arnab et al., ICCV 2021, "tubelet embedding", Sec. 3.2)
and VideoMAE (Tong et al., NeurIPS 2022): non-overlapping ``t x p x p``
tubelets are linearly embedded (a strided Conv3d), positions are added
(learned, or fixed 3-D sin-cos), and a stack of pre-norm transformer blocks
(multi-head self-attention and a GELU MLP, each residual) follows. The
classifier reads the final-LayerNorm'd class token, or (``pool="mean"``,
VideoMAE's fine-tuning head) the LayerNorm'd mean of the patch tokens.

``input_size`` sizes the learned position table; other clip sizes still run
(the table is resized trilinearly to the token grid).

Features returned by ``apply`` (``B`` batch, token grid
``(T', H', W') = (T/t, H/p, W/p)``, width ``D``):

* ``block{i}`` for ``i`` in ``0..depth-1``: ``(B, T', H', W', D)``, the block's
  patch tokens (class token dropped) on the token grid.
* ``stage1`` .. ``stage4``: a plain ViT has no resolution stages; these are the
  outputs of the blocks ending each quarter of the depth (blocks 2, 5, 8, 11
  at depth 12), for code that aligns stages across architectures.
* ``pre_logits``: ``(B, D)``, the feature that feeds the head.

Parameter counts (400 classes, 16x224x224, tubelet 2x16x16, class token,
learned positions): ``small`` 22,641,040; ``base`` 87,749,008; ``tiny``
(10 classes, 8x32x32, tubelet 2x8x8) 48,970.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vkd_jax.models import layers

Triple = tuple[int, int, int]

VARIANTS: dict[str, dict[str, Any]] = {
    # ViT-S / ViT-B widths (Touvron et al. 2021; Dosovitskiy et al. 2021) at depth 12.
    "small": dict(
        width=384,
        depth=12,
        num_heads=6,
        mlp_ratio=4,
        tubelet=(2, 16, 16),
        input_size=(16, 224, 224),
        stochastic_depth_rate=0.1,
    ),
    "base": dict(
        width=768,
        depth=12,
        num_heads=12,
        mlp_ratio=4,
        tubelet=(2, 16, 16),
        input_size=(16, 224, 224),
        stochastic_depth_rate=0.1,
    ),
    # For tests and the CPU default: 4 blocks of width 32 on 8x32x32 clips.
    "tiny": dict(
        width=32,
        depth=4,
        num_heads=2,
        mlp_ratio=2,
        tubelet=(2, 8, 8),
        input_size=(8, 32, 32),
        stochastic_depth_rate=0.0,
    ),
    # The embedded CPU default's ViT teacher: tiny with 4x4x4 tubelets (128 tokens of an
    # 8x32x32 clip instead of 32) read out by the mean of the tokens: with the smaller
    # tubelets the tiny ViT learns the built-in actions, and the mean instead of the class
    # token made no difference (tools/diagnose_learning.py; the measured rows are in
    # docs/results.md, "Why the tiny models learned slowly").
    "mini": dict(
        width=32,
        depth=4,
        num_heads=2,
        mlp_ratio=2,
        tubelet=(4, 4, 4),
        input_size=(8, 32, 32),
        pool="mean",
        stochastic_depth_rate=0.0,
    ),
}

# Clip size (T, H, W) of the full-size variants.
STANDARD_INPUT: dict[str, Triple] = {"small": (16, 224, 224), "base": (16, 224, 224)}


def create(variant: str, *, num_classes: int, dtype: Any = jnp.float32, **overrides: Any) -> ViT:
    """Builds a :class:`ViT` for a variant of :data:`VARIANTS`.

    Args:
      variant: ``"tiny"``, ``"small"`` or ``"base"``.
      num_classes: classifier outputs.
      dtype: computation dtype; parameters stay float32.
      **overrides: replace any attribute of :class:`ViT` (``pool``,
        ``pos_embedding``, ``input_size``, ``dropout_rate``, ...).

    Returns:
      The flax module.
    """
    hp = {**VARIANTS[variant], **overrides}
    unknown = set(hp) - {f.name for f in dataclasses.fields(ViT)}
    if unknown:
        raise ValueError(f"Unknown ViT hyperparameters: {sorted(unknown)}")
    for key in ("tubelet", "input_size"):
        hp[key] = tuple(hp[key])
    return ViT(num_classes=num_classes, dtype=dtype, **hp)


def sincos_3d(grid: Triple, width: int) -> np.ndarray:
    """Fixed 3-D sine-cosine position embeddings ``(T*H*W, width)``.

    The width is split into three parts, one per axis (the temporal part takes
    what is left after two equal even spatial parts); each part holds
    ``[sin(pos * w_k), cos(pos * w_k)]`` with ``w_k = 10000^(-k / (n/2))``
    (Vaswani et al. 2017), as in the 2-D version of MAE (He et al., CVPR 2022).
    """
    t, h, w = grid
    spatial = (width // 3) // 2 * 2
    temporal = width - 2 * spatial

    def axis(n: int, dim: int) -> np.ndarray:
        if dim == 0:
            return np.zeros((n, 0), np.float32)
        half = dim // 2
        omega = 1.0 / 10000 ** (np.arange(half, dtype=np.float64) / max(half, 1))
        out = np.arange(n, dtype=np.float64)[:, None] * omega[None]
        emb = np.concatenate([np.sin(out), np.cos(out)], axis=1)
        return np.pad(emb, ((0, 0), (0, dim - 2 * half))).astype(np.float32)

    et, eh, ew = axis(t, temporal), axis(h, spatial), axis(w, spatial)
    full = np.concatenate(
        [
            np.broadcast_to(et[:, None, None], (t, h, w, temporal)),
            np.broadcast_to(eh[None, :, None], (t, h, w, spatial)),
            np.broadcast_to(ew[None, None, :], (t, h, w, spatial)),
        ],
        axis=-1,
    )
    return full.reshape(t * h * w, width)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection; softmax in float32."""

    num_heads: int
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
        """Args: x ``(B, N, D)``. Returns ``(B, N, D)``."""
        b, n, d = x.shape
        head_dim = d // self.num_heads
        dense = dict(dtype=self.dtype, kernel_init=nn.initializers.xavier_uniform())
        qkv = nn.Dense(3 * d, **dense, name="qkv")(x)
        q, k, v = qkv.reshape(b, n, 3, self.num_heads, head_dim).transpose(2, 0, 3, 1, 4)
        logits = jnp.einsum(
            "bhqc,bhkc->bhqk", q * head_dim**-0.5, k, preferred_element_type=jnp.float32
        )
        attn = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        attn = nn.Dropout(self.dropout_rate)(attn, deterministic=deterministic)
        out = jnp.einsum("bhqk,bhkc->bqhc", attn, v).reshape(b, n, d)
        return nn.Dense(d, **dense, name="proj")(out)


class Block(nn.Module):
    """Pre-norm transformer block: ``x + Attn(LN(x))``, then ``x + MLP(LN(x))``."""

    num_heads: int
    mlp_ratio: float
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    stochastic_depth_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
        d = x.shape[-1]
        drop_path = layers.StochasticDepth(self.stochastic_depth_rate)
        dense = dict(dtype=self.dtype, kernel_init=nn.initializers.xavier_uniform())
        y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm1")(x)
        y = Attention(self.num_heads, self.attention_dropout_rate, self.dtype, name="attn")(
            y, deterministic=deterministic
        )
        y = nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
        x = x + drop_path(y, deterministic=deterministic)
        y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm2")(x)
        y = nn.Dense(int(d * self.mlp_ratio), **dense, name="fc1")(y)
        y = layers.gelu(y)
        y = nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
        y = nn.Dense(d, **dense, name="fc2")(y)
        y = nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
        return x + drop_path(y, deterministic=deterministic)


class ViT(nn.Module):
    """Video ViT classifier with tubelet embedding (ViViT / VideoMAE style).

    Attributes:
      num_classes: classifier outputs.
      width: token width ``D``.
      depth: number of transformer blocks.
      num_heads: attention heads.
      mlp_ratio: MLP hidden width over ``D``.
      tubelet: ``(t, p, p)`` tubelet (patch) size and stride.
      input_size: ``(T, H, W)`` the learned position table is built for.
      pool: ``"cls"`` (class token) or ``"mean"`` (mean of patch tokens).
      pos_embedding: ``"learned"`` or ``"sincos"`` (fixed, no parameters).
      dropout_rate: dropout in blocks and before the head.
      attention_dropout_rate: dropout on attention weights.
      stochastic_depth_rate: drop-path rate of the last block (linear in depth).
      dtype: computation dtype; parameters are float32.
    """

    num_classes: int
    width: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    tubelet: Triple = (2, 16, 16)
    input_size: Triple = (16, 224, 224)
    pool: str = "cls"
    pos_embedding: str = "learned"
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    stochastic_depth_rate: float = 0.0
    dtype: Any = jnp.float32

    def stage_ends(self) -> list[int]:
        """Blocks ending each quarter of the depth (the pseudo-stages)."""
        return [max((self.depth * q) // 4 - 1, 0) for q in (1, 2, 3, 4)]

    def _positions(self, grid: Triple) -> jax.Array:
        """``(T'*H'*W', D)`` position embeddings for a token grid."""
        if self.pos_embedding == "sincos":
            return jnp.asarray(sincos_3d(grid, self.width))
        if self.pos_embedding != "learned":
            raise ValueError(
                f"pos_embedding must be 'learned' or 'sincos', not {self.pos_embedding!r}"
            )
        built = tuple(s // p for s, p in zip(self.input_size, self.tubelet))
        table = self.param(
            "pos_embedding", nn.initializers.normal(0.02), (*built, self.width), jnp.float32
        )
        if built != grid:  # A clip of another size: resample the table to its grid.
            table = jax.image.resize(table, (*grid, self.width), "trilinear")
        return table.reshape(-1, self.width)

    @nn.compact
    def __call__(
        self, video: jax.Array, *, train: bool = False
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Classifies clips.

        Args:
          video: ``(B, T, H, W, 3)`` normalized frames.
          train: enables dropout and stochastic depth (rng ``dropout``).

        Returns:
          ``(logits (B, num_classes) float32, features)``, features as in the module
          docstring.
        """
        if self.pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', not {self.pool!r}")
        deterministic = not train
        # nn.Conv's variables (kernel, bias) and initializers; layers.Conv3d computes the
        # tubelet embedding as patches and one matrix product on CPU.
        x = layers.Conv3d(
            self.width,
            tuple(self.tubelet),
            strides=tuple(self.tubelet),
            use_bias=True,
            dtype=self.dtype,
            kernel_init=nn.initializers.lecun_normal(),
            name="patch_embed",
        )(video.astype(self.dtype))
        b = x.shape[0]
        grid = tuple(x.shape[1:4])
        x = x.reshape(b, -1, self.width) + self._positions(grid).astype(self.dtype)
        n_prefix = 0
        if self.pool == "cls":
            cls_tok = self.param("cls", nn.initializers.zeros, (self.width,), jnp.float32)
            cls_tok = jnp.broadcast_to(cls_tok.astype(x.dtype), (b, 1, self.width))
            x = jnp.concatenate([cls_tok, x], axis=1)
            n_prefix = 1
        x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)

        features: dict[str, jax.Array] = {}
        stage_ends = self.stage_ends()
        for i in range(self.depth):
            x = Block(
                self.num_heads,
                self.mlp_ratio,
                self.dropout_rate,
                self.attention_dropout_rate,
                self.stochastic_depth_rate * i / max(self.depth - 1, 1),
                self.dtype,
                name=f"blocks_{i}",
            )(x, deterministic=deterministic)
            features[f"block{i}"] = x[:, n_prefix:].reshape(b, *grid, self.width)
        for s, i in enumerate(stage_ends):
            features[f"stage{s + 1}"] = features[f"block{i}"]

        norm = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm")
        x = norm(x)[:, 0] if self.pool == "cls" else norm(jnp.mean(x, axis=1))
        features["pre_logits"] = x
        x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
        logits = nn.Dense(
            self.num_classes,
            dtype=self.dtype,
            kernel_init=nn.initializers.normal(0.02),
            name="head",
        )(x)
        return logits.astype(jnp.float32), features
