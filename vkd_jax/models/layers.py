"""Shared building blocks of the 3D CNNs, with PyTorch's conventions.

Everything here is channels-last: video maps are ``(B, T, H, W, C)``.

* :func:`conv3d` / :class:`Conv3d` -- PyTorch's ``Conv3d`` (defined in
  :mod:`vkd_jax.models.convolutions` with the forms it is computed in, re-exported
  here with :func:`convolutions`, :func:`native_convolutions`,
  :func:`portable_convolutions` and :func:`conv3d_apply`).
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

import functools
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vkd_jax.models import convolutions as convolutions_lib

# The convolutions live in vkd_jax.models.convolutions; their public names stay here too
# (callers and checkpoints predate the move).
CONVOLUTION_MODES = convolutions_lib.CONVOLUTION_MODES
Conv3d = convolutions_lib.Conv3d
conv3d = convolutions_lib.conv3d
conv3d_apply = convolutions_lib.conv3d_apply
convolutions = convolutions_lib.convolutions
he_normal_fan_out = convolutions_lib.he_normal_fan_out
native_convolutions = convolutions_lib.native_convolutions
portable_convolutions = convolutions_lib.portable_convolutions


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


def max_pool3d(
    x: jax.Array, window: Sequence[int], strides: Sequence[int], padding: Sequence[int]
) -> jax.Array:
    """``nn.max_pool`` over (T, H, W) with symmetric -inf padding, as PyTorch's MaxPool3d.

    Under :func:`portable_convolutions` the max of shifted slices: LiteRT has no 3D max
    pool (its converter keeps a StableHLO ``reduce_window`` that tf2onnx cannot read).
    """
    window, strides, padding = tuple(window), tuple(strides), tuple(padding)
    if convolutions_lib.mode() != "portable":
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
    if convolutions_lib.mode() != "portable":
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
        y = None
        if train and self.axis_name is None:
            # The batch's statistics with a hand-written backward (batch_norm_train).
            y, mean, var = batch_norm_train(x, scale, bias, self.epsilon, jnp.dtype(self.dtype))
        elif train:
            mean, var = _batch_statistics(x32, self.axis_name)
        else:
            mean, var = ra_mean.value, ra_var.value
        if train and not self.is_initializing():
            count = math.prod(x.shape[:-1])
            if self.axis_name is not None:
                count = count * jax.lax.psum(1, self.axis_name)
            unbiased = var * (count / max(count - 1, 1))
            m = self.momentum
            ra_mean.value = (1.0 - m) * ra_mean.value + m * mean
            ra_var.value = (1.0 - m) * ra_var.value + m * unbiased
        if y is None:
            y = _normalize(x32, mean, var, scale, bias, self.epsilon).astype(self.dtype)
        return y


def _batch_statistics(x32, axis_name=None):
    """Per-channel mean and biased variance over all axes but the last (and over the
    mapped ``axis_name``, if any)."""
    axes = tuple(range(x32.ndim - 1))
    mean = jnp.mean(x32, axes)
    if axis_name is not None:
        mean = jax.lax.pmean(mean, axis_name)
    # Two-pass variance: E[(x - mean)^2] does not cancel like E[x^2] - mean^2.
    var = jnp.mean(jnp.square(x32 - mean), axes)
    if axis_name is not None:
        var = jax.lax.pmean(var, axis_name)
    return mean, var


def _normalize(x32, mean, var, scale, bias, epsilon):
    return (x32 - mean) * (scale * jax.lax.rsqrt(var + epsilon)) + bias


def _batch_norm_forward(x, scale, bias, epsilon, dtype):
    mean, var = _batch_statistics(x.astype(jnp.float32))
    y = _normalize(x.astype(jnp.float32), mean, var, scale, bias, epsilon)
    return (y.astype(dtype), mean, var), (x, scale, mean, var)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def batch_norm_train(x, scale, bias, epsilon: float, dtype: Any):
    """Train-mode batch normalization over all axes but the last, with its batch
    statistics: ``(y, mean, var)``, ``var`` biased, everything float32 but ``y``.

    The forward is :class:`BatchNorm`'s expressions. The backward is written by hand
    (Ioffe & Szegedy's gradient): with ``xhat = (x - mean) / sigma`` and ``N`` values per
    channel, ``dbias = sum(dy)``, ``dscale = sum(dy * xhat)`` and ``dx = scale / sigma *
    (dy - dbias / N - xhat * dscale / N)``: one pass of two reductions and one
    elementwise pass, where autodiff of the two-pass variance makes several (on the CPU
    the BatchNorms were about a fifth of X3D's gradient; docs/benchmarks.md). The
    statistics' own cotangents (zero when they only feed the running estimates) are
    added too, so the rule is the function's whole derivative.
    """
    return _batch_norm_forward(x, scale, bias, epsilon, dtype)[0]


def _batch_norm_bwd(epsilon, dtype, residuals, cotangents):
    x, scale, mean, var = residuals
    dy, dmean, dvar = cotangents
    axes = tuple(range(x.ndim - 1))
    n = math.prod(x.shape[:-1])
    inv = jax.lax.rsqrt(var + epsilon)
    centred = x.astype(jnp.float32) - mean
    xhat = centred * inv
    dy = dy.astype(jnp.float32)
    dbias = jnp.sum(dy, axes)
    dscale = jnp.sum(dy * xhat, axes)
    dx = (scale * inv) * (dy - dbias / n - xhat * (dscale / n))
    dx = dx + dmean / n + centred * (2.0 * dvar / n)
    return dx.astype(x.dtype), dscale, dbias


batch_norm_train.defvjp(_batch_norm_forward, _batch_norm_bwd)


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
