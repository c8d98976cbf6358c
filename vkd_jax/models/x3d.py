"""X3D: Expanding Architectures for Efficient Video Recognition.

Christoph Feichtenhofer, CVPR 2020 (https://arxiv.org/abs/2004.04730), built
exactly as pytorchvideo's ``create_x3d`` so its checkpoints (and PySlowFast's,
see :mod:`vkd_jax.convert.x3d`) load one to one:

* stem: a spatial ``1x3x3`` conv (stride ``1x2x2``) then a depthwise temporal
  ``5x1x1`` conv, BN, ReLU; ``round_width(12, width_factor)`` channels.
* four stages of residual bottlenecks (``1x1x1`` -> channel-wise ``3x3x3`` ->
  ``1x1x1``), ``round_repeats((1, 2, 5, 3), depth_factor)`` blocks, widths
  ``round_width((12, 24, 48, 96), width_factor)``, inner width
  ``int(bottleneck_factor * width)``, spatial stride 2 in each stage's first
  block, squeeze-and-excitation (ratio 1/16) after the ``3x3x3`` BN of every
  other block (the 1st, 3rd, ...), swish inside the bottleneck, ReLU after the
  residual sum.
* head: ``conv5`` (``1x1x1`` to the last inner width, BN, ReLU), global average
  pooling, ``lin_5`` (``1x1x1`` to ``head_dim_out`` = 2048, no bias, ReLU),
  dropout, the final linear projection.

Full-size variants (``xs``, ``s``, ``m``, ``l``) differ only by depth factor
(L: 5.0) and the input size they were trained at (:data:`STANDARD_INPUT`); at
400 classes they have exactly pytorchvideo's parameter counts (3,794,274 for
XS/S/M, 6,153,384 for L). ``tiny`` (the CPU student) and ``tiny_m`` (a bigger
CNN teacher of the same family) are for tests and the embedded default.

Deviation from pytorchvideo (none at the standard input): its head averages
with a fixed ``AvgPool3d`` kernel sized for the standard input, projects every
remaining position and then averages; we pool globally, which is identical when
the input has the standard size and lets the model run at any ``(T, H, W)``.
The head returns logits (pytorchvideo appends a softmax by default).

``model.apply(variables, video, train=...)`` with ``video`` ``(B, T, H, W, 3)``
returns ``(logits, features)``: ``logits`` ``(B, num_classes)`` float32 and
``features`` (in the compute dtype, except ``pre_logits``, float32):

* ``stem``: ``(B, T, H/2, W/2, C_stem)`` stem output.
* ``stage1`` .. ``stage4``: ``(B, T, H/4, W/4, C1)`` .. ``(B, T, H/32, W/32, C4)``
  residual stage outputs (spatial sizes rounded up at each stride 2).
* ``head_conv``: ``(B, T, H/32, W/32, C_conv5)`` the ``conv5`` map after BN + ReLU.
* ``pre_logits``: ``(B, head_dim_out)`` after ``lin_5`` + ReLU, before dropout and
  the projection.

For X3D-S at ``13x160x160``: stem 24, stages 24/48/96/192 channels at
80/40/20/10/5 px, ``head_conv`` 432, ``pre_logits`` 2048.

Variables: ``params`` (float32) and ``batch_stats`` (BN running statistics,
updated only with ``train=True``: pass ``mutable=["batch_stats"]``). Dropout
(``train=True``, ``dropout_rate > 0``) draws from the ``dropout`` rng.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vkd_jax.models import layers

# Variant -> hyperparameters (fields of :class:`X3D`). Full-size values from
# pytorchvideo's hub (``pytorchvideo/models/hub/x3d.py``) and the X3D paper, Table 3.
_FULL = dict(
    width_factor=2.0,
    depth_factor=2.2,
    bottleneck_factor=2.25,
    stem_dim_in=12,
    stage_depths=(1, 2, 5, 3),
    se_ratio=0.0625,
    head_dim_out=2048,
    dropout_rate=0.5,
)
_MINI = dict(
    _FULL,
    se_ratio=0.0,
    stage_spatial_strides=(2, 2, 1, 1),
    zero_init_last_bn=False,
    head="linear",
    dropout_rate=0.0,
)
VARIANTS: dict[str, dict[str, Any]] = {
    "xs": dict(_FULL),
    "s": dict(_FULL),
    "m": dict(_FULL),
    "l": dict(_FULL, depth_factor=5.0),
    # Faithful miniatures (pytorchvideo's structure, tiny widths) for tests and parity:
    # widths 8/8/16/24/48, one block per stage, lin_5 128.
    "tiny": dict(_FULL, width_factor=0.5, depth_factor=0.2, head_dim_out=128, dropout_rate=0.2),
    # ~3x tiny's parameters: widths 16/16/24/40/72, blocks 1/1/2/2 (so SE alternates as
    # in the full model), lin_5 192.
    "tiny_m": dict(_FULL, width_factor=0.75, depth_factor=0.4, head_dim_out=192, dropout_rate=0.2),
    # The embedded CPU default's student and CNN teacher (8x32x32 clips): the widths and
    # depths of tiny / tiny_m with four changes that tools/diagnose_learning.py measured
    # to make X3D learn at that size in a few hundred steps (docs/results.md, "Why the
    # tiny models learned slowly", has the measured rows): the
    # last BN of each bottleneck starts at 1, not 0; no squeeze-and-excitation; the last
    # two stages keep their resolution (4x4 instead of 1x1 at 32x32); a pooled linear
    # head instead of conv5 + lin_5. No one change does it alone: alone, two help and two
    # cost points; only together do they work.
    "mini": dict(_MINI, width_factor=0.5, depth_factor=0.2),
    "mini_m": dict(_MINI, width_factor=0.75, depth_factor=0.4),
}

# Full-size variant -> (T, H, W) it was trained and evaluated at.
STANDARD_INPUT: dict[str, tuple[int, int, int]] = {
    "xs": (4, 160, 160),
    "s": (13, 160, 160),
    "m": (16, 224, 224),
    "l": (16, 312, 312),
}


class X3DStem(nn.Module):
    """Spatial ``1x3x3`` conv (stride ``1x2x2``), depthwise temporal ``kt x1x1`` conv, BN, ReLU.

    pytorchvideo names the spatial conv ``conv.conv_t`` and the temporal one
    ``conv.conv_xy`` (its ``Conv2plus1d`` is built with the two swapped); our
    names say what each does: ``conv_xy`` is spatial, ``conv_t`` temporal.
    """

    features: int
    temporal_kernel: int = 5
    spatial_stride: int = 2
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """``(B, T, H, W, 3)`` -> ``(B, T, ceil(H/s), ceil(W/s), features)``, s the stride."""
        stride = (1, self.spatial_stride, self.spatial_stride)
        conv_xy = layers.conv3d(
            self.features, (1, 3, 3), strides=stride, dtype=self.dtype, name="conv_xy"
        )
        x = conv_xy(x)
        x = layers.conv3d(
            self.features,
            (self.temporal_kernel, 1, 1),
            groups=self.features,
            dtype=self.dtype,
            name="conv_t",
        )(x)
        x = layers.BatchNorm(dtype=self.dtype, name="norm")(x, train=train)
        return nn.relu(x)


class X3DBottleneck(nn.Module):
    """``1x1x1`` conv, BN, ReLU; channel-wise ``3x3x3`` conv, BN, [SE], swish; ``1x1x1`` conv, BN.

    The stride sits on the ``3x3x3`` conv. The last BN's scale starts at zero
    (pytorchvideo's ``block_final_bn``), so each block starts as the identity,
    unless ``zero_init_last_bn`` is off.
    """

    dim_inner: int
    dim_out: int
    stride: Sequence[int] = (1, 2, 2)
    se_ratio: float = 0.0
    zero_init_last_bn: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """``(B, T, H, W, C_in)`` -> ``(B, T/st, H/sh, W/sw, dim_out)``."""
        bn = lambda name, **kw: layers.BatchNorm(dtype=self.dtype, name=name, **kw)
        x = layers.conv3d(self.dim_inner, (1, 1, 1), dtype=self.dtype, name="conv_a")(x)
        x = nn.relu(bn("norm_a")(x, train=train))
        x = layers.conv3d(
            self.dim_inner,
            (3, 3, 3),
            strides=self.stride,
            groups=self.dim_inner,
            dtype=self.dtype,
            name="conv_b",
        )(x)
        x = bn("norm_b")(x, train=train)
        if self.se_ratio > 0.0:
            x = layers.SqueezeExcite(self.se_ratio, dtype=self.dtype, name="se")(x)
        x = layers.swish(x)
        x = layers.conv3d(self.dim_out, (1, 1, 1), dtype=self.dtype, name="conv_c")(x)
        scale_init = nn.initializers.zeros if self.zero_init_last_bn else nn.initializers.ones
        return bn("norm_c", scale_init=scale_init)(x, train=train)


class X3DResBlock(nn.Module):
    """``relu(shortcut(x) + bottleneck(x))``.

    The shortcut is a strided ``1x1x1`` conv when the width or the resolution
    changes, followed by BN when the width changes (pytorchvideo) or always
    (``shortcut_norm_always``, PySlowFast's ``ResBlock``, which also normalizes
    the width-preserving strided shortcut of stage 1's first block).
    """

    dim_inner: int
    dim_out: int
    stride: Sequence[int] = (1, 1, 1)
    se_ratio: float = 0.0
    shortcut_norm_always: bool = False
    zero_init_last_bn: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """``(B, T, H, W, C_in)`` -> ``(B, T/st, H/sh, W/sw, dim_out)``."""
        dim_in = x.shape[-1]
        shortcut = x
        if dim_in != self.dim_out or any(s > 1 for s in self.stride):
            shortcut = layers.conv3d(
                self.dim_out,
                (1, 1, 1),
                strides=self.stride,
                dtype=self.dtype,
                name="branch1_conv",
            )(x)
            if dim_in != self.dim_out or self.shortcut_norm_always:
                shortcut = layers.BatchNorm(dtype=self.dtype, name="branch1_norm")(
                    shortcut, train=train
                )
        y = X3DBottleneck(
            self.dim_inner,
            self.dim_out,
            stride=self.stride,
            se_ratio=self.se_ratio,
            zero_init_last_bn=self.zero_init_last_bn,
            dtype=self.dtype,
            name="branch2",
        )(x, train=train)
        return nn.relu(shortcut + y)


class X3DStage(nn.Module):
    """``depth`` residual blocks; the first one strides, SE on blocks 0, 2, 4, ..."""

    depth: int
    dim_inner: int
    dim_out: int
    stride: Sequence[int] = (1, 2, 2)
    se_ratio: float = 0.0625
    shortcut_norm_always: bool = False
    zero_init_last_bn: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        for i in range(self.depth):
            x = X3DResBlock(
                self.dim_inner,
                self.dim_out,
                stride=self.stride if i == 0 else (1, 1, 1),
                # pytorchvideo: se_ratio if (idx + 1) % 2 else 0.0.
                se_ratio=self.se_ratio if (i + 1) % 2 else 0.0,
                shortcut_norm_always=self.shortcut_norm_always,
                zero_init_last_bn=self.zero_init_last_bn,
                dtype=self.dtype,
                name=f"res_blocks_{i}",
            )(x, train=train)
        return x


class X3DHead(nn.Module):
    """conv5 (``pre_conv``, BN, ReLU), global pooling, lin_5 (``post_conv``, [BN], ReLU),
    dropout, projection (``proj``).

    Returns ``(logits, head_conv, pre_logits)``.
    """

    dim_inner: int
    dim_out: int
    num_classes: int
    dropout_rate: float = 0.5
    bn_lin5: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool):
        x = layers.conv3d(self.dim_inner, (1, 1, 1), dtype=self.dtype, name="pre_conv")(x)
        head_conv = nn.relu(layers.BatchNorm(dtype=self.dtype, name="pre_norm")(x, train=train))
        # Global average (pytorchvideo: a fixed AvgPool3d; equal at the standard input).
        x = jnp.mean(head_conv.astype(jnp.float32), axis=(1, 2, 3), keepdims=True)
        x = layers.conv3d(self.dim_out, (1, 1, 1), dtype=self.dtype, name="post_conv")(
            x.astype(self.dtype)
        )
        if self.bn_lin5:
            x = layers.BatchNorm(dtype=self.dtype, name="post_norm")(x, train=train)
        pre_logits = nn.relu(x).reshape(x.shape[0], self.dim_out)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(pre_logits)
        logits = nn.Dense(
            self.num_classes,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=nn.initializers.normal(0.01),
            name="proj",
        )(x)
        return logits, head_conv, pre_logits


class X3DLinearHead(nn.Module):
    """Global average pooling, dropout, one linear projection (``proj``).

    The ``head="linear"`` alternative to :class:`X3DHead` for the ``mini``
    variants (see :data:`VARIANTS`). Returns ``(logits, pre_logits)``, the pooled
    features being ``pre_logits``.
    """

    num_classes: int
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool):
        pre_logits = jnp.mean(x.astype(jnp.float32), axis=(1, 2, 3))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(pre_logits)
        logits = nn.Dense(
            self.num_classes, dtype=self.dtype, param_dtype=jnp.float32, name="proj"
        )(x.astype(self.dtype))
        return logits, pre_logits


class X3D(nn.Module):
    """X3D video classifier (Feichtenhofer, CVPR 2020); see the module docstring.

    Attributes:
      num_classes: classes of the projection.
      width_factor: channel expansion (gamma_w; 2.0 for every published X3D).
      depth_factor: block-count expansion (gamma_d; 2.2 for XS/S/M, 5.0 for L).
      bottleneck_factor: inner width over output width of a bottleneck (gamma_b).
      stem_dim_in: base width (12) before ``width_factor``; stages double it.
      stage_depths: base block counts before ``depth_factor``.
      se_ratio: SE hidden width ratio (0 disables SE).
      head_dim_out: ``lin_5`` width (the ``pre_logits`` dimension).
      dropout_rate: dropout before the projection.
      stem_temporal_kernel: temporal kernel of the stem's depthwise conv.
      stem_spatial_stride: spatial stride of the stem's ``1x3x3`` conv (2 in X3D).
      stage_spatial_strides: spatial stride of each stage's first block (2 in X3D).
      bn_lin5: BN after ``lin_5`` (PySlowFast ``X3D.BN_LIN5``; off in all released models).
      shortcut_norm_always: BN on every projection shortcut (PySlowFast layout).
      zero_init_last_bn: each bottleneck's last BN scale starts at 0 (X3D, pytorchvideo).
      head: ``"x3d"`` (:class:`X3DHead`: conv5, pooling, lin_5, projection) or
        ``"linear"`` (:class:`X3DLinearHead`: pooling and projection only).
      dtype: computation dtype; parameters and BN statistics stay float32.
    """

    num_classes: int
    width_factor: float = 2.0
    depth_factor: float = 2.2
    bottleneck_factor: float = 2.25
    stem_dim_in: int = 12
    stage_depths: Sequence[int] = (1, 2, 5, 3)
    se_ratio: float = 0.0625
    head_dim_out: int = 2048
    dropout_rate: float = 0.5
    stem_temporal_kernel: int = 5
    stem_spatial_stride: int = 2
    stage_spatial_strides: Sequence[int] = (2, 2, 2, 2)
    bn_lin5: bool = False
    shortcut_norm_always: bool = False
    zero_init_last_bn: bool = True
    head: str = "x3d"
    dtype: Any = jnp.float32

    def stage_dims(self) -> list[tuple[int, int, int]]:
        """``(depth, dim_inner, dim_out)`` of each stage, as pytorchvideo computes them."""
        dims = [self.stem_dim_in]
        for _ in range(len(self.stage_depths) - 1):
            dims.append(layers.round_width(dims[-1], 2.0))
        out = []
        for base_depth, base_dim in zip(self.stage_depths, dims):
            dim_out = layers.round_width(base_dim, self.width_factor)
            out.append(
                (
                    layers.round_repeats(base_depth, self.depth_factor),
                    int(self.bottleneck_factor * dim_out),
                    dim_out,
                )
            )
        return out

    @nn.compact
    def __call__(self, video: jax.Array, *, train: bool = False):
        """Classifies ``video`` ``(B, T, H, W, 3)``; returns ``(logits, features)``."""
        features = {}
        x = video.astype(self.dtype)
        x = features["stem"] = X3DStem(
            layers.round_width(self.stem_dim_in, self.width_factor),
            temporal_kernel=self.stem_temporal_kernel,
            spatial_stride=self.stem_spatial_stride,
            dtype=self.dtype,
            name="blocks_0",
        )(x, train=train)
        stages = self.stage_dims()
        for i, (depth, dim_inner, dim_out) in enumerate(stages):
            x = features[f"stage{i + 1}"] = X3DStage(
                depth,
                dim_inner,
                dim_out,
                stride=(1, self.stage_spatial_strides[i], self.stage_spatial_strides[i]),
                se_ratio=self.se_ratio,
                shortcut_norm_always=self.shortcut_norm_always,
                zero_init_last_bn=self.zero_init_last_bn,
                dtype=self.dtype,
                name=f"blocks_{i + 1}",
            )(x, train=train)
        head_name = f"blocks_{len(stages) + 1}"
        if self.head == "linear":
            logits, pre_logits = X3DLinearHead(
                self.num_classes, self.dropout_rate, dtype=self.dtype, name=head_name
            )(x, train=train)
            features["pre_logits"] = pre_logits
            return logits.astype(jnp.float32), features
        if self.head != "x3d":
            raise ValueError(f"X3D head must be 'x3d' or 'linear', got {self.head!r}")
        logits, features["head_conv"], pre_logits = X3DHead(
            stages[-1][1],
            self.head_dim_out,
            self.num_classes,
            dropout_rate=self.dropout_rate,
            bn_lin5=self.bn_lin5,
            dtype=self.dtype,
            name=head_name,
        )(x, train=train)
        features["pre_logits"] = pre_logits.astype(jnp.float32)
        return logits.astype(jnp.float32), features


def create(variant: str, *, num_classes: int, dtype: Any = jnp.float32, **overrides: Any) -> X3D:
    """Builds X3D ``variant`` (a key of :data:`VARIANTS`) with ``num_classes`` outputs.

    Args:
      variant: ``xs``, ``s``, ``m``, ``l``, ``tiny``, ``tiny_m``, ``mini`` or ``mini_m``.
      num_classes: size of the projection.
      dtype: computation dtype (parameters stay float32).
      **overrides: replace hyperparameters of the variant (fields of :class:`X3D`,
        e.g. ``dropout_rate=0.0``).

    Returns:
      The :class:`X3D` module.
    """
    if variant not in VARIANTS:
        raise ValueError(f"Unknown X3D variant {variant!r}; known: {list(VARIANTS)}")
    fields = set(X3D.__dataclass_fields__) - {"num_classes", "dtype", "parent", "name"}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"Unknown X3D hyperparameters {unknown}; known: {sorted(fields)}")
    hparams = {**VARIANTS[variant], **overrides}
    return X3D(num_classes=num_classes, dtype=dtype, **hparams)
