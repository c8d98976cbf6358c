"""SlowFast networks (Feichtenhofer, Fan, Malik, He, "SlowFast Networks for Video
Recognition", ICCV 2019), ResNet-50 pathways, as pytorchvideo's ``slowfast_r50`` and
PySlowFast's ``SLOWFAST_8x8_R50`` / ``SLOWFAST_4x16_R50``.

Two pathways see one clip: the *Fast* pathway all ``T`` frames with ``1/beta`` of
the channels (``beta_inv = 8``), the *Slow* pathway every ``alpha``-th frame with
all channels. After the stem and after stages 1-3 a lateral connection fuses Fast
into Slow: a ``(fusion_kernel, 1, 1)`` convolution with temporal stride ``alpha``
to ``2 x`` the Fast width, batch norm and ReLU, concatenated to the Slow features
(paper Sec. 3.3, "time-strided convolution"). Both pathways are bottleneck ResNets
(stages of 3, 4, 6, 3 blocks for R50); the Slow pathway's first two stages have no
temporal convolution (``conv_a`` 1x1x1, paper Table 1), the Fast pathway's all
have one (3x1x1). The head averages each pathway globally, concatenates them
(2048 + 256 channels), applies dropout 0.5 and a linear layer.

**One clip in.** Like every model of the zoo the module takes one clip
``(B, T, H, W, 3)``: it is the Fast input, and the Slow input is taken inside the
model at frames ``floor(linspace(0, T - 1, T // alpha))``, PySlowFast's and
pytorchvideo's ``PackPathway`` rule, so a converted checkpoint sees exactly the
frames it was trained on. So SlowFast works as student or teacher wherever the
pipeline's clips go (``data.num_frames`` must be a multiple of ``alpha``).

==============  =====  ==========  ===============  ===================================
variant         alpha  fusion k_t  published input  parameters (400 classes)
==============  =====  ==========  ===============  ===================================
``r50_8x8``     4      7           32 x 256 x 256   34,566,488 (= pytorchvideo slowfast_r50)
``r50_4x16``    8      7           32 x 256 x 256   34,566,488 (same weights' shapes)
``tiny``        4      3           any              CPU tests and built-in runs
==============  =====  ==========  ===============  ===================================

(8x8: the Slow pathway sees 8 frames at stride 8 of 64, the Fast 32 at stride 2;
4x16: 4 at stride 16 and 32 at stride 2.)

Features returned by ``apply`` (input ``(B, T, H, W, 3)``, R50 widths):

* ``slow_stem`` ``(B, T/alpha, H/4, W/4, 64)``, ``fast_stem`` ``(B, T, H/4, W/4, 8)``;
* ``slow_stage1..4`` (256, 512, 1024, 2048 channels; H, W halved from stage 2 on) and
  ``fast_stage1..4`` (32, 64, 128, 256), each pathway's stage output before fusion;
* ``stem`` and ``stage1..4``: the Slow pathway's (aliases, so ``last_stage`` and the
  default CKA layers read the Slow pathway; name ``fast_stage4`` to use the Fast one);
* ``pre_logits`` ``(B, 2304)``: the two pooled pathways, concatenated.

Parameter names follow the structure (``slow_stem_conv``, ``fuse0_conv``,
``slow_stage1_0/conv_a``, ``slow_stage1_0/branch1_conv``, ``proj``);
``vkd_jax.convert.slowfast`` maps them to both checkpoint layouts. Batch norm is
``layers.BatchNorm`` (PyTorch semantics).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from vkd_jax.models import layers

_R50 = dict(depths=(3, 4, 6, 3), width=64, beta_inv=8, fusion_ratio=2, fusion_kernel=7)
VARIANTS: dict[str, dict[str, Any]] = {
    "r50_8x8": dict(_R50, alpha=4),
    "r50_4x16": dict(_R50, alpha=8),
    # CPU tests and the built-in data (8-frame clips: Slow sees 2 frames).
    "tiny": dict(depths=(1, 1, 1, 1), width=8, beta_inv=4, fusion_ratio=2, fusion_kernel=3,
                 alpha=4),
}  # fmt: skip

# Full-size variant -> (T, H, W) of the published clips (the Fast pathway's input): the
# paper's FLOPs are per 256x256 test crop (65.7 and 36.1 GFLOPs, Table 2).
STANDARD_INPUT: dict[str, tuple[int, int, int]] = {
    "r50_8x8": (32, 256, 256),
    "r50_4x16": (32, 256, 256),
}

# pytorchvideo's init_net_weights: Kaiming normal (fan_out) convolutions, N(0, 0.01) head.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
_fc_init = nn.initializers.normal(0.01)


def slow_indices(num_frames: int, alpha: int) -> np.ndarray:
    """Frames of a ``num_frames`` clip the Slow pathway sees (PackPathway's rule)."""
    if num_frames % alpha:
        raise ValueError(
            f"SlowFast needs clips whose length is a multiple of alpha={alpha}; got "
            f"{num_frames} frames (set data.num_frames)"
        )
    # torch.linspace(0, T - 1, T // alpha).long(): truncation; the epsilon keeps exact
    # integers (e.g. the last frame) from rounding down in floating point.
    return np.floor(np.linspace(0, num_frames - 1, num_frames // alpha) + 1e-6).astype(np.int32)


def _norm(train: bool, dtype: Any, name: str):
    return functools.partial(layers.BatchNorm(dtype=dtype, name=name), train=train)


def _conv(features, kernel, stride, dtype, name):
    # layers.Conv3d: nn.Conv's variables, computed as 2D convs over frames on CPU.
    stride = (stride,) * 3 if isinstance(stride, int) else tuple(stride)
    pad = tuple(k // 2 for k in kernel)
    return layers.Conv3d(features, tuple(kernel), stride, pad, dtype=dtype,
                         kernel_init=_conv_init, name=name)  # fmt: skip


class Bottleneck(nn.Module):
    """ResNet bottleneck: (kt,1,1) conv -> (1,3,3) conv with the spatial stride -> 1x1x1
    conv, each with BN (ReLU after the first two), plus the (projected) shortcut."""

    inner: int
    out: int
    temporal_kernel: int
    stride: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        s, d = self.stride, self.dtype
        y = _conv(self.inner, (self.temporal_kernel, 1, 1), 1, d, "conv_a")(x)
        y = nn.relu(_norm(train, d, "norm_a")(y))
        y = _conv(self.inner, (1, 3, 3), (1, s, s), d, "conv_b")(y)
        y = nn.relu(_norm(train, d, "norm_b")(y))
        y = _conv(self.out, (1, 1, 1), 1, d, "conv_c")(y)
        y = _norm(train, d, "norm_c")(y)
        if x.shape[-1] != self.out or s != 1:
            x = _conv(self.out, (1, 1, 1), (1, s, s), d, "branch1_conv")(x)
            x = _norm(train, d, "branch1_norm")(x)
        return nn.relu(x + y)


class SlowFast(nn.Module):
    """SlowFast with bottleneck ResNet pathways (see the module docstring).

    Attributes:
      num_classes: classifier outputs.
      depths: blocks per stage (R50: 3, 4, 6, 3).
      width: the Slow stem's channels (64); stage ``i`` has inner width ``width * 2^i``
        and output ``4x`` that; the Fast pathway has ``1 / beta_inv`` of each.
      alpha: frame-rate ratio of the pathways (and the fusion's temporal stride).
      beta_inv: channel ratio Slow / Fast.
      fusion_ratio: the fusion convolution's output channels / the Fast width.
      fusion_kernel: temporal kernel of the fusion convolution.
      dropout_rate: dropout before ``proj`` (pytorchvideo and PySlowFast: 0.5).
      dtype: computation dtype; parameters stay float32.
    """

    num_classes: int
    depths: Sequence[int] = (3, 4, 6, 3)
    width: int = 64
    alpha: int = 4
    beta_inv: int = 8
    fusion_ratio: int = 2
    fusion_kernel: int = 7
    dropout_rate: float = 0.5
    dtype: Any = jnp.float32

    def _fuse(self, slow, fast, train: bool, index: int):
        d = self.dtype
        f = _conv(fast.shape[-1] * self.fusion_ratio, (self.fusion_kernel, 1, 1),
                  (self.alpha, 1, 1), d, f"fuse{index}_conv")(fast)  # fmt: skip
        f = nn.relu(_norm(train, d, f"fuse{index}_norm")(f))
        return jnp.concatenate([slow, f], axis=-1)

    @nn.compact
    def __call__(
        self, video: jnp.ndarray, *, train: bool = False
    ) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
        """Classifies a clip (the Fast pathway's frames).

        Args:
          video: ``(B, T, H, W, 3)`` normalized frames, ``T`` a multiple of ``alpha``.
          train: batch statistics (and their update) and dropout when True.

        Returns:
          ``(logits, features)``: float32 logits ``(B, num_classes)`` and the feature
          dict of the module docstring.
        """
        d = self.dtype
        x = video.astype(d)
        paths = {"slow": x[:, slow_indices(x.shape[1], self.alpha)], "fast": x}
        widths = {"slow": self.width, "fast": self.width // self.beta_inv}
        stem_kt = {"slow": 1, "fast": 5}
        features: dict[str, jnp.ndarray] = {}
        for p in paths:
            y = _conv(widths[p], (stem_kt[p], 7, 7), (1, 2, 2), d, f"{p}_stem_conv")(paths[p])
            y = nn.relu(_norm(train, d, f"{p}_stem_norm")(y))
            y = layers.max_pool3d(y, (1, 3, 3), (1, 2, 2), (0, 1, 1))
            paths[p] = features[f"{p}_stem"] = y
        paths["slow"] = self._fuse(paths["slow"], paths["fast"], train, 0)
        for i, depth in enumerate(self.depths):
            for p in paths:
                inner = widths[p] * 2**i
                # The Slow pathway has temporal kernels only from stage 3 on (res4, res5).
                kt = 3 if p == "fast" or i >= 2 else 1
                for j in range(depth):
                    stride = 2 if i > 0 and j == 0 else 1
                    name = f"{p}_stage{i + 1}_{j}"
                    block = Bottleneck(inner, 4 * inner, kt, stride, d, name=name)
                    paths[p] = block(paths[p], train=train)
                features[f"{p}_stage{i + 1}"] = paths[p]
            if i < len(self.depths) - 1:
                paths["slow"] = self._fuse(paths["slow"], paths["fast"], train, i + 1)
        features["stem"] = features["slow_stem"]
        for i in range(len(self.depths)):
            features[f"stage{i + 1}"] = features[f"slow_stage{i + 1}"]
        # Pool in float32: a bfloat16 sum over T*H*W positions loses precision.
        pooled = jnp.concatenate(
            [jnp.mean(paths[p].astype(jnp.float32), axis=(1, 2, 3)) for p in ("slow", "fast")],
            axis=-1,
        )
        features["pre_logits"] = pooled
        pooled = nn.Dropout(self.dropout_rate, deterministic=not train)(pooled)
        logits = nn.Dense(self.num_classes, dtype=d, kernel_init=_fc_init,
                          bias_init=nn.initializers.zeros, name="proj")(pooled)  # fmt: skip
        return logits.astype(jnp.float32), features


def create(
    variant: str, *, num_classes: int, dtype: Any = jnp.float32, **overrides: Any
) -> SlowFast:
    """Builds a SlowFast variant (see ``VARIANTS``); ``overrides`` replace its hyperparameters."""
    if variant not in VARIANTS:
        raise ValueError(f"Unknown SlowFast variant {variant!r}; known: {list(VARIANTS)}")
    return SlowFast(num_classes=num_classes, dtype=dtype, **{**VARIANTS[variant], **overrides})
