"""3D-ShuffleNet v1 and v2 (Kopuklu et al., "Resource Efficient 3D Convolutional
Neural Networks", ICCVW 2019; reference code okankop/Efficient-3DCNNs,
``models/shufflenet.py`` and ``models/shufflenetv2.py``).

The 2D ShuffleNets (Zhang et al., CVPR 2018; Ma et al., ECCV 2018) inflated to
3D: every 3x3 kernel becomes 3x3x3, the stem is a 3x3x3 convolution with stride
(1, 2, 2) followed by a 3x3x3 max pool with stride 2, and the first block of
each of the three stages halves T, H and W. Both follow the reference code
exactly, quirks included, so its checkpoints load:

* **v1** (groups = 3): bottleneck = grouped 1x1x1 conv -> BN -> ReLU -> channel
  shuffle -> depthwise 3x3x3 conv -> BN -> grouped 1x1x1 conv -> BN; stride-2
  blocks concatenate a (2, 3, 3) average-pooled shortcut (stride 2, padding
  (0, 1, 1), zero padding counted) instead of adding it. Stage widths are
  ``int(w * [24, 240, 480, 960])``. As in the reference, the first pointwise
  convolution is ungrouped only when its input has exactly 24 channels (i.e.
  only at width 1.0). Because the shortcut pools T without padding, every stage
  input needs an even T: ``ceil(T / 2)`` divisible by 8, e.g. T = 16 or 32
  (other T raise a ``ValueError``). The reference additionally needs H, W >= 48.
* **v2**: stride-1 units split the channels in half and transform one half
  (1x1x1 -> BN -> ReLU -> depthwise 3x3x3 -> BN -> 1x1x1 -> BN -> ReLU);
  stride-2 units transform both copies of the input (branch 1: depthwise ->
  BN -> 1x1x1 -> BN -> ReLU); the halves are concatenated and shuffled with 2
  groups. A final 1x1x1 conv -> BN -> ReLU (``conv_last``) widens to 1024 (2048
  at width 2.0). Any T works.

Both end in global average pooling, dropout 0.2 and a linear classifier.

Parameters at 600 classes (Kinetics-600, the reference's default), measured and
equal to the reference PyTorch models' counts:

=========  ==========  =========  ==========
variant    params      variant    params
=========  ==========  =========  ==========
v1_0.25      219,486   v2_0.25      829,656
v1_0.5       545,772   v2_0.5       976,664
v1_1.0     1,521,504   v2_1.0     1,914,180
v1_1.5     2,924,916   v2_1.5     3,161,880
v1_2.0     4,758,888   v2_2.0     6,639,816
=========  ==========  =========  ==========

``tiny`` (v2 layout, 19,058 params at 10 classes; 8x32x32 clips) and ``v1_tiny``
(5,002; 16x32x32 clips) are for CPU tests and the embedded default.

Published input: 16 x 112 x 112 (``STANDARD_INPUT``). Features returned by
``apply`` for input ``(B, T, H, W, 3)`` (C0: stem width, C1..C3: stage widths;
sizes rounded up):

* ``stem``: ``(B, T/2, H/4, W/4, C0)``, after the max pool
* ``stage1``: ``(B, T/4, H/8, W/8, C1)``
* ``stage2``: ``(B, T/8, H/16, W/16, C2)``
* ``stage3``: ``(B, T/16, H/32, W/32, C3)``
* ``conv_last`` (v2 only): ``(B, T/16, H/32, W/32, 1024 or 2048)``
* ``pre_logits``: ``(B, D)``, the globally pooled last map feeding ``classifier``.

Parameter names mirror the reference ``state_dict`` (see
``vkd_jax.convert.shufflenet3d``): ``conv1/{conv,bn}`` is ``conv1.{0,1}``; v1
``layerI_J/convK/{conv,bn}`` is ``layerI.J.{convK,bnK}``; v2
``features_N/branch1/{dw,pw}/{conv,bn}`` is ``features.N.banch1.{0,1,2,3}``,
``features_N/branch2/{pw1,dw,pw2}/{conv,bn}`` is ``features.N.banch2.{0,1,3,4,5,6}``,
``conv_last/{conv,bn}`` is ``conv_last.{0,1}``; ``classifier`` is ``classifier.1``.

Batch norm uses PyTorch's eps 1e-5 and momentum 0.1; as everywhere in flax, the
running variance is updated with the biased batch variance (PyTorch: unbiased),
a factor n / (n - 1) that only matters for tiny batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from vkd_jax.models import layers

_V1_BASE = (24, 240, 480, 960)  # groups = 3 (reference ShuffleNet, out_planes).
# Reference ShuffleNetV2 stage_out_channels (stem, stage1..3, conv_last) per width.
_V2_CHANNELS = {
    "0.25": (24, 32, 64, 128, 1024),
    "0.5": (24, 48, 96, 192, 1024),
    "1.0": (24, 116, 232, 464, 1024),
    "1.5": (24, 176, 352, 704, 1024),
    "2.0": (24, 224, 488, 976, 2048),
}


def _v1_channels(width: float) -> tuple[int, ...]:
    return tuple(int(c * width) for c in _V1_BASE)


# Variant -> hyperparameters of :class:`ShuffleNetV1` (``version`` 1) or
# :class:`ShuffleNetV2` (``version`` 2).
VARIANTS: dict[str, dict[str, Any]] = {
    **{
        f"v1_{w}": dict(version=1, channels=_v1_channels(float(w)), repeats=(4, 8, 4), groups=3)
        for w in ("0.25", "0.5", "1.0", "1.5", "2.0")
    },
    **{
        f"v2_{w}": dict(version=2, channels=_V2_CHANNELS[w], repeats=(4, 8, 4))
        for w in ("0.25", "0.5", "1.0", "1.5", "2.0")
    },
    # CPU tests and the embedded default: v2 on 8x32x32, v1 on 16x32x32.
    "tiny": dict(version=2, channels=(8, 16, 32, 64, 128), repeats=(1, 2, 1)),
    "v1_tiny": dict(version=1, channels=(6, 24, 48, 96), repeats=(1, 2, 1), groups=3),
}

# Full-size variant -> (T, H, W) of the published clips.
STANDARD_INPUT: dict[str, tuple[int, int, int]] = {
    name: (16, 112, 112) for name in VARIANTS if "tiny" not in name
}


def channel_shuffle(x: jnp.ndarray, groups: int) -> jnp.ndarray:
    """ShuffleNet channel shuffle on channels-last maps.

    Channel ``g * (C / groups) + j`` moves to ``j * groups + g``, the same
    permutation as the reference's view/permute on ``(B, C, T, H, W)``.

    Args:
      x: ``(..., C)`` with ``C`` divisible by ``groups``.
      groups: number of groups.

    Returns:
      ``(..., C)`` shuffled.
    """
    *lead, c = x.shape
    x = x.reshape(*lead, groups, c // groups)
    return jnp.swapaxes(x, -1, -2).reshape(*lead, c)


class ConvBN(nn.Module):
    """Conv3d (no bias) -> BatchNorm3d -> optional ReLU (PyTorch eps/momentum).

    Attributes:
      features: output channels.
      kernel: ``(kt, kh, kw)``; padding is ``k // 2`` per axis like the reference.
      strides: ``(st, sh, sw)``.
      groups: convolution groups (``features`` for depthwise).
      relu: apply ReLU after the batch norm.
      dtype: computation dtype.
    """

    features: int
    kernel: Sequence[int] = (1, 1, 1)
    strides: Sequence[int] = (1, 1, 1)
    groups: int = 1
    relu: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        x = layers.Conv3d(
            self.features,
            tuple(self.kernel),
            tuple(self.strides),
            padding=tuple(k // 2 for k in self.kernel),
            groups=self.groups,
            dtype=self.dtype,
            kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
            name="conv",
        )(x)
        # PyTorch's BatchNorm3d (eps 1e-5, momentum 0.1, unbiased running variance).
        x = layers.BatchNorm(dtype=self.dtype, name="bn")(x, train=train)
        return nn.relu(x) if self.relu else x


def _stem(x: jnp.ndarray, width: int, train: bool, dtype: Any) -> jnp.ndarray:
    """conv1 (3x3x3, stride 1,2,2) -> BN -> ReLU -> 3x3x3 max pool, stride 2, padding 1."""
    x = ConvBN(width, (3, 3, 3), (1, 2, 2), dtype=dtype, name="conv1")(x, train=train)
    # Padding with -inf, like PyTorch's MaxPool3d (the input is post-ReLU anyway).
    return layers.max_pool3d(x, (3, 3, 3), (2, 2, 2), (1, 1, 1))


def _head(
    x: jnp.ndarray, num_classes: int, dropout_rate: float, train: bool, dtype: Any
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Global average pool (float32) -> dropout -> linear; returns (logits, pooled)."""
    pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2, 3))
    y = nn.Dropout(dropout_rate, deterministic=not train)(pooled)
    logits = nn.Dense(num_classes, dtype=dtype, name="classifier")(y)
    return logits.astype(jnp.float32), pooled


class V1Bottleneck(nn.Module):
    """ShuffleNet v1 unit (reference ``Bottleneck``).

    Attributes:
      out_planes: unit output channels (shortcut channels included).
      stride: 1 (residual add) or 2 (concatenated average-pooled shortcut).
      groups: groups of the pointwise convolutions and of the shuffle.
      dtype: computation dtype.
    """

    out_planes: int
    stride: int
    groups: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        in_planes = x.shape[-1]
        mid = self.out_planes // 4
        out_planes = self.out_planes - in_planes if self.stride == 2 else self.out_planes
        # Reference quirk kept for checkpoint compatibility: `g = 1 if in_planes == 24`.
        g = 1 if in_planes == 24 else self.groups
        s = (self.stride,) * 3
        out = ConvBN(mid, groups=g, dtype=self.dtype, name="conv1")(x, train=train)
        out = channel_shuffle(out, self.groups)
        out = ConvBN(mid, (3, 3, 3), s, mid, relu=False, dtype=self.dtype, name="conv2")(
            out, train=train
        )
        out = ConvBN(out_planes, groups=self.groups, relu=False, dtype=self.dtype, name="conv3")(
            out, train=train
        )
        if self.stride == 2:
            # AvgPool3d((2, 3, 3), stride 2, padding (0, 1, 1)); PyTorch counts the zero
            # padding in the average by default, and so does flax.
            short = nn.avg_pool(
                x, (2, 3, 3), (2, 2, 2), padding=((0, 0), (1, 1), (1, 1)), count_include_pad=True
            )
            return nn.relu(jnp.concatenate([out, short.astype(out.dtype)], axis=-1))
        return nn.relu(out + x)


class ShuffleNetV1(nn.Module):
    """3D-ShuffleNet v1 (Kopuklu et al., ICCVW 2019, after Zhang et al., CVPR 2018).

    Attributes:
      num_classes: classifier outputs.
      channels: (stem, stage1, stage2, stage3) widths.
      repeats: units per stage.
      groups: pointwise-convolution groups.
      dropout_rate: dropout before the classifier (reference: 0.2).
      dtype: computation dtype; parameters stay float32.
    """

    num_classes: int
    channels: Sequence[int] = _v1_channels(1.0)
    repeats: Sequence[int] = (4, 8, 4)
    groups: int = 3
    dropout_rate: float = 0.2
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self, video: jnp.ndarray, *, train: bool = False
    ) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
        """Classifies a clip.

        Args:
          video: ``(B, T, H, W, 3)`` normalized frames, T a multiple of 16 (with 3
            stages; precisely: ``ceil(T / 2)`` divisible by 8).
          train: batch statistics (and their update) and dropout when True.

        Returns:
          ``(logits, features)``: float32 logits ``(B, num_classes)`` and the
          feature dict described in the module docstring.
        """
        # Each stride-2 unit concatenates a T-stride-2 conv (T -> ceil(T/2)) with an unpadded
        # T-kernel-2 pool (T -> floor(T/2)): they only agree for even T at every stage.
        t_stem = -(-video.shape[1] // 2)
        if t_stem % 2 ** len(self.repeats):
            raise ValueError(
                f"3D-ShuffleNet v1 needs ceil(T / 2) divisible by {2 ** len(self.repeats)} "
                f"(e.g. T = 16 or 32), got T = {video.shape[1]}"
            )
        features: dict[str, jnp.ndarray] = {}
        x = _stem(video.astype(self.dtype), self.channels[0], train, self.dtype)
        features["stem"] = x
        for i, (n, width) in enumerate(zip(self.repeats, self.channels[1:])):
            for j in range(n):
                x = V1Bottleneck(
                    width, 2 if j == 0 else 1, self.groups, self.dtype, name=f"layer{i + 1}_{j}"
                )(x, train=train)
            features[f"stage{i + 1}"] = x
        logits, features["pre_logits"] = _head(
            x, self.num_classes, self.dropout_rate, train, self.dtype
        )
        return logits, features


class V2Branch(nn.Module):
    """One branch of a v2 unit (reference ``banch1``/``banch2``).

    ``kind="pw_dw_pw"`` (``banch2``): 1x1x1 -> BN -> ReLU -> depthwise 3x3x3 ->
    BN -> 1x1x1 -> BN -> ReLU. ``kind="dw_pw"`` (``banch1``, stride 2 only):
    depthwise 3x3x3 -> BN -> 1x1x1 -> BN -> ReLU.

    Attributes:
      features: output channels.
      stride: stride of the depthwise convolution (all of T, H, W).
      kind: ``"pw_dw_pw"`` or ``"dw_pw"``.
      dtype: computation dtype.
    """

    features: int
    stride: int
    kind: str
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        s, dt = (self.stride,) * 3, self.dtype
        if self.kind == "dw_pw":
            c = x.shape[-1]
            x = ConvBN(c, (3, 3, 3), s, c, relu=False, dtype=dt, name="dw")(x, train=train)
            return ConvBN(self.features, dtype=dt, name="pw")(x, train=train)
        c = self.features
        x = ConvBN(c, dtype=dt, name="pw1")(x, train=train)
        x = ConvBN(c, (3, 3, 3), s, c, relu=False, dtype=dt, name="dw")(x, train=train)
        return ConvBN(c, dtype=dt, name="pw2")(x, train=train)


class V2Unit(nn.Module):
    """ShuffleNet v2 unit (reference ``InvertedResidual``).

    Attributes:
      out_planes: unit output channels (two halves of ``out_planes // 2``).
      stride: 1 (split, transform one half) or 2 (transform both copies).
      dtype: computation dtype.
    """

    out_planes: int
    stride: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        half = self.out_planes // 2
        branch2 = V2Branch(half, self.stride, "pw_dw_pw", self.dtype, name="branch2")
        if self.stride == 1:
            c = x.shape[-1] // 2
            out = jnp.concatenate([x[..., :c], branch2(x[..., c:], train=train)], axis=-1)
        else:
            branch1 = V2Branch(half, self.stride, "dw_pw", self.dtype, name="branch1")
            out = jnp.concatenate([branch1(x, train=train), branch2(x, train=train)], axis=-1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    """3D-ShuffleNet v2 (Kopuklu et al., ICCVW 2019, after Ma et al., ECCV 2018).

    Attributes:
      num_classes: classifier outputs.
      channels: (stem, stage1, stage2, stage3, conv_last) widths.
      repeats: units per stage.
      dropout_rate: dropout before the classifier (reference: 0.2).
      dtype: computation dtype; parameters stay float32.
    """

    num_classes: int
    channels: Sequence[int] = _V2_CHANNELS["1.0"]
    repeats: Sequence[int] = (4, 8, 4)
    dropout_rate: float = 0.2
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self, video: jnp.ndarray, *, train: bool = False
    ) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
        """Classifies a clip.

        Args:
          video: ``(B, T, H, W, 3)`` normalized frames.
          train: batch statistics (and their update) and dropout when True.

        Returns:
          ``(logits, features)``: float32 logits ``(B, num_classes)`` and the
          feature dict described in the module docstring.
        """
        features: dict[str, jnp.ndarray] = {}
        x = _stem(video.astype(self.dtype), self.channels[0], train, self.dtype)
        features["stem"] = x
        index = 0  # The reference numbers units across stages: features.0 .. features.15.
        for i, (n, width) in enumerate(zip(self.repeats, self.channels[1:4])):
            for j in range(n):
                x = V2Unit(width, 2 if j == 0 else 1, self.dtype, name=f"features_{index}")(
                    x, train=train
                )
                index += 1
            features[f"stage{i + 1}"] = x
        x = ConvBN(self.channels[4], dtype=self.dtype, name="conv_last")(x, train=train)
        features["conv_last"] = x
        logits, features["pre_logits"] = _head(
            x, self.num_classes, self.dropout_rate, train, self.dtype
        )
        return logits, features


def create(
    variant: str, *, num_classes: int, dtype: Any = jnp.float32, **overrides: Any
) -> ShuffleNetV1 | ShuffleNetV2:
    """Builds a 3D-ShuffleNet variant (see ``VARIANTS``); ``overrides`` replace hyperparameters."""
    if variant not in VARIANTS:
        raise ValueError(f"Unknown 3D-ShuffleNet variant {variant!r}; known: {list(VARIANTS)}")
    hparams = {**VARIANTS[variant], **overrides}
    version = hparams.pop("version")
    cls = ShuffleNetV1 if version == 1 else ShuffleNetV2
    return cls(num_classes=num_classes, dtype=dtype, **hparams)
