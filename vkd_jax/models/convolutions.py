"""3D convolutions laid out like PyTorch's, and the forms they are computed in.

Channels-last: video maps are ``(B, T, H, W, C)``, kernels ``(kt, kh, kw, C_in / groups,
C_out)`` (``nn.Conv``'s layout and variable names, so checkpoints do not depend on the
form).

* :func:`conv3d` / :class:`Conv3d` -- PyTorch's ``nn.Conv3d``: symmetric zero padding
  (``k // 2`` per side by default, not XLA's ``"SAME"``, which pads asymmetrically under
  stride 2) and He (Kaiming) normal fan-out initialization (He et al., "Delving Deep
  into Rectifiers", ICCV 2015), as pytorchvideo's ``init_net_weights`` and PySlowFast's
  ``c2_msra_fill``.
* :func:`conv3d_apply` -- the function itself, computed in one of several forms.

Why several forms: XLA's CPU backend is slow at what video CNNs do all the time,
depthwise (channel-wise) 3D convolutions and the gradients of 3D convolutions, strided
ones above all (docs/benchmarks.md has the figures). On CPU we therefore compute exactly
the same function another way:

* depthwise as a sum of shifted multiplies (:func:`depthwise_conv3d`), with a
  hand-written backward: autodiff would transpose each of its ``kt * kh * kw`` slices
  into a pad of the whole cotangent, one per tap; the input gradient here is one more
  shift-and-multiply of the cotangent, padded once, with the flipped kernel, split by
  stride phase so a strided conv does no work on the zeros a dilated cotangent would
  hold, and the kernel gradient one variadic reduction over every tap per output
  frame (one frame's data stays in cache for all of them);
* a kernel that tiles its input (kernel = stride, no padding: patch embeddings) as a
  reshape into patches and one matrix product;
* ``1x1x1`` as subsample-then-matmul (:func:`pointwise_conv3d`), with a hand-written
  backward whose kernel gradient reads the cotangent as it lies (autodiff's made XLA
  copy it channel-major);
* every other convolution as 2D convolutions over frames summed over its temporal taps
  (:func:`conv3d_as_2d`), whose backward is XLA's 2D one.

GPUs and TPUs keep XLA's native convolution. Which form a trace uses is its
*convolution mode* (:func:`convolutions`), held in a context variable: scoped to a
``with`` block and to the thread (or asyncio task) that entered it.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import itertools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# Kaiming normal, fan-out, gain sqrt(2): PyTorch's ``kaiming_normal_(mode="fan_out")``.
he_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

# How traces compute convolutions: "auto" (the CPU forms on CPU, XLA's native
# convolution elsewhere), "native" (XLA's everywhere), "cpu" (the CPU forms on every
# backend) or "portable" (for export).
CONVOLUTION_MODES = ("auto", "native", "cpu", "portable")
_MODE: contextvars.ContextVar[str] = contextvars.ContextVar("vkd_jax_convolutions", default="auto")


def mode() -> str:
    """The convolution mode traces use here and now (one of ``CONVOLUTION_MODES``)."""
    return _MODE.get()


def cpu_forms() -> bool:
    """Whether traces here and now take the CPU forms: mode ``"cpu"``, or ``"auto"`` on a
    CPU backend (not ``"native"``, nor ``"portable"``, whose graphs are for export).
    Other CPU-only rewrites (MViT's attention logits) follow the same switch."""
    current = _MODE.get()
    return current == "cpu" or (current == "auto" and jax.default_backend() == "cpu")


def convolutions(mode: str) -> contextlib.AbstractContextManager[None]:
    """Traces inside compute :class:`Conv3d` in ``mode`` (``CONVOLUTION_MODES``).

    ``"cpu"`` forces the CPU forms (depthwise as shift-and-multiply, the rest as 2D
    convolutions over frames) on any backend, ``"native"`` XLA's convolution on any:
    ``tools/benchmark.py --convolutions`` times both on an accelerator to keep the
    faster. A program is compiled in the mode it was traced in. The mode is a context
    variable: other threads keep their own.
    """
    if mode not in CONVOLUTION_MODES:
        raise ValueError(f"Unknown convolution mode {mode!r}; one of {CONVOLUTION_MODES}")
    return _scoped(mode)


@contextlib.contextmanager
def _scoped(mode: str):
    token = _MODE.set(mode)
    try:
        yield
    finally:
        _MODE.reset(token)


def native_convolutions():
    """Traces inside use XLA's native convolutions even on CPU.

    For counting multiply-accumulates from a trace (fvcore's convention counts
    convolutions, which the CPU forms would turn into elementwise ops).
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
    """``nn.Conv``'s variables (``kernel``, ``bias``), computed by :func:`conv3d_apply`
    in the form the convolution mode picks (see the module docstring)."""

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


def conv3d_apply(
    x: jax.Array,
    kernel: jax.Array,
    strides: Sequence[int],
    padding: Sequence[int],
    groups: int,
    *,
    cpu_friendly: bool | None = None,
) -> jax.Array:
    """PyTorch-style 3D convolution, channels-last, in the form the mode picks.

    Args:
      x: ``(B, T, H, W, C_in)``.
      kernel: ``(kt, kh, kw, C_in / groups, C_out)``.
      strides: ``(st, sh, sw)``.
      padding: zeros on each side per dimension.
      groups: feature groups.
      cpu_friendly: force (True) or forbid (False) the CPU forms; None picks them
        when the default backend is the CPU (or the mode says so).

    Returns:
      ``(B, T', H', W', C_out)``, ``T' = (T + 2 pt - kt) // st + 1`` and so on.
    """
    strides, padding = tuple(strides), tuple(padding)
    k = tuple(kernel.shape[:3])
    cin, cout = x.shape[-1], kernel.shape[-1]
    portable = cpu_friendly is None and _MODE.get() == "portable"
    if cpu_friendly is None:
        cpu_friendly = portable or cpu_forms()
    # Portable keeps only the depthwise rewrite (LiteRT's batch matmul stops at rank 4;
    # its 1x1x1 and other CONV_3Ds do the job).
    cpu_path = cpu_friendly and not portable
    if cpu_path and k == (1, 1, 1) and groups == 1 and padding == (0, 0, 0):
        x = x[:, :: strides[0], :: strides[1], :: strides[2]]
        return pointwise_conv3d(x, kernel.reshape(cin, cout))
    if cpu_friendly and groups == cin == cout:
        if portable:  # Forward only (export): no custom rule in the exported graph.
            return _depthwise_forward(x, kernel, strides, padding)
        return depthwise_conv3d(x, kernel, strides, padding)
    if cpu_path and groups == 1 and k == strides and padding == (0, 0, 0):
        return patch_conv3d(x, kernel)
    if cpu_path:
        return conv3d_as_2d(x, kernel, strides, padding, groups)
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=strides,
        padding=[(p, p) for p in padding],
        dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
        feature_group_count=groups,
    )


# ----------------------------------------------------------------- depthwise


def _out_sizes(shape, k, strides, padding) -> list[int]:
    return [(n + 2 * p - kk) // s + 1 for n, p, kk, s in zip(shape, padding, k, strides)]


def _tap(xp: jax.Array, start: Sequence[int], out: Sequence[int], strides: Sequence[int]):
    """``xp[:, a + s*i, b + s*j, c + s*l]`` over the output grid ``out``."""
    return xp[
        :,
        start[0] : start[0] + (out[0] - 1) * strides[0] + 1 : strides[0],
        start[1] : start[1] + (out[1] - 1) * strides[1] + 1 : strides[1],
        start[2] : start[2] + (out[2] - 1) * strides[2] + 1 : strides[2],
    ]


def _depthwise_forward(x, kernel, strides, padding):
    """Depthwise conv as ``sum_k shift_k(pad(x)) * kernel[k]``: one pad, one slice per tap."""
    k = kernel.shape[:3]
    xp = jnp.pad(x, ((0, 0), *((p, p) for p in padding), (0, 0)))
    out = _out_sizes(x.shape[1:4], k, strides, padding)
    y = None
    for tap in itertools.product(*map(range, k)):
        term = _tap(xp, tap, out, strides) * kernel[(*tap, 0)]
        y = term if y is None else y + term
    return y


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def depthwise_conv3d(
    x: jax.Array, kernel: jax.Array, strides: tuple[int, ...], padding: tuple[int, ...]
) -> jax.Array:
    """Depthwise (``groups == C_in == C_out``) 3D convolution as shift-and-multiply.

    Args:
      x: ``(B, T, H, W, C)``.
      kernel: ``(kt, kh, kw, 1, C)``.
      strides: ``(st, sh, sw)``, a tuple.
      padding: zeros on each side per dimension, a tuple.

    Returns:
      ``(B, T', H', W', C)``; differentiable in ``x`` and ``kernel`` by a hand-written
      rule (the module docstring says why).
    """
    return _depthwise_forward(x, kernel, strides, padding)


def _depthwise_fwd(x, kernel, strides, padding):
    # Only x is kept: the padded copy is rebuilt in the backward (a pad fuses into the
    # slices that read it; saving it would hold a second copy of every input).
    return _depthwise_forward(x, kernel, strides, padding), (x, kernel)


def _phase_taps(n: int, o: int, k: int, s: int, p: int):
    """Stride phases of one axis of the input gradient.

    Input position ``i = q * s + r`` receives ``g[o'] * w[t]`` for every tap ``t`` with
    ``o' * s + t = i + p``, that is ``o' = q + d`` with ``d = (r + p - t) / s`` an
    integer. Returns ``q`` (positions per phase), the zeros to pad ``g`` with on each
    side so every ``g[q + d]`` is in range, and per phase ``r`` its ``(t, d)`` pairs.
    """
    q = -(-n // s)
    phases = [[(t, (r + p - t) // s) for t in range(k) if (r + p - t) % s == 0] for r in range(s)]
    ds = [d for taps in phases for _, d in taps]
    lo = max([0, *(-d for d in ds)])
    hi = max([0, *(q - 1 + d - (o - 1) for d in ds)])
    return q, (lo, hi), phases


def _depthwise_input_grad(g, kernel, x_shape, strides, padding):
    """``dL/dx`` of the depthwise conv: per stride phase, a stride-1 shift-and-multiply of
    the cotangent (padded once) with that phase's taps; the phases are then interleaved.

    At stride 1 this is the correlation of the padded cotangent with the flipped
    kernel. Under stride s each input position is reached only by the taps of its phase
    (``i + p - t`` a multiple of s), so the work is that of the forward, not the
    ``s^3`` times more that correlating a zero-dilated cotangent would cost.
    """
    axes = [
        _phase_taps(n, o, kk, s, p)
        for n, o, kk, s, p in zip(x_shape[1:4], g.shape[1:4], kernel.shape[:3], strides, padding)
    ]
    q = [a[0] for a in axes]
    gp = jnp.pad(g, ((0, 0), *(a[1] for a in axes), (0, 0)))
    lo = [a[1][0] for a in axes]

    def phase(rt, rh, rw):
        acc = None
        for (kt, dt), (kh, dh), (kw, dw) in itertools.product(
            axes[0][2][rt], axes[1][2][rh], axes[2][2][rw]
        ):
            start = (lo[0] + dt, lo[1] + dh, lo[2] + dw)
            term = _tap(gp, start, q, (1, 1, 1)) * kernel[kt, kh, kw, 0]
            acc = term if acc is None else acc + term
        if acc is None:  # A stride larger than the kernel: this phase gets nothing.
            acc = jnp.zeros((g.shape[0], *q, g.shape[-1]), g.dtype)
        return acc

    st, sh, sw = strides
    if (st, sh, sw) == (1, 1, 1):
        dx = phase(0, 0, 0)
    else:
        # (B, qt, st, qh, sh, qw, sw, C) -> (B, qt*st, qh*sh, qw*sw, C): phase r of an
        # axis holds positions q*s + r.
        dx = jnp.stack(
            [
                jnp.stack(
                    [jnp.stack([phase(rt, rh, rw) for rw in range(sw)], 4) for rh in range(sh)],
                    3,
                )
                for rt in range(st)
            ],
            2,
        )
        b, c = g.shape[0], g.shape[-1]
        dx = dx.reshape(b, q[0] * st, q[1] * sh, q[2] * sw, c)
    n = x_shape[1:4]
    return dx[:, : n[0], : n[1], : n[2]]


def _depthwise_kernel_grad(x, g, kernel_shape, strides, padding):
    """``dL/dkernel[t] = sum_{b, o} shift_t(pad(x))[b, o] * g[b, o]``, accumulated in
    float32, looped over the output frames of each clip.

    Over whole maps the ``kt * kh * kw`` reductions would each stream all of ``x`` and
    ``g`` from memory; one output frame's ``g`` and the ``kt`` input frames it reads
    stay in cache, and one variadic reduction computes every tap in a single pass.
    """
    k = kernel_shape[:3]
    xp = jnp.pad(x, ((0, 0), *((p, p) for p in padding), (0, 0)))
    b, t = g.shape[:2]
    frame = (1, *g.shape[2:4])  # The output grid of one frame.
    taps = list(itertools.product(*map(range, k)))

    def one_frame(i, acc):
        start = (i // t, i % t * strides[0], 0, 0, 0)
        xs = jax.lax.dynamic_slice(xp, start, (1, k[0], *xp.shape[2:]))
        gs = jax.lax.dynamic_slice(g, (i // t, i % t, 0, 0, 0), (1, 1, *g.shape[2:]))
        gs = gs.astype(jnp.float32)
        products = tuple(_tap(xs, tap, frame, strides).astype(jnp.float32) * gs for tap in taps)
        sums = jax.lax.reduce(
            products,
            (jnp.float32(0),) * len(taps),
            lambda u, v: tuple(a + b for a, b in zip(u, v)),
            (0, 1, 2, 3),
        )
        return acc + jnp.stack(sums)

    zeros = jnp.zeros((len(taps), g.shape[-1]), jnp.float32)
    return jax.lax.fori_loop(0, b * t, one_frame, zeros).reshape(kernel_shape)


def _depthwise_bwd(strides, padding, residuals, g):
    x, kernel = residuals
    dx = _depthwise_input_grad(g, kernel, x.shape, strides, padding).astype(x.dtype)
    dk = _depthwise_kernel_grad(x, g, kernel.shape, strides, padding).astype(kernel.dtype)
    return dx, dk


depthwise_conv3d.defvjp(_depthwise_fwd, _depthwise_bwd)


# ----------------------------------------------------------------- dense forms


@jax.custom_vjp
def pointwise_conv3d(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """A ``1x1x1`` convolution, stride 1: one matrix product over the channels.

    Args:
      x: ``(B, T, H, W, C_in)``.
      kernel: ``(C_in, C_out)``.

    Returns:
      ``(B, T, H, W, C_out)``, differentiable by a hand-written rule with the same
      products as autodiff's, in another order (see :func:`_pointwise_bwd`).
    """
    return jnp.einsum("bthwc,cd->bthwd", x, kernel)


def _pointwise_fwd(x, kernel):
    return pointwise_conv3d(x, kernel), (x, kernel)


def _pointwise_bwd(residuals, g):
    """``dx = g kernel^T`` and ``dkernel = x^T g``, both over the flattened positions.

    Autodiff transposes the forward's ``einsum`` into ``(g^T x)^T``; XLA's CPU backend
    then lays ``g`` out channel-major for that product, so every 1x1x1 conv's backward
    wrote its cotangent (and the BatchNorm backward fused into it) a second time,
    transposed, with strided stores (docs/benchmarks.md has the profile). Written as
    ``x^T g`` with ``x`` first, the product reads both maps as they lie; on the CPUs
    measured it gave the same bits.
    """
    x, kernel = residuals
    cin, cout = kernel.shape
    dk = jax.lax.dot_general(x.reshape(-1, cin), g.reshape(-1, cout), (((0,), (0,)), ((), ())))
    dx = jnp.einsum("bthwd,cd->bthwc", g, kernel)
    return dx.astype(x.dtype), dk.astype(kernel.dtype)


pointwise_conv3d.defvjp(_pointwise_fwd, _pointwise_bwd)


def patch_conv3d(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """A dense conv whose kernel tiles its input (kernel = stride, no padding) as a
    reshape into non-overlapping patches and one matrix product (patch embeddings).

    Trailing frames or pixels that do not fill a patch are dropped, as the
    convolution drops them.
    """
    b, c = x.shape[0], x.shape[-1]
    k = kernel.shape[:3]
    o = [n // kk for n, kk in zip(x.shape[1:4], k)]
    x = x[:, : o[0] * k[0], : o[1] * k[1], : o[2] * k[2]]
    x = x.reshape(b, o[0], k[0], o[1], k[1], o[2], k[2], c)
    return jnp.einsum("ntahiwjc,aijcd->nthwd", x, kernel)


def conv3d_as_2d(
    x: jax.Array,
    kernel: jax.Array,
    strides: tuple[int, ...],
    padding: tuple[int, ...],
    groups: int,
) -> jax.Array:
    """A 3D convolution as 2D ones: the sum over the ``kt`` temporal taps of a 2D
    convolution of the (strided) frames at that tap, time folded into the batch.

    XLA's CPU convolutions are much faster in 2D than in 3D, backward above all, and
    strides stay native. A temporal-only ``kt x 1 x 1`` conv is one 2D convolution over
    ``(T, H*W)``.
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
