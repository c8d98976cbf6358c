"""Every CPU form of conv3d (vkd_jax.models.convolutions) computes XLA's convolution, and
its gradients -- hand-written for the depthwise form -- are XLA's autodiff ones."""

from __future__ import annotations

import threading

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vkd_jax.models import convolutions, layers

# (kernel, strides, padding, groups, cin, cout): every combination the zoo uses, on maps
# small enough for a test. Sizes are odd where the models' are not, so a form that drops
# or double-counts a border shows.
CASES = {
    # X3D (Feichtenhofer, CVPR 2020)
    "x3d stem conv_xy": ((1, 3, 3), (1, 2, 2), (0, 1, 1), 1, 3, 5),
    "x3d stem conv_t (depthwise)": ((5, 1, 1), (1, 1, 1), (2, 0, 0), 6, 6, 6),
    "x3d conv_b (depthwise)": ((3, 3, 3), (1, 1, 1), (1, 1, 1), 6, 6, 6),
    "x3d conv_b strided (depthwise)": ((3, 3, 3), (1, 2, 2), (1, 1, 1), 6, 6, 6),
    "x3d conv_a/conv_c, SE, head (1x1x1)": ((1, 1, 1), (1, 1, 1), (0, 0, 0), 1, 4, 7),
    "x3d branch1 (strided 1x1x1)": ((1, 1, 1), (1, 2, 2), (0, 0, 0), 1, 4, 7),
    # R(2+1)D (Tran et al., CVPR 2018), torchvision's layout
    "r2plus1d stem conv_s": ((1, 7, 7), (1, 2, 2), (0, 3, 3), 1, 3, 5),
    "r2plus1d conv_t": ((3, 1, 1), (1, 1, 1), (1, 0, 0), 1, 4, 6),
    "r2plus1d conv_s strided": ((1, 3, 3), (1, 2, 2), (0, 1, 1), 1, 4, 6),
    "r2plus1d conv_t strided": ((3, 1, 1), (2, 1, 1), (1, 0, 0), 1, 4, 6),
    "r2plus1d downsample": ((1, 1, 1), (2, 2, 2), (0, 0, 0), 1, 4, 6),
    # 3D-ShuffleNet (Kopuklu et al., ICCVW 2019)
    "shufflenet conv1": ((3, 3, 3), (1, 2, 2), (1, 1, 1), 1, 3, 6),
    "shufflenet v1 grouped 1x1x1": ((1, 1, 1), (1, 1, 1), (0, 0, 0), 3, 6, 9),
    "shufflenet depthwise strided": ((3, 3, 3), (2, 2, 2), (1, 1, 1), 5, 5, 5),
    # SlowFast (Feichtenhofer et al., ICCV 2019)
    "slowfast fast stem": ((5, 7, 7), (1, 2, 2), (2, 3, 3), 1, 3, 4),
    "slowfast fusion": ((7, 1, 1), (4, 1, 1), (3, 0, 0), 1, 4, 8),
    "slowfast conv_b strided": ((1, 3, 3), (1, 2, 2), (0, 1, 1), 1, 4, 4),
    # MViTv2 (Li et al., CVPR 2022): patch embedding and pooling (depthwise)
    "mvit patch embedding": ((3, 7, 7), (2, 4, 4), (1, 3, 3), 1, 3, 8),
    "mvit pool q": ((3, 3, 3), (1, 2, 2), (1, 1, 1), 4, 4, 4),
    "mvit pool kv, stride above the kernel": ((3, 3, 3), (1, 4, 4), (1, 1, 1), 4, 4, 4),
    # ViT tubelets (Arnab et al., ViViT, ICCV 2021): kernel = stride
    "vit tubelet embedding": ((2, 4, 4), (2, 4, 4), (0, 0, 0), 1, 3, 8),
    # Not in the zoo, for the general case
    "dense 3x3x3": ((3, 3, 3), (1, 1, 1), (1, 1, 1), 1, 3, 5),
    "grouped, unpadded time, mixed strides": ((3, 3, 3), (2, 1, 2), (0, 1, 0), 2, 4, 6),
    "depthwise, unpadded, mixed strides": ((3, 2, 3), (2, 3, 1), (0, 1, 0), 3, 3, 3),
}


def _native(x, w, strides, padding, groups):
    return layers.conv3d_apply(x, w, strides, padding, groups, cpu_friendly=False)


def _cpu(x, w, strides, padding, groups):
    return layers.conv3d_apply(x, w, strides, padding, groups, cpu_friendly=True)


def _inputs(case, shape=(2, 9, 11, 10)):
    kernel, strides, padding, groups, cin, cout = case
    kx, kw, kg = jax.random.split(jax.random.key(sum(kernel) * 7 + sum(strides)), 3)
    x = jax.random.normal(kx, (*shape, cin))
    w = jax.random.normal(kw, (*kernel, cin // groups, cout))
    return x, w, kg


def _close(actual, expected, what):
    # float32: the forms sum the same products in another order.
    scale = float(np.max(np.abs(np.asarray(expected)))) or 1.0
    np.testing.assert_allclose(
        np.asarray(actual), np.asarray(expected), rtol=1e-4, atol=1e-5 * scale, err_msg=what
    )


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_values_and_gradients_equal_xla_conv(case):
    """Output, input gradient and kernel gradient under a random cotangent equal XLA's
    convolution and its autodiff."""
    _, strides, padding, groups, *_ = case
    x, w, kg = _inputs(case)
    args = (strides, padding, groups)
    y0, vjp0 = jax.vjp(lambda x, w: _native(x, w, *args), x, w)
    y1, vjp1 = jax.vjp(lambda x, w: _cpu(x, w, *args), x, w)
    _close(y1, y0, "values")
    g = jax.random.normal(kg, y0.shape)
    (dx0, dw0), (dx1, dw1) = vjp0(g), vjp1(g)
    _close(dx1, dx0, "input gradient")
    _close(dw1, dw0, "kernel gradient")


@pytest.mark.parametrize(
    "name", ["x3d conv_b strided (depthwise)", "mvit pool kv, stride above the kernel",
             "x3d stem conv_t (depthwise)", "depthwise, unpadded, mixed strides"],
)  # fmt: skip
def test_depthwise_gradients_under_jit_equal_xla(name):
    """The hand-written depthwise rule under jit, at sizes that are not multiples of the
    stride, equals autodiff of XLA's convolution."""
    case = CASES[name]
    _, strides, padding, groups, *_ = case
    x, w, kg = _inputs(case, shape=(3, 7, 13, 9))
    g = jax.random.normal(kg, _native(x, w, strides, padding, groups).shape)

    def grads(f):
        return jax.jit(
            lambda x, w: jax.vjp(lambda a, b: f(a, b, strides, padding, groups), x, w)[1](g)
        )(x, w)

    (dx0, dw0), (dx1, dw1) = grads(_native), grads(_cpu)
    _close(dx1, dx0, "input gradient")
    _close(dw1, dw0, "kernel gradient")


def test_depthwise_rule_is_the_one_in_use():
    """On the CPU path a depthwise conv goes through the hand-written rule (a custom_vjp
    in the jaxpr), so the tests above test what the models run."""
    x, w, _ = _inputs(CASES["x3d conv_b (depthwise)"])
    jaxpr = str(jax.make_jaxpr(lambda x, w: _cpu(x, w, (1, 1, 1), (1, 1, 1), 6))(x, w))
    assert "custom_vjp_call" in jaxpr


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_pointwise_rule_is_in_use_and_equals_autodiff(dtype):
    """A 1x1x1 conv on the CPU path goes through the hand-written rule, whose gradients
    under jit equal autodiff's of the same einsum (same products, another order)."""
    x = jax.random.normal(jax.random.key(0), (2, 3, 5, 7, 4), dtype)
    w = jax.random.normal(jax.random.key(1), (1, 1, 1, 4, 6), dtype)
    g = jax.random.normal(jax.random.key(2), (2, 3, 5, 7, 6), dtype)
    cpu = lambda x, w: _cpu(x, w, (1, 1, 1), (0, 0, 0), 1)
    assert "custom_vjp_call" in str(jax.make_jaxpr(cpu)(x, w))
    plain = lambda x, w: jnp.einsum("bthwc,cd->bthwd", x, w.reshape(4, 6))
    grads = lambda f: jax.jit(lambda x, w: jax.vjp(f, x, w)[1](g))(x, w)
    (dx0, dw0), (dx1, dw1) = grads(plain), grads(cpu)
    assert (dx1.dtype, dw1.dtype) == (dtype, dtype)
    tol = 1e-2 if dtype == jnp.bfloat16 else 1e-5
    for got, want in ((dx1, dx0), (dw1, dw0)):
        np.testing.assert_allclose(np.float32(got), np.float32(want), rtol=tol, atol=tol)


def test_pointwise_backward_reads_the_cotangent_as_it_lies():
    """The reason for the rule: in a conv -> BatchNorm-like chain, the compiled gradient
    holds no copy of the cotangent laid out channel-major (autodiff's transpose of the
    einsum made XLA's CPU backend write one, with the chain's backward fused into it)."""
    x = jax.random.normal(jax.random.key(0), (2, 4, 6, 6, 5))
    w = jax.random.normal(jax.random.key(1), (1, 1, 1, 5, 7))

    def loss(x, w):
        y = _cpu(jax.nn.relu(x - x.mean()), w, (1, 1, 1), (0, 0, 0), 1)
        y = (y - y.mean((0, 1, 2, 3))) * jax.lax.rsqrt(y.var((0, 1, 2, 3)) + 1e-5)
        return jnp.tanh(y).sum()

    hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, w).compile().as_text()
    assert "f32[7,288]" not in hlo, "the cotangent is copied channel-major"


class _Tiny(nn.Module):
    """Stem, a depthwise bottleneck (strided), a pointwise conv and a head: X3D's pattern."""

    @nn.compact
    def __call__(self, x):
        x = layers.conv3d(6, (1, 3, 3), strides=(1, 2, 2), name="stem")(x)
        x = nn.relu(layers.conv3d(6, (5, 1, 1), groups=6, name="stem_t")(x))
        x = layers.conv3d(6, (3, 3, 3), strides=(1, 2, 2), groups=6, name="dw")(x)
        x = jnp.tanh(layers.conv3d(8, (1, 1, 1), use_bias=True, name="pw")(x))
        x = layers.conv3d(8, (3, 3, 3), groups=8, name="dw2")(x)
        return jnp.mean(x, axis=(1, 2, 3)) @ jnp.linspace(-1.0, 1.0, 8 * 3).reshape(8, 3)


def test_grad_of_a_small_model_equals_native_and_is_reusable():
    """jax.grad of a small model through the CPU forms equals it through XLA's
    convolutions, on the first call and again on a second (cached) call."""
    model = _Tiny()
    x = jax.random.normal(jax.random.key(0), (2, 6, 15, 13, 3))
    params = model.init(jax.random.key(1), x)
    loss = lambda p, x: jnp.sum(jnp.sin(model.apply(p, x)))
    with layers.convolutions("native"):
        want = jax.jit(jax.grad(loss))(params, x)
    with layers.convolutions("cpu"):
        grad = jax.jit(jax.grad(loss))
        first = grad(params, x)
    x2 = x * 0.5 + 1.0
    with layers.convolutions("native"):
        want2 = jax.grad(loss)(params, x2)
    second = grad(params, x2)  # Compiled in "cpu" mode, reused outside the block.
    for got, ref in ((first, want), (second, want2)):
        jax.tree.map(lambda a, b: _close(a, b, "model gradient"), got, ref)


def test_gradient_checks_fail_on_a_wrong_rule(monkeypatch):
    """The comparison above catches a wrong gradient: a rule whose kernel gradient is
    off by one tap fails it."""
    real = convolutions._depthwise_kernel_grad

    def shifted(*args):
        return jnp.roll(real(*args), 1, axis=2)

    monkeypatch.setattr(convolutions, "_depthwise_kernel_grad", shifted)
    with pytest.raises(AssertionError, match="kernel gradient"):
        test_values_and_gradients_equal_xla_conv(CASES["x3d conv_b (depthwise)"])


def test_mode_is_scoped_to_the_block_and_the_thread():
    """The convolution mode is a context variable: restored on exit (also after an
    error), and a thread started elsewhere keeps the default."""
    assert convolutions.mode() == "auto"
    seen = []
    with layers.convolutions("native"):
        assert convolutions.mode() == "native"
        worker = threading.Thread(target=lambda: seen.append(convolutions.mode()))
        worker.start()
        worker.join()
        with pytest.raises(RuntimeError), layers.portable_convolutions():
            assert convolutions.mode() == "portable"
            raise RuntimeError
        assert convolutions.mode() == "native"
    assert convolutions.mode() == "auto"
    assert seen == ["auto"]
    with pytest.raises(ValueError, match="'fast'"):
        layers.convolutions("fast")


@pytest.mark.parametrize(
    "kernel,strides,padding",
    [((3, 7, 7), (2, 4, 4), (1, 3, 3)), ((2, 4, 4), (2, 4, 4), (0, 0, 0))],
    ids=["mvit conv_proj", "vit patch_embed"],
)
def test_patch_embeddings_keep_nn_conv_variables(kernel, strides, padding):
    """MViT's and the ViT's patch embeddings moved from nn.Conv to layers.Conv3d: the same
    variables (names, shapes, initial values from a seed), so old checkpoints load and a
    seed gives what it gave, and the same outputs."""
    x = jax.random.normal(jax.random.key(0), (2, 6, 17, 16, 3))
    old = nn.Conv(8, kernel, strides=strides, padding=[(p, p) for p in padding])
    new = layers.Conv3d(
        8, kernel, strides, padding, use_bias=True, kernel_init=nn.initializers.lecun_normal()
    )
    v_old, v_new = old.init(jax.random.key(1), x), new.init(jax.random.key(1), x)
    assert jax.tree.map(jnp.shape, v_old) == jax.tree.map(jnp.shape, v_new)
    jax.tree.map(np.testing.assert_array_equal, v_old, v_new)
    _close(new.apply(v_new, x), old.apply(v_old, x), "outputs")
