"""Shared building blocks of the 3D CNNs, with PyTorch's conventions.

Everything here is channels-last: video maps are ``(B, T, H, W, C)``.

* :func:`conv3d` -- a ``Conv3d`` with PyTorch's symmetric zero padding (``k // 2``
  per side, not XLA's ``"SAME"``, which pads asymmetrically under stride 2) and
  He (Kaiming) normal fan-out initialization (He et al., ICCV 2015), as
  pytorchvideo's ``init_net_weights`` and PySlowFast's ``c2_msra_fill``.
* :class:`BatchNorm` -- batch normalization (Ioffe & Szegedy, ICML 2015) with
  PyTorch's semantics: eps ``1e-5``, momentum ``0.1`` in PyTorch's convention
  (weight of the new batch statistic; flax's ``0.9``), unbiased batch variance
  in the running estimate. Statistics are computed in float32 whatever the
  compute dtype.
* :class:`SqueezeExcite` -- squeeze-and-excitation (Hu et al., CVPR 2018) in
  the form X3D uses (Feichtenhofer, CVPR 2020): global average over
  ``(T, H, W)``, 1x1x1 conv to ``round_width(C, ratio)`` channels, ReLU, 1x1x1
  conv back to ``C``, sigmoid gate.
* :func:`swish` -- ``x * sigmoid(x)`` (Ramachandran et al., 2017).
* :func:`round_width`, :func:`round_repeats` -- X3D's width/depth rounding
  (identical to pytorchvideo's ``pytorchvideo.layers.utils``).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Kaiming normal, fan-out, gain sqrt(2): PyTorch's ``kaiming_normal_(mode="fan_out")``.
he_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def swish(x: jax.Array) -> jax.Array:
    """Swish / SiLU, ``x * sigmoid(x)`` (Ramachandran, Zoph & Le, 2017)."""
    return jax.nn.silu(x)


def round_width(width: float, multiplier: float, min_width: int = 8, divisor: int = 8) -> int:
    """Scales a channel count and rounds it to a multiple of ``divisor`` (X3D, Sec. 3).

    Same arithmetic as pytorchvideo's ``round_width`` (``ceil=False``): round to
    the nearest multiple, at least ``min_width``, and never more than 10% below
    the exact product.

    Args:
      width: channels before scaling.
      multiplier: the expansion factor (a falsy multiplier returns ``width``).
      min_width: lower bound of the result.
      divisor: the result is a multiple of it.

    Returns:
      The rounded channel count.
    """
    if not multiplier:
        return int(width)
    width *= multiplier
    min_width = min_width or divisor
    out = max(min_width, int(width + divisor / 2) // divisor * divisor)
    if out < 0.9 * width:
        out += divisor
    return int(out)


def round_repeats(repeats: int, multiplier: float) -> int:
    """Scales a block count by the depth factor, rounding up (X3D, Sec. 3)."""
    if not multiplier:
        return repeats
    return int(math.ceil(multiplier * repeats))


def conv3d(
    features: int,
    kernel_size: Sequence[int],
    *,
    strides: Sequence[int] = (1, 1, 1),
    padding: Sequence[int] | None = None,
    groups: int = 1,
    use_bias: bool = False,
    dtype: Any = jnp.float32,
    kernel_init: Any = he_normal_fan_out,
    name: str | None = None,
) -> Conv3d:
    """A 3D convolution laid out like PyTorch's ``nn.Conv3d``.

    Args:
      features: output channels.
      kernel_size: ``(kt, kh, kw)``.
      strides: ``(st, sh, sw)``.
      padding: zeros added on *each* side per dimension; ``None`` means
        ``k // 2`` (PyTorch's usual "same" for odd kernels). Output size is
        ``floor((n + 2p - k) / s) + 1`` exactly as in PyTorch.
      groups: feature groups (``groups == in_channels`` is depthwise).
      use_bias: add a bias.
      dtype: computation dtype; parameters stay float32.
      kernel_init: kernel initializer (He normal fan-out by default).
      name: submodule name.

    Returns:
      A :class:`Conv3d` mapping ``(B, T, H, W, C_in)`` to ``(B, T', H', W', features)``
      with kernel ``(kt, kh, kw, C_in / groups, features)``.
    """
    kernel_size = tuple(kernel_size)
    if padding is None:
        padding = tuple(k // 2 for k in kernel_size)
    return Conv3d(
        features=features,
        kernel_size=kernel_size,
        strides=tuple(strides),
        padding=tuple(padding),
        groups=groups,
        use_bias=use_bias,
        dtype=dtype,
        kernel_init=kernel_init,
        name=name,
    )


class Conv3d(nn.Module):
    """``nn.Conv``'s variables (``kernel``, ``bias``) with a CPU-friendly computation.

    XLA's CPU backend is slow at what video CNNs do all the time: depthwise
    (channel-wise) 3D convolutions and 3D convolutions' gradients, strided ones
    above all (measured here: a 3x3x3 depthwise conv's forward+backward 6.7x slower
    than the same sum written as 27 shifted multiply-adds; a dense 1x3x3 conv's 4x
    slower than the same conv as a 2D one over frames, a strided one 21x). On CPU
    we therefore compute exactly the same function another way -- depthwise as
    shift-and-multiply, 1x1x1 as subsample-then-matmul, every other conv as 2D
    convolutions over frames summed over its temporal taps. GPUs and TPUs keep
    XLA's native convolution.
    """

    features: int
    kernel_size: tuple[int, int, int]
    strides: tuple[int, int, int] = (1, 1, 1)
    padding: tuple[int, int, int] = (0, 0, 0)
    groups: int = 1
    use_bias: bool = False
    dtype: Any = jnp.float32
    kernel_init: Any = he_normal_fan_out

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cin = x.shape[-1]
        if cin % self.groups or self.features % self.groups:
            raise ValueError(
                f"Channels {cin} -> {self.features} are not divisible by groups={self.groups}"
            )
        kernel = self.param(
            "kernel",
            self.kernel_init,
            (*self.kernel_size, cin // self.groups, self.features),
            jnp.float32,
        )
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        y = conv3d_apply(x, kernel, self.strides, self.padding, self.groups)
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
            y = y + bias.astype(self.dtype)
        return y


# How traces compute convolutions: "auto" (the CPU formulation on CPU, XLA's native
# convolution elsewhere), "native" (XLA's everywhere), "cpu" (the CPU formulation on
# every backend) or "portable" (for export).
_CONVOLUTIONS = ["auto"]
CONVOLUTION_MODES = ("auto", "native", "cpu", "portable")


def convolutions(mode: str):
    """Traces inside compute :class:`Conv3d` in ``mode`` (``CONVOLUTION_MODES``).

    ``"cpu"`` forces the CPU formulation (depthwise as shift-and-multiply, the rest as
    2D convolutions over frames) on any backend, ``"native"`` XLA's convolution on
    any: ``tools/benchmark.py --convolutions`` times both on an accelerator to keep
    the faster. A program is compiled in the mode it was traced in.
    """
    if mode not in CONVOLUTION_MODES:
        raise ValueError(f"Unknown convolution mode {mode!r}; one of {CONVOLUTION_MODES}")
    return _convolutions(mode)


@contextlib.contextmanager
def _convolutions(mode: str):
    previous = _CONVOLUTIONS[0]
    _CONVOLUTIONS[0] = mode
    try:
        yield
    finally:
        _CONVOLUTIONS[0] = previous


def native_convolutions():
    """Traces inside use XLA's native convolutions even on CPU.

    For counting multiply-accumulates from a trace (fvcore's convention counts
    convolutions, which the CPU formulation would turn into elementwise ops).
    """
    return convolutions("native")


def portable_convolutions():
    """Traces inside write depthwise convolutions as shift-and-multiply, 1x1x1 ones as
    matrix products, and every other convolution natively, strides included.

    For export (vkd_jax.export): LiteRT has no grouped 3D convolution (its converter
    stops at ``tf.Conv3D`` with feature groups), but it has every op of the
    shift-and-multiply form; every other convolution stays one 3D convolution.
    """
    return convolutions("portable")


def conv3d_apply(
    x: jax.Array,
    kernel: jax.Array,
    strides: Sequence[int],
    padding: Sequence[int],
    groups: int,
    *,
    cpu_friendly: bool | None = None,
) -> jax.Array:
    """PyTorch-style 3D convolution, channels-last; see :class:`Conv3d` for the CPU path.

    Args:
      x: ``(B, T, H, W, C_in)``.
      kernel: ``(kt, kh, kw, C_in / groups, C_out)``.
      strides: ``(st, sh, sw)``.
      padding: zeros on each side per dimension.
      groups: feature groups.
      cpu_friendly: force (True) or forbid (False) the CPU formulation; None
        picks it when the default backend is the CPU.
    """
    strides, padding = tuple(strides), tuple(padding)
    k = kernel.shape[:3]
    cin, cout = x.shape[-1], kernel.shape[-1]
    mode = _CONVOLUTIONS[0]
    portable = cpu_friendly is None and mode == "portable"
    if cpu_friendly is None:
        on_cpu = jax.default_backend() == "cpu"
        cpu_friendly = portable or mode == "cpu" or (on_cpu and mode == "auto")
    # Portable keeps only the depthwise rewrite (LiteRT's batch matmul stops at rank 4;
    # its 1x1x1 and other CONV_3Ds do the job).
    cpu_path = cpu_friendly and not portable
    if cpu_path and k == (1, 1, 1) and groups == 1 and padding == (0, 0, 0):
        x = x[:, :: strides[0], :: strides[1], :: strides[2]]
        return jnp.einsum("bthwc,cd->bthwd", x, kernel.reshape(cin, cout))
    if cpu_friendly and groups == cin == cout:
        xp = jnp.pad(x, ((0, 0), *((p, p) for p in padding), (0, 0)))
        out = [(n + 2 * p - kk) // s + 1 for n, p, kk, s in zip(x.shape[1:4], padding, k, strides)]
        y = None
        for a in range(k[0]):
            for b in range(k[1]):
                for c in range(k[2]):
                    tap = (
                        xp[
                            :,
                            a : a + (out[0] - 1) * strides[0] + 1 : strides[0],
                            b : b + (out[1] - 1) * strides[1] + 1 : strides[1],
                            c : c + (out[2] - 1) * strides[2] + 1 : strides[2],
                        ]
                        * kernel[a, b, c, 0]
                    )
                    y = tap if y is None else y + tap
        return y
    if cpu_path:
        return _conv3d_as_2d(x, kernel, strides, padding, groups)
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=strides,
        padding=[(p, p) for p in padding],
        dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
        feature_group_count=groups,
    )


def _conv3d_as_2d(
    x: jax.Array,
    kernel: jax.Array,
    strides: tuple[int, ...],
    padding: tuple[int, ...],
    groups: int,
) -> jax.Array:
    """A 3D convolution as 2D ones: the sum over the ``kt`` temporal taps of a 2D
    convolution of the (strided) frames at that tap, time folded into the batch.

    XLA's CPU convolutions are much faster in 2D than in 3D, backward above all
    (measured here, forward+backward at batch 32, 8 frames: a 1x3x3 conv 4x faster,
    a strided one 21x, a 3x3x3 one 3-27x), and strides stay native. A temporal-only
    ``kt x 1 x 1`` conv is one 2D convolution over (T, H*W).
    """
    b, t, h, w, c = x.shape
    kt, kh, kw = kernel.shape[:3]
    (st, sh, sw), (pt, ph, pw) = strides, padding
    conv2d = lambda v, k, s, p: jax.lax.conv_general_dilated(
        v, k, s, p, dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups
    )
    if (kh, kw, sh, sw, ph, pw) == (1, 1, 1, 1, 0, 0):
        y = conv2d(x.reshape(b, t, h * w, c), kernel[:, 0], (st, 1), [(pt, pt), (0, 0)])
        return y.reshape(b, y.shape[1], h, w, y.shape[-1])
    xp = jnp.pad(x, ((0, 0), (pt, pt), (0, 0), (0, 0), (0, 0))) if pt else x
    t_out = (t + 2 * pt - kt) // st + 1
    y = None
    for a in range(kt):
        frames = xp[:, a : a + (t_out - 1) * st + 1 : st].reshape(b * t_out, h, w, c)
        tap = conv2d(frames, kernel[a], (sh, sw), [(ph, ph), (pw, pw)])
        y = tap if y is None else y + tap
    return y.reshape(b, t_out, *y.shape[1:])


def max_pool3d(
    x: jax.Array, window: Sequence[int], strides: Sequence[int], padding: Sequence[int]
) -> jax.Array:
    """``nn.max_pool`` over (T, H, W) with symmetric -inf padding, as PyTorch's MaxPool3d.

    Under :func:`portable_convolutions` the max of shifted slices: LiteRT has no 3D max
    pool (its converter keeps a StableHLO ``reduce_window`` that tf2onnx cannot read).
    """
    window, strides, padding = tuple(window), tuple(strides), tuple(padding)
    if _CONVOLUTIONS[0] != "portable":
        return nn.max_pool(x, window, strides, padding=[(p, p) for p in padding])
    xp = jnp.pad(x, ((0, 0), *((p, p) for p in padding), (0, 0)), constant_values=-jnp.inf)
    out = [(n + 2 * p - w) // s + 1 for n, p, w, s in zip(x.shape[1:4], padding, window, strides)]
    y = None
    for a in range(window[0]):
        for b in range(window[1]):
            for c in range(window[2]):
                tap = xp[
                    :,
                    a : a + (out[0] - 1) * strides[0] + 1 : strides[0],
                    b : b + (out[1] - 1) * strides[1] + 1 : strides[1],
                    c : c + (out[2] - 1) * strides[2] + 1 : strides[2],
                ]
                y = tap if y is None else jnp.maximum(y, tap)
    return y


def gelu(x: jax.Array) -> jax.Array:
    """Exact (erf) GELU, PyTorch's ``nn.GELU()``.

    Under :func:`portable_convolutions` erf is Abramowitz & Stegun's 7.1.26 (absolute
    error below 1.5e-7, float32's resolution): the LiteRT lowering of ``lax.erf``
    selects between two branches, and tf2onnx turns that select into arithmetic that
    gives NaN where the unused branch overflows.
    """
    if _CONVOLUTIONS[0] != "portable":
        return nn.gelu(x, approximate=False)
    z = x * (1.0 / math.sqrt(2.0))
    a = jnp.abs(z)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = 1.061405429
    for c in (-1.453152027, 1.421413741, -0.284496736, 0.254829592):
        poly = c + t * poly
    poly = t * poly
    erf = jnp.sign(z) * (1.0 - poly * jnp.exp(-a * a))
    return 0.5 * x * (1.0 + erf)


class BatchNorm(nn.Module):
    """Batch normalization over all axes but the last, as PyTorch's ``BatchNorm3d``.

    Ioffe & Szegedy, "Batch Normalization", ICML 2015. With ``train=True`` the
    batch's own statistics normalize ``x`` and the running estimates move as
    ``running = (1 - momentum) * running + momentum * batch`` with the batch
    variance made unbiased (``n / (n - 1)``), as PyTorch does; with
    ``train=False`` the running estimates normalize and nothing changes. Under
    ``jax.jit`` over a sharded global batch the statistics are global; inside
    ``shard_map``/``pmap`` name the mapped axis in ``axis_name``.

    Variables: ``params.scale``/``params.bias`` (PyTorch ``weight``/``bias``) and
    ``batch_stats.mean``/``batch_stats.var`` (``running_mean``/``running_var``).

    Attributes:
      momentum: PyTorch convention (flax's ``nn.BatchNorm`` momentum is ``1 - this``).
      epsilon: added to the variance.
      dtype: output dtype (statistics are float32).
      scale_init: initializer of ``scale`` (zeros for a residual block's last BN).
      axis_name: mapped axis to average statistics over, if any.
    """

    momentum: float = 0.1
    epsilon: float = 1e-5
    dtype: Any = jnp.float32
    scale_init: Any = nn.initializers.ones
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Normalizes ``x`` of shape ``(..., C)``; returns the same shape in ``dtype``."""
        channels = x.shape[-1]
        scale = self.param("scale", self.scale_init, (channels,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (channels,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (channels,), jnp.float32)

        x32 = x.astype(jnp.float32)
        if train:
            axes = tuple(range(x.ndim - 1))
            count = math.prod(x.shape[:-1])
            mean = jnp.mean(x32, axes)
            if self.axis_name is not None:
                mean = jax.lax.pmean(mean, self.axis_name)
            # Two-pass variance: E[(x - mean)^2] does not cancel like E[x^2] - mean^2.
            var = jnp.mean(jnp.square(x32 - mean), axes)
            if self.axis_name is not None:
                var = jax.lax.pmean(var, self.axis_name)
                count = count * jax.lax.psum(1, self.axis_name)
            if not self.is_initializing():
                unbiased = var * (count / max(count - 1, 1))
                m = self.momentum
                ra_mean.value = (1.0 - m) * ra_mean.value + m * mean
                ra_var.value = (1.0 - m) * ra_var.value + m * unbiased
        else:
            mean, var = ra_mean.value, ra_var.value
        y = (x32 - mean) * (scale * jax.lax.rsqrt(var + self.epsilon)) + bias
        return y.astype(self.dtype)


class StochasticDepth(nn.Module):
    """Drops the whole residual branch per example (Huang et al., ECCV 2016).

    Matches torchvision's ``StochasticDepth(p, "row")``: survivors are scaled by
    ``1 / (1 - p)``. Uses the ``dropout`` rng. Shared by the transformers (ViT, MViT).
    """

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = jax.random.bernoulli(
            self.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1)
        )
        return jnp.where(mask, x / keep, 0).astype(x.dtype)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation gate of X3D's bottleneck (Hu et al., CVPR 2018).

    ``x * sigmoid(fc2(relu(fc1(mean_{T,H,W}(x)))))`` with ``fc1``/``fc2`` 1x1x1
    convolutions with bias and ``round_width(C, ratio)`` hidden channels
    (fvcore's ``SqueezeExcitation(is_3d=True)`` / PySlowFast's ``SE``).

    Attributes:
      ratio: hidden width as a fraction of the input width (X3D: 0.0625).
      dtype: computation dtype.
    """

    ratio: float = 0.0625
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Gates ``x`` of shape ``(B, T, H, W, C)``; returns the same shape."""
        channels = x.shape[-1]
        hidden = round_width(channels, self.ratio)
        s = jnp.mean(x.astype(jnp.float32), axis=(1, 2, 3), keepdims=True).astype(self.dtype)
        s = conv3d(hidden, (1, 1, 1), use_bias=True, dtype=self.dtype, name="fc1")(s)
        s = nn.relu(s)
        s = conv3d(channels, (1, 1, 1), use_bias=True, dtype=self.dtype, name="fc2")(s)
        return x * nn.sigmoid(s)


# ----------------------------------------------------------------- pooling


@functools.lru_cache(maxsize=256)
def adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
    """``(out, in)`` averaging matrix of 1-D adaptive average pooling.

    Bin ``i`` covers ``[floor(i * in / out), ceil((i + 1) * in / out))``, as in
    PyTorch's ``AdaptiveAvgPool``: bins overlap when ``in`` is not a multiple of
    ``out``, and each input element is repeated when ``in < out``.
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be positive, got in={in_size}, out={out_size}")
    m = np.zeros((out_size, in_size), np.float32)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -((-(i + 1) * in_size) // out_size)  # ceil division
        m[i, start:end] = 1.0 / (end - start)
    m.setflags(write=False)
    return m


def adaptive_avg_pool3d(x: jax.Array, grid: Sequence[int]) -> jax.Array:
    """Adaptive average pooling of ``(B, T, H, W, C)`` to ``(B, T', H', W', C)``.

    Separable: one small averaging matrix per axis (:func:`adaptive_pool_matrix`),
    so non-divisible sizes and inputs smaller than the grid need no special case.

    Args:
      x: ``(B, T, H, W, C)`` feature map.
      grid: ``(T', H', W')`` output grid.

    Returns:
      ``(B, T', H', W', C)`` in float32.
    """
    if x.ndim != 5:
        raise ValueError(f"expected a (B, T, H, W, C) map, got shape {x.shape}")
    t, h, w = (int(g) for g in grid)
    x = x.astype(jnp.float32)
    mt = jnp.asarray(adaptive_pool_matrix(x.shape[1], t))
    mh = jnp.asarray(adaptive_pool_matrix(x.shape[2], h))
    mw = jnp.asarray(adaptive_pool_matrix(x.shape[3], w))
    x = jnp.einsum("pt,bthwc->bphwc", mt, x)
    x = jnp.einsum("qh,bphwc->bpqwc", mh, x)
    return jnp.einsum("rw,bpqwc->bpqrc", mw, x)
