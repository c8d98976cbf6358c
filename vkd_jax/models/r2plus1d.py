"""R(2+1)D video ResNets (Tran et al., "A Closer Look at Spatiotemporal Convolutions
for Action Recognition", CVPR 2018).

Every 3x3x3 convolution of a video ResNet is factorized into a 1x3x3 spatial
convolution to ``M_i`` channels, batch norm, ReLU and a 3x1x1 temporal
convolution, with ``M_i = floor(t d^2 N_{i-1} N_i / (d^2 N_{i-1} + t N_i))``
(paper Sec. 3.5, Eq. 5) so that the factorized block has as many parameters as
the full 3D one. The architecture is exactly torchvision's ``r2plus1d_18``
(``torchvision.models.video.resnet``): the same R2Plus1dStem with its fixed 45
middle channels, the same BasicBlock in which *both* factorized convolutions use
the middle width computed from the block's input width, the same 1x1x1
projection shortcuts, global average pooling and a linear head. Variants:

==========  ==============  ==============  =====================================
variant     blocks/stage    widths          parameters (400 classes)
==========  ==============  ==============  =====================================
``18``      2, 2, 2, 2      64..512         31,505,325 (= torchvision r2plus1d_18)
``34``      3, 4, 6, 3      64..512         61,831,661
``tiny``    1, 1, 1, 1      8, 12, 16, 24   48,338 at 10 classes (CPU tests)
==========  ==============  ==============  =====================================

Published input: 16 x 112 x 112 (``STANDARD_INPUT``); global pooling lets any
size run. Strides: the stem halves H and W; stages 2-4 halve T, H and W.

Features returned by ``apply`` (input ``(B, T, H, W, 3)``, widths of ``18``):

* ``stem``: ``(B, T, H/2, W/2, 64)``
* ``stage1``: ``(B, T, H/2, W/2, 64)``
* ``stage2``: ``(B, T/2, H/4, W/4, 128)``
* ``stage3``: ``(B, T/4, H/8, W/8, 256)``
* ``stage4``: ``(B, T/8, H/16, W/16, 512)`` (sizes rounded up)
* ``pre_logits``: ``(B, 512)``, the globally pooled ``stage4`` feeding ``fc``.

Parameter names mirror torchvision's ``state_dict`` one to one (see
``vkd_jax.convert.r2plus1d``): ``stem/{conv_s,bn_s,conv_t,bn_t}`` are
``stem.{0,1,3,4}``; ``layerI_J/conv1/{conv_s,bn_s,conv_t}`` are
``layerI.J.conv1.0.{0,1,3}``, ``layerI_J/bn1`` is ``layerI.J.conv1.1`` (same for
``conv2``/``bn2``), ``layerI_J/downsample_{conv,bn}`` are
``layerI.J.downsample.{0,1}`` and ``fc`` is ``fc``.

Batch norm uses PyTorch's eps 1e-5 and momentum 0.1; as everywhere in flax, the
running variance is updated with the biased batch variance (PyTorch: unbiased),
a factor n / (n - 1) that only matters for tiny batches. ``dropout_rate`` (an
override; torchvision has none) adds dropout before ``fc``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from vkd_jax.models import layers

# Variant -> hyperparameters of :class:`R2Plus1D`.
VARIANTS: dict[str, dict[str, Any]] = {
    "18": dict(layers=(2, 2, 2, 2), widths=(64, 128, 256, 512), stem_midplanes=45),
    "34": dict(layers=(3, 4, 6, 3), widths=(64, 128, 256, 512), stem_midplanes=45),
    # 8x32x32 clips on a laptop CPU in tests and the embedded default.
    "tiny": dict(layers=(1, 1, 1, 1), widths=(8, 12, 16, 24), stem_midplanes=8),
}

# Full-size variant -> (T, H, W) of the published clips.
STANDARD_INPUT: dict[str, tuple[int, int, int]] = {"18": (16, 112, 112), "34": (16, 112, 112)}

# torchvision initializes convolutions with Kaiming normal (fan_out, ReLU gain) and the
# classifier with N(0, 0.01); we do the same so training from scratch behaves alike.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
_fc_init = nn.initializers.normal(0.01)


def midplanes(in_planes: int, out_planes: int) -> int:
    """Middle width ``M_i`` of a factorized 3x3x3 convolution (paper Eq. 5, t = d = 3)."""
    return (in_planes * out_planes * 3 * 3 * 3) // (in_planes * 3 * 3 + 3 * out_planes)


def _batch_norm(train: bool, dtype: Any, name: str):
    """PyTorch's BatchNorm3d (eps 1e-5, momentum 0.1, unbiased running variance), as in
    every family of the zoo, so a converted checkpoint fine-tunes as in PyTorch."""
    return functools.partial(layers.BatchNorm(dtype=dtype, name=name), train=train)


class Conv2Plus1D(nn.Module):
    """Spatial 1x3x3 conv -> BN -> ReLU -> temporal 3x1x1 conv (no trailing BN).

    Attributes:
      features: output channels ``N_i``.
      mid_features: middle channels ``M_i``.
      stride: applied to H, W by the spatial and to T by the temporal convolution.
      dtype: computation dtype.
    """

    features: int
    mid_features: int
    stride: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        conv = functools.partial(layers.Conv3d, dtype=self.dtype, kernel_init=_conv_init)
        s = self.stride
        x = conv(self.mid_features, (1, 3, 3), (1, s, s), (0, 1, 1), name="conv_s")(x)
        x = nn.relu(_batch_norm(train, self.dtype, "bn_s")(x))
        return conv(self.features, (3, 1, 1), (s, 1, 1), (1, 0, 0), name="conv_t")(x)


class BasicBlock(nn.Module):
    """Two factorized convolutions with a residual connection (torchvision BasicBlock).

    Attributes:
      planes: output channels.
      stride: stride of the first convolution and of the projection shortcut.
      dtype: computation dtype.
    """

    planes: int
    stride: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        in_planes = x.shape[-1]
        # torchvision computes M_i once from (in_planes, planes) and uses it for both
        # convolutions of the block; checkpoints depend on it.
        mid = midplanes(in_planes, self.planes)
        out = Conv2Plus1D(self.planes, mid, self.stride, self.dtype, name="conv1")(x, train=train)
        out = nn.relu(_batch_norm(train, self.dtype, "bn1")(out))
        out = Conv2Plus1D(self.planes, mid, 1, self.dtype, name="conv2")(out, train=train)
        out = _batch_norm(train, self.dtype, "bn2")(out)
        if self.stride != 1 or in_planes != self.planes:
            s = self.stride
            x = layers.Conv3d(
                self.planes,
                (1, 1, 1),
                (s, s, s),
                dtype=self.dtype,
                kernel_init=_conv_init,
                name="downsample_conv",
            )(x)
            x = _batch_norm(train, self.dtype, "downsample_bn")(x)
        return nn.relu(out + x)


class R2Plus1D(nn.Module):
    """R(2+1)D ResNet with BasicBlocks (Tran et al., CVPR 2018; torchvision layout).

    Attributes:
      num_classes: classifier outputs.
      layers: blocks per stage.
      widths: channels per stage; the stem outputs ``widths[0]``.
      stem_midplanes: middle channels of the (2+1)D stem (45 in torchvision).
      dropout_rate: dropout before ``fc`` (torchvision has none: 0).
      dtype: computation dtype; parameters stay float32.
    """

    num_classes: int
    layers: Sequence[int] = (2, 2, 2, 2)
    widths: Sequence[int] = (64, 128, 256, 512)
    stem_midplanes: int = 45
    dropout_rate: float = 0.0
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
        x = _Stem(self.widths[0], self.stem_midplanes, self.dtype, name="stem")(
            video.astype(self.dtype), train=train
        )
        features["stem"] = x
        for i, (num_blocks, planes) in enumerate(zip(self.layers, self.widths)):
            for j in range(num_blocks):
                stride = 2 if i > 0 and j == 0 else 1
                x = BasicBlock(planes, stride, self.dtype, name=f"layer{i + 1}_{j}")(x, train=train)
            features[f"stage{i + 1}"] = x
        # Pool in float32: a bfloat16 sum over T*H*W positions loses precision.
        pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2, 3))
        features["pre_logits"] = pooled
        pooled = nn.Dropout(self.dropout_rate, deterministic=not train)(pooled)
        logits = nn.Dense(
            self.num_classes,
            dtype=self.dtype,
            kernel_init=_fc_init,
            bias_init=nn.initializers.zeros,
            name="fc",
        )(pooled)
        return logits.astype(jnp.float32), features


class _Stem(nn.Module):
    """R2Plus1dStem: 1x7x7 conv (stride 1,2,2) -> BN -> ReLU -> 3x1x1 conv -> BN -> ReLU."""

    features: int
    mid_features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        conv = functools.partial(layers.Conv3d, dtype=self.dtype, kernel_init=_conv_init)
        x = conv(self.mid_features, (1, 7, 7), (1, 2, 2), (0, 3, 3), name="conv_s")(x)
        x = nn.relu(_batch_norm(train, self.dtype, "bn_s")(x))
        x = conv(self.features, (3, 1, 1), (1, 1, 1), (1, 0, 0), name="conv_t")(x)
        return nn.relu(_batch_norm(train, self.dtype, "bn_t")(x))


def create(
    variant: str, *, num_classes: int, dtype: Any = jnp.float32, **overrides: Any
) -> R2Plus1D:
    """Builds an R(2+1)D variant (see ``VARIANTS``); ``overrides`` replace its hyperparameters."""
    if variant not in VARIANTS:
        raise ValueError(f"Unknown R(2+1)D variant {variant!r}; known: {list(VARIANTS)}")
    hparams = {**VARIANTS[variant], **overrides}
    return R2Plus1D(num_classes=num_classes, dtype=dtype, **hparams)
