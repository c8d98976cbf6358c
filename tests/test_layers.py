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
