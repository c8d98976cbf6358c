"""Shared layers: MAC counting, the one BatchNorm, the convolution modes (the CPU forms
themselves: tests/test_convolutions.py)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vkd_jax.models import layers


@pytest.mark.parametrize(
    "name,variant,published",
    [("x3d", "s", 1.96), ("x3d", "m", 4.73), ("mvit", "v2_s", 64.0)],
)
def test_gmacs_of_full_size_models_match_published(name, variant, published):
    """MACs come from a trace with native convolutions, whatever the backend does."""
    from vkd_jax import evaluation, models

    model = models.get_model(name, variant=variant, num_classes=400)
    shape = models.standard_input(name, variant)
    video = jax.ShapeDtypeStruct((1, *shape, 3), np.float32)
    variables = jax.eval_shape(lambda v: model.init(jax.random.key(0), v, train=False), video)
    gmacs = evaluation.count_macs(model, variables, shape) / 1e9
    assert abs(gmacs - published) / published < 0.05, (gmacs, published)


def test_models_do_not_import_losses():
    """Dependencies run one way: losses may use models' layers, never the reverse."""
    import subprocess
    import sys

    code = (
        "import sys, vkd_jax.models, vkd_jax.models.sdb\n"
        "from vkd_jax.models import mvit, r2plus1d, shufflenet3d, vit, x3d\n"
        "bad = [m for m in sys.modules if m.startswith(('vkd_jax.losses', 'vkd_jax.train'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


@pytest.mark.parametrize(
    "family, variant",
    [("x3d", "tiny"), ("r2plus1d", "tiny"), ("shufflenet3d", "tiny"),
     ("mvit", "tiny"), ("vit", "tiny")],
)  # fmt: skip
def test_every_family_normalizes_batches_with_the_one_batch_norm(family, variant):
    """One BatchNorm (PyTorch's semantics, layers.BatchNorm) in the whole zoo: a converted
    checkpoint fine-tunes as in PyTorch whatever its family."""
    from vkd_jax import models

    model = models.get_model(family, variant=variant, num_classes=3, input_size=(4, 32, 32))
    seen = set()

    def record(next_fun, args, kwargs, context):
        seen.add(type(context.module))
        return next_fun(*args, **kwargs)

    video = jnp.zeros((2, 4, 32, 32, 3))
    with nn.intercept_methods(record):  # Traced only (eval_shape): nothing is computed.
        variables = jax.eval_shape(lambda: model.init(jax.random.key(0), video, train=False))
    norms = {t for t in seen if "batchnorm" in t.__name__.lower()}
    assert nn.BatchNorm not in norms
    if jax.tree_util.tree_leaves(variables.get("batch_stats", {})):
        assert norms == {layers.BatchNorm}


def test_convolution_modes_compute_the_same_function():
    """Every mode the benchmark can time (layers.convolutions) gives the same output;
    an unknown mode is refused by name."""
    x = jax.random.normal(jax.random.key(0), (2, 4, 9, 9, 6))
    w = jax.random.normal(jax.random.key(1), (3, 3, 3, 1, 6))  # Depthwise.
    v = jax.random.normal(jax.random.key(2), (1, 3, 3, 6, 5))  # Dense spatial, strided.
    out = {}
    for mode in layers.CONVOLUTION_MODES:
        with layers.convolutions(mode):
            y = layers.conv3d_apply(x, w, (1, 1, 1), (1, 1, 1), 6)
            out[mode] = layers.conv3d_apply(y, v, (1, 2, 2), (0, 1, 1), 1)
    for mode, y in out.items():
        np.testing.assert_allclose(
            np.asarray(y), np.asarray(out["native"]), rtol=1e-4, atol=1e-4, err_msg=mode
        )
    with pytest.raises(ValueError, match="'fast'"):
        layers.convolutions("fast")


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_batch_norm_hand_written_backward_equals_autodiff(dtype):
    """layers.batch_norm_train's rule (dx, dscale, dbias) equals autodiff of the same
    forward, for the output's cotangent and the statistics' own, under jit; the values
    are the forward's exactly; and a rule with a wrong dx fails the check."""
    k = jax.random.split(jax.random.key(0), 6)
    x = (jax.random.normal(k[0], (4, 3, 5, 7, 6)) * 3 + 1).astype(dtype)
    scale, bias = jax.random.normal(k[1], (6,)), jax.random.normal(k[2], (6,))
    dt = jnp.dtype(dtype)
    hand = lambda x, s, b: layers.batch_norm_train(x, s, b, 1e-5, dt)
    auto = lambda x, s, b: layers._batch_norm_forward(x, s, b, 1e-5, dt)[0]
    cot = (jax.random.normal(k[3], x.shape).astype(dtype), jax.random.normal(k[4], (6,)),
           jax.random.normal(k[5], (6,)))  # fmt: skip
    grads = lambda f: jax.jit(lambda x, s, b: jax.vjp(f, x, s, b)[1](cot))(x, scale, bias)
    for u, w in zip(jax.tree_util.tree_leaves(auto(x, scale, bias)),
                    jax.tree_util.tree_leaves(hand(x, scale, bias))):  # fmt: skip
        np.testing.assert_array_equal(np.asarray(u, np.float32), np.asarray(w, np.float32))
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == jnp.float32 else dict(rtol=2e-2, atol=2e-2)
    for u, w in zip(grads(auto), grads(hand)):
        np.testing.assert_allclose(np.asarray(u, np.float32), np.asarray(w, np.float32), **tol)
    # The check can fail: drop the mean of dy from dx.
    wrong = lambda x, s, b: (
        jax.vjp(auto, x, s, b)[1](cot)[0]
        - jnp.mean(cot[0].astype(jnp.float32), (0, 1, 2, 3)).astype(dtype)
    )
    assert not np.allclose(np.asarray(wrong(x, scale, bias), np.float32),
                           np.asarray(grads(auto)[0], np.float32), **tol)  # fmt: skip
