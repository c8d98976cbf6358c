"""MViTv2: multiscale vision transformer with pooling attention, in Flax.

Implements Li et al., "MViTv2: Improved Multiscale Vision Transformers for
Classification and Detection", CVPR 2022 (on top of Fan et al., "Multiscale
Vision Transformers", ICCV 2021), layer for layer as torchvision's
``mvit_v2_s``:

* a ``Conv3d`` patch embedding (kernel 3x7x7, stride 2x4x4) and a class token;
* blocks of pooling attention (Sec. 3.1 of MViT): q, k, v each pooled by a
  depthwise ``Conv3d`` followed by LayerNorm, the class token passed around
  the pooling;
* decomposed relative position embeddings (MViTv2 Sec. 3.1, Eq. 3): tables
  ``rel_pos_t/h/w`` indexed by the query-key offset along each axis, added to
  the attention logits;
* the residual pooling connection (MViTv2 Eq. 4): the pooled query is added to
  the attention output;
* channel doubling inside attention at stage transitions (``proj_after_attn``),
  max-pooled skip connections when the query is strided.

Parameter names follow torchvision's ``state_dict`` one to one (``conv_proj``,
``pos_encoding/class_token``, ``blocks_{i}/attn/{qkv,project,pool_q,...}``,
``blocks_{i}/mlp/{fc1,fc2}``, ``norm``, ``head``); see
``vkd_jax.convert.mvit`` for the mapping.

Unlike torchvision, which fixes the input size at construction, ``input_size``
is a module attribute (it sizes the relative-position tables) and any clip size
runs: tables are linearly interpolated when the token grid differs from the
one they were built for, exactly as torchvision does between stages.

Features returned by ``apply`` (``B`` batch, grid ``(T', H', W')``):

* ``block{i}`` for every block ``i``: ``(B, T', H', W', C_i)``, the block's
  output tokens with the class token dropped, laid out on the token grid.
* ``stage1`` .. ``stageN``: the output of the last block of each resolution
  stage (a new stage starts where the query is strided and the width doubles).
  ``v2_s`` at 16x224x224: ``stage1`` (B, 8, 56, 56, 96), ``stage2``
  (B, 8, 28, 28, 192), ``stage3`` (B, 8, 14, 14, 384), ``stage4``
  (B, 8, 7, 7, 768).
* ``pre_logits``: ``(B, C_last)``, the final-LayerNorm'd class token that feeds
  the head.

Parameter counts (400 classes, standard input): ``v2_s`` 34,537,744 (equal to
torchvision's ``mvit_v2_s``); ``v2_b`` 51,230,128 (MViTv2-B 32x3 of PySlowFast;
the paper reports 51.2M); ``tiny`` (10 classes, 8x32x32) 88,586.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vkd_jax.models import convolutions, layers

Triple = tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class BlockConfig:
    """One multiscale block, in torchvision's ``MSBlockConfig`` terms.

    Attributes:
      num_heads: attention heads.
      input_channels: width of the tokens entering the block.
      output_channels: width leaving it (the attention already runs at this
        width: MViTv2's ``dim_mul_in_att``).
      kernel_q, kernel_kv: pooling kernels of the query and of key/value.
      stride_q, stride_kv: pooling strides of the query and of key/value.
    """

    num_heads: int
    input_channels: int
    output_channels: int
    kernel_q: Triple
    kernel_kv: Triple
    stride_q: Triple
    stride_kv: Triple


def block_settings(
    *,
    embed_dim: int,
    num_heads: int,
    depth: int,
    stage_starts: Sequence[int],
    pool_kv_stride: Triple = (1, 8, 8),
    pool_kernel: Triple = (3, 3, 3),
    stage_q_stride: Triple = (1, 2, 2),
) -> tuple[BlockConfig, ...]:
    """Expands PySlowFast's compact MViTv2 configuration into per-block configs.

    At each block in ``stage_starts`` the width and the head count double and
    the query is pooled with ``stage_q_stride``; the key/value stride starts at
    ``pool_kv_stride`` and is divided by every query stride (PySlowFast's
    ``POOL_KV_STRIDE_ADAPTIVE``), so keys keep a fixed grid size.

    Args:
      embed_dim: width of the first stage (96 for MViTv2-S/B).
      num_heads: heads of the first stage.
      depth: number of blocks.
      stage_starts: indices of the blocks that start a new stage.
      pool_kv_stride: key/value stride of the first block.
      pool_kernel: pooling kernel of q, k and v in every block.
      stage_q_stride: query stride at a stage transition.

    Returns:
      ``depth`` :class:`BlockConfig` entries.
    """
    blocks = []
    dim, heads, kv_stride = embed_dim, num_heads, tuple(pool_kv_stride)
    for i in range(depth):
        if i in stage_starts:
            out_dim, heads = dim * 2, heads * 2
            stride_q = tuple(stage_q_stride)
            kv_stride = tuple(max(s // q, 1) for s, q in zip(kv_stride, stride_q))
        else:
            out_dim, stride_q = dim, (1, 1, 1)
        blocks.append(
            BlockConfig(
                num_heads=heads,
                input_channels=dim,
                output_channels=out_dim,
                kernel_q=tuple(pool_kernel),
                kernel_kv=tuple(pool_kernel),
                stride_q=stride_q,
                stride_kv=kv_stride,
            )
        )
        dim = out_dim
    return tuple(blocks)


# Published configurations (PySlowFast configs/Kinetics/MVITv2_{S_16x4,B_32x3}.yaml,
# torchvision mvit_v2_s) plus a tiny CPU variant.
VARIANTS: dict[str, dict[str, Any]] = {
    "v2_s": dict(
        embed_dim=96,
        num_heads=1,
        depth=16,
        stage_starts=(1, 3, 14),
        pool_kv_stride=(1, 8, 8),
        input_size=(16, 224, 224),
        dropout_rate=0.5,
        stochastic_depth_rate=0.2,
    ),
    "v2_b": dict(
        embed_dim=96,
        num_heads=1,
        depth=24,
        stage_starts=(2, 5, 21),
        pool_kv_stride=(1, 8, 8),
        input_size=(32, 224, 224),
        dropout_rate=0.5,
        stochastic_depth_rate=0.3,
    ),
    # 4 blocks over 3 stages, widths 16/32/64: runs on 8x32x32 clips in milliseconds.
    "tiny": dict(
        embed_dim=16,
        num_heads=1,
        depth=4,
        stage_starts=(1, 3),
        pool_kv_stride=(1, 4, 4),
        input_size=(8, 32, 32),
        dropout_rate=0.0,
        stochastic_depth_rate=0.0,
    ),
}

# Clip size (T, H, W) each full-size variant was published at.
STANDARD_INPUT: dict[str, Triple] = {"v2_s": (16, 224, 224), "v2_b": (32, 224, 224)}

# Hyperparameters of create() that feed block_settings() rather than MViT itself.
BLOCK_CONFIG_KEYS = ("embed_dim", "num_heads", "depth", "stage_starts", "pool_kv_stride")


def create(variant: str, *, num_classes: int, dtype: Any = jnp.float32, **overrides: Any) -> MViT:
    """Builds an :class:`MViT` for a variant of :data:`VARIANTS`.

    Args:
      variant: ``"v2_s"``, ``"v2_b"`` or ``"tiny"``.
      num_classes: classifier outputs.
      dtype: computation dtype; parameters stay float32.
      **overrides: replace any hyperparameter of the variant (``embed_dim``,
        ``depth``, ``stage_starts``, ``input_size``, ``dropout_rate``, ...).

    Returns:
      The flax module.
    """
    hp = {**VARIANTS[variant], **overrides}
    unknown = set(hp) - set(BLOCK_CONFIG_KEYS) - {f.name for f in dataclasses.fields(MViT)}
    if unknown:
        raise ValueError(f"Unknown MViT hyperparameters: {sorted(unknown)}")
    settings = block_settings(**{k: hp.pop(k) for k in BLOCK_CONFIG_KEYS})
    hp["input_size"] = tuple(hp["input_size"])
    return MViT(num_classes=num_classes, block_setting=settings, dtype=dtype, **hp)


def _prod(xs: Sequence[int]) -> int:
    return math.prod(xs)


def _interp_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` weights of 1-D linear resampling, ``align_corners=False``.

    The same sampling as ``torch.nn.functional.interpolate(mode="linear")``,
    which MViTv2 uses to stretch a relative-position table to a new grid.
    """
    scale = n_in / n_out
    src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = (src - i0).astype(np.float32)
    w = np.zeros((n_out, n_in), np.float32)
    np.add.at(w, (np.arange(n_out), i0), 1.0 - frac)
    np.add.at(w, (np.arange(n_out), i1), frac)
    return w


def _rel_pos_lookup(table: jax.Array, q_size: int, k_size: int) -> jax.Array:
    """Relative-position embeddings for every (query, key) pair along one axis.

    MViTv2 Eq. 3: ``R[i, j] = table[dist(i, j)]``, the offset scaled so that
    grids of different resolution (pooled keys) compare in the finer grid's
    units.

    Args:
      table: ``(L, C)`` learned table.
      q_size: query positions along the axis.
      k_size: key positions along the axis.

    Returns:
      ``(q_size, k_size, C)``.
    """
    d = 2 * max(q_size, k_size) - 1
    if table.shape[0] != d:
        table = jnp.asarray(_interp_matrix(table.shape[0], d), table.dtype) @ table
    # float32 arithmetic truncated to int, as torchvision computes the index.
    q_ratio = np.float32(max(k_size / q_size, 1.0))
    k_ratio = np.float32(max(q_size / k_size, 1.0))
    dist = (
        np.arange(q_size, dtype=np.float32)[:, None] * q_ratio
        - (np.arange(k_size, dtype=np.float32)[None, :] + np.float32(1.0 - k_size)) * k_ratio
    )
    return table[dist.astype(np.int64)]


def _rel_pos_terms(
    q: jax.Array, q_thw: Triple, k_thw: Triple, rel_t: jax.Array, rel_h: jax.Array, rel_w: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The three factors of the decomposed relative-position term (MViTv2 Eq. 3).

    Args:
      q: ``(B, heads, 1 + Tq*Hq*Wq, C)`` pooled queries (class token first).
      q_thw, k_thw: query and key grids.
      rel_t, rel_h, rel_w: ``(L, C)`` tables.

    Returns:
      ``bias_t, bias_h, bias_w``: ``(B, heads, Tq*Hq*Wq, Tk)``, ``(..., Hk)`` and
      ``(..., Wk)``; the term for key ``(t, h, w)`` is ``bias_t[..., t] +
      bias_h[..., h] + bias_w[..., w]``.
    """
    b, n, _, c = q.shape
    r_q = q[:, :, 1:].reshape(b, n, *q_thw, c)
    specs = ("bnthwc,tkc->bnthwk", "bnthwc,hkc->bnthwk", "bnthwc,wkc->bnthwk")
    terms = []
    for axis, (table, spec) in enumerate(zip((rel_t, rel_h, rel_w), specs)):
        lookup = _rel_pos_lookup(table, q_thw[axis], k_thw[axis])
        terms.append(jnp.einsum(spec, r_q, lookup).reshape(b, n, _prod(q_thw), k_thw[axis]))
    return tuple(terms)


def _rel_pos_bias(
    q: jax.Array, q_thw: Triple, k_thw: Triple, rel_t: jax.Array, rel_h: jax.Array, rel_w: jax.Array
) -> jax.Array:
    """Decomposed relative-position term of the attention logits (MViTv2 Eq. 3).

    Args: as :func:`_rel_pos_terms`.

    Returns:
      ``(B, heads, Tq*Hq*Wq, Tk*Hk*Wk)`` to add to the patch-patch logits.
    """
    b, n = q.shape[:2]
    # Broadcast at rank 4 (rows = b * n * query positions): LiteRT's add stops at rank 6.
    rows = b * n * _prod(q_thw)
    bias_t, bias_h, bias_w = (
        term.reshape(rows, -1) for term in _rel_pos_terms(q, q_thw, k_thw, rel_t, rel_h, rel_w)
    )
    bias = bias_t[:, :, None, None] + bias_h[:, None, :, None] + bias_w[:, None, None, :]
    return bias.reshape(b, n, _prod(q_thw), _prod(k_thw))


def _logits_with_rel_pos_cpu(
    q: jax.Array,
    k: jax.Array,
    scale: float,
    q_thw: Triple,
    k_thw: Triple,
    rel_t: jax.Array,
    rel_h: jax.Array,
    rel_w: jax.Array,
) -> jax.Array:
    """The attention logits with the rel-pos term (MViTv2 Eq. 3) inside one product.

    The term is ``bias_t[q, t_k] + bias_h[q, h_k] + bias_w[q, w_k]`` (see
    :func:`_rel_pos_terms`): the dot product of ``(bias_t[q], bias_h[q], bias_w[q])``
    with the one-hot codes of key ``k``'s ``(t, h, w)``. Each query gets its three
    ``T_k + H_k + W_k`` bias rows appended to ``q * scale``, each key its codes appended
    to ``k`` (zeros for the class token on either side), and one product gives the
    logits. Same values as the product plus the broadcast term, rounded otherwise.

    Why, on the CPU: XLA fuses the broadcast add of the term into the product, and
    the fused product runs several times slower than the product alone. The no-op
    ``reduce_precision`` at the end (float32 to float32: the identity) keeps the
    softmax's reductions out of that fusion too; pulled in, they slow it as much again
    (docs/benchmarks.md, "Transposed cotangents, fused attention terms and a slow
    import", has the figures).
    """
    b, n = q.shape[:2]
    q32, k32 = q.astype(jnp.float32), k.astype(jnp.float32)
    terms = _rel_pos_terms(q32, q_thw, k_thw, rel_t, rel_h, rel_w)
    rows = jnp.pad(jnp.concatenate(terms, -1), ((0, 0), (0, 0), (1, 0), (0, 0)))
    queries = jnp.concatenate([q32 * scale, rows], -1)
    grid = np.stack(np.meshgrid(*map(np.arange, k_thw), indexing="ij"), -1).reshape(-1, 3)
    eye = [np.eye(size, dtype=np.float32) for size in k_thw]
    codes = np.concatenate([eye[i][grid[:, i]] for i in range(3)], -1)
    codes = np.pad(codes, ((1, 0), (0, 0)))  # The class token's key: no term.
    keys = jnp.concatenate([k32, jnp.broadcast_to(codes, (b, n, *codes.shape))], -1)
    logits = jnp.einsum("bnqc,bnkc->bnqk", queries, keys)
    return jax.lax.reduce_precision(logits, exponent_bits=8, mantissa_bits=23)


class AttentionPool(nn.Module):
    """Pooling of q, k or v: depthwise Conv3d on the patch tokens, then LayerNorm.

    The class token bypasses the convolution and is normalized with the rest
    (torchvision ``Pool`` with ``norm_before_pool=False``).
    """

    head_dim: int
    kernel: Triple
    stride: Triple
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, thw: Triple) -> tuple[jax.Array, Triple]:
        """Args: x ``(B, heads, 1 + T*H*W, C)``. Returns pooled x and its grid."""
        b, n, _, c = x.shape
        cls_tok, patches = x[:, :, :1], x[:, :, 1:]
        patches = patches.reshape(b * n, *thw, c)
        # Depthwise pooling conv; layers.Conv3d has nn.Conv's variables and a fast CPU path.
        patches = layers.Conv3d(
            features=self.head_dim,
            kernel_size=tuple(self.kernel),
            strides=tuple(self.stride),
            padding=tuple(k // 2 for k in self.kernel),
            groups=self.head_dim,
            use_bias=False,
            dtype=self.dtype,
            kernel_init=nn.initializers.lecun_normal(),
            name="pool",
        )(patches)
        new_thw = tuple(patches.shape[1:4])
        patches = patches.reshape(b, n, _prod(new_thw), c)
        x = jnp.concatenate([cls_tok, patches], axis=2)
        x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm")(x)
        return x, new_thw


class MultiscaleAttention(nn.Module):
    """Pooling attention with relative positions and residual pooling (MViTv2 Sec. 3.1)."""

    cfg: BlockConfig
    grid: Triple  # Token grid the block was built for (sizes the rel-pos tables).
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self, x: jax.Array, thw: Triple, *, deterministic: bool
    ) -> tuple[jax.Array, Triple]:
        """Args: x ``(B, 1 + T*H*W, C_in)``. Returns ``(B, 1 + T'*H'*W', C_out)``, grid."""
        cfg = self.cfg
        b, n_tok, _ = x.shape
        dim = cfg.output_channels
        heads = cfg.num_heads
        head_dim = dim // heads
        qkv = nn.Dense(3 * dim, dtype=self.dtype, name="qkv")(x)
        qkv = qkv.reshape(b, n_tok, 3, heads, head_dim).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, heads, N, head_dim)

        k_thw = thw
        if _prod(cfg.kernel_kv) > 1 or _prod(cfg.stride_kv) > 1:
            pool = dict(head_dim=head_dim, kernel=cfg.kernel_kv, stride=cfg.stride_kv)
            k, k_thw = AttentionPool(**pool, dtype=self.dtype, name="pool_k")(k, thw)
            v, _ = AttentionPool(**pool, dtype=self.dtype, name="pool_v")(v, thw)
        q_thw = thw
        if _prod(cfg.kernel_q) > 1 or _prod(cfg.stride_q) > 1:
            pool = dict(head_dim=head_dim, kernel=cfg.kernel_q, stride=cfg.stride_q)
            q, q_thw = AttentionPool(**pool, dtype=self.dtype, name="pool_q")(q, thw)

        # Rel-pos table sizes as torchvision derives them from the build-time grid.
        size = max(self.grid[1:])
        spatial_len = 2 * max(size // cfg.stride_q[1], size // cfg.stride_kv[1]) - 1
        temporal_len = 2 * self.grid[0] - 1
        init = nn.initializers.truncated_normal(0.02)
        rel_h = self.param("rel_pos_h", init, (spatial_len, head_dim), jnp.float32)
        rel_w = self.param("rel_pos_w", init, (spatial_len, head_dim), jnp.float32)
        rel_t = self.param("rel_pos_t", init, (temporal_len, head_dim), jnp.float32)

        # Logits, rel-pos term and softmax in float32 for stability under bfloat16.
        scale = 1.0 / math.sqrt(head_dim)
        tables = (rel_t, rel_h, rel_w)
        if convolutions.cpu_forms():
            attn = _logits_with_rel_pos_cpu(q, k, scale, q_thw, k_thw, *tables)
        else:
            attn = jnp.einsum("bnqc,bnkc->bnqk", q * scale, k, preferred_element_type=jnp.float32)
            bias = _rel_pos_bias(q.astype(jnp.float32), q_thw, k_thw, *tables)
            attn = attn + jnp.pad(bias, ((0, 0), (0, 0), (1, 0), (1, 0)))
        attn = jax.nn.softmax(attn, axis=-1).astype(self.dtype)
        out = jnp.einsum("bnqk,bnkc->bnqc", attn, v.astype(self.dtype))
        # Residual pooling (MViTv2 Eq. 4), on patch tokens only.
        # A concatenation, not `.at[].add`: the same sum without a scatter (LiteRT's
        # runtime refuses the scatter this lowers to).
        out = jnp.concatenate([out[:, :, :1], out[:, :, 1:] + q[:, :, 1:].astype(out.dtype)], 2)
        out = out.transpose(0, 2, 1, 3).reshape(b, -1, dim)
        out = nn.Dense(dim, dtype=self.dtype, name="project")(out)
        out = nn.Dropout(self.dropout_rate)(out, deterministic=deterministic)
        return out, q_thw


def _max_pool_tokens(x: jax.Array, thw: Triple, stride: Triple) -> jax.Array:
    """Max-pools the patch tokens of ``(B, 1 + T*H*W, C)`` (skip path of a strided block)."""
    kernel = tuple(s + 1 if s > 1 else s for s in stride)
    cls_tok, patches = x[:, :1], x[:, 1:]
    patches = patches.reshape(x.shape[0], *thw, x.shape[-1])
    patches = layers.max_pool3d(patches, kernel, stride, [k // 2 for k in kernel])
    patches = patches.reshape(x.shape[0], -1, x.shape[-1])
    return jnp.concatenate([cls_tok, patches], axis=1)


class Mlp(nn.Module):
    """Linear -> GELU (exact) -> dropout -> Linear -> dropout."""

    hidden: int
    out: int
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
        x = nn.Dense(self.hidden, dtype=self.dtype, name="fc1")(x)
        x = layers.gelu(x)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
        x = nn.Dense(self.out, dtype=self.dtype, name="fc2")(x)
        return nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)


class MultiscaleBlock(nn.Module):
    """Pre-norm MViTv2 block; widens inside attention (torchvision ``proj_after_attn``)."""

    cfg: BlockConfig
    grid: Triple
    dropout_rate: float = 0.0
    stochastic_depth_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self, x: jax.Array, thw: Triple, *, deterministic: bool
    ) -> tuple[jax.Array, Triple]:
        cfg = self.cfg
        drop_path = layers.StochasticDepth(self.stochastic_depth_rate)
        x_norm1 = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm1")(x)
        x_attn, new_thw = MultiscaleAttention(
            cfg, self.grid, self.dropout_rate, self.dtype, name="attn"
        )(x_norm1, thw, deterministic=deterministic)
        if cfg.input_channels != cfg.output_channels:
            x = nn.Dense(cfg.output_channels, dtype=self.dtype, name="project")(x_norm1)
        if _prod(cfg.stride_q) > 1:
            x = _max_pool_tokens(x, thw, cfg.stride_q)
        x = x + drop_path(x_attn, deterministic=deterministic)
        x_norm2 = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm2")(x)
        mlp = Mlp(
            4 * cfg.output_channels, cfg.output_channels, self.dropout_rate, self.dtype, name="mlp"
        )
        x = x + drop_path(mlp(x_norm2, deterministic=deterministic), deterministic=deterministic)
        return x, new_thw


class PositionalEncoding(nn.Module):
    """Prepends the class token (positions are relative, inside attention)."""

    dim: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cls_tok = self.param("class_token", nn.initializers.truncated_normal(0.02), (self.dim,))
        cls_tok = jnp.broadcast_to(cls_tok.astype(x.dtype), (x.shape[0], 1, self.dim))
        return jnp.concatenate([cls_tok, x], axis=1)


class MViT(nn.Module):
    """MViTv2 video classifier (Li et al., CVPR 2022).

    Attributes:
      num_classes: classifier outputs.
      block_setting: per-block configuration (:func:`block_settings`).
      input_size: ``(T, H, W)`` the relative-position tables are sized for;
        other clip sizes still run (tables are interpolated).
      patch_kernel, patch_stride, patch_padding: the patch-embedding Conv3d.
      dropout_rate: dropout before the head.
      attention_dropout_rate: dropout after attention projections and in MLPs.
      stochastic_depth_rate: drop-path rate of the last block (linear in depth).
      dtype: computation dtype; parameters are float32.
    """

    num_classes: int
    block_setting: tuple[BlockConfig, ...]
    input_size: Triple = (16, 224, 224)
    patch_kernel: Triple = (3, 7, 7)
    patch_stride: Triple = (2, 4, 4)
    patch_padding: Triple = (1, 3, 3)
    dropout_rate: float = 0.5
    attention_dropout_rate: float = 0.0
    stochastic_depth_rate: float = 0.2
    dtype: Any = jnp.float32

    def stage_ends(self) -> list[int]:
        """Index of the last block of each resolution stage."""
        starts = [i for i, c in enumerate(self.block_setting) if _prod(c.stride_q) > 1 and i > 0]
        return [s - 1 for s in starts] + [len(self.block_setting) - 1]

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
        deterministic = not train
        blocks = self.block_setting
        # nn.Conv's variables (kernel, bias) and initializers; layers.Conv3d computes it in
        # the fastest form of the backend.
        x = layers.Conv3d(
            blocks[0].input_channels,
            tuple(self.patch_kernel),
            strides=tuple(self.patch_stride),
            padding=tuple(self.patch_padding),
            use_bias=True,
            dtype=self.dtype,
            kernel_init=nn.initializers.lecun_normal(),
            name="conv_proj",
        )(video.astype(self.dtype))
        b = x.shape[0]
        thw = tuple(x.shape[1:4])
        x = x.reshape(b, -1, x.shape[-1])
        x = PositionalEncoding(blocks[0].input_channels, name="pos_encoding")(x)

        features: dict[str, jax.Array] = {}
        grid = tuple(s // p for s, p in zip(self.input_size, self.patch_stride))
        stage_ends = self.stage_ends()
        for i, cfg in enumerate(blocks):
            sd_rate = self.stochastic_depth_rate * i / max(len(blocks) - 1.0, 1.0)
            x, thw = MultiscaleBlock(
                cfg,
                grid,
                self.attention_dropout_rate,
                sd_rate,
                self.dtype,
                name=f"blocks_{i}",
            )(x, thw, deterministic=deterministic)
            features[f"block{i}"] = x[:, 1:].reshape(b, *thw, x.shape[-1])
            if i in stage_ends:
                features[f"stage{stage_ends.index(i) + 1}"] = features[f"block{i}"]
            grid = tuple(g // s for g, s in zip(grid, cfg.stride_q))

        x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm")(x)
        x = x[:, 0]
        features["pre_logits"] = x
        x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
        logits = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
        return logits.astype(jnp.float32), features
