"""The CPU formulation of conv3d computes the same function as XLA's convolution."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from vkd_jax.models import layers

CASES = [  # (kernel, strides, padding, groups, cin, cout)
    ((3, 3, 3), (1, 2, 2), (1, 1, 1), 6, 6, 6),  # depthwise, strided (X3D conv_b)
    ((3, 3, 3), (1, 1, 1), (1, 1, 1), 6, 6, 6),  # depthwise
    ((5, 1, 1), (1, 1, 1), (2, 0, 0), 6, 6, 6),  # depthwise temporal (X3D stem)
    ((3, 3, 3), (2, 2, 2), (1, 1, 1), 5, 5, 5),  # depthwise, odd sizes, stride in time
    ((1, 1, 1), (1, 2, 2), (0, 0, 0), 1, 4, 7),  # strided shortcut
    ((1, 3, 3), (1, 2, 2), (0, 1, 1), 1, 3, 5),  # strided dense (X3D stem)
    ((3, 3, 3), (2, 2, 2), (1, 1, 1), 2, 4, 6),  # strided grouped
    ((1, 1, 1), (1, 1, 1), (0, 0, 0), 1, 4, 7),  # pointwise
]


@pytest.mark.parametrize("kernel,strides,padding,groups,cin,cout", CASES)
def test_cpu_formulation_equals_xla_conv(kernel, strides, padding, groups, cin, cout):
    kx, kw = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (2, 5, 9, 7, cin))
    w = jax.random.normal(kw, (*kernel, cin // groups, cout))

    def run(cpu_friendly):
        f = lambda x, w: layers.conv3d_apply(
            x, w, strides, padding, groups, cpu_friendly=cpu_friendly
        )
        y, vjp = jax.vjp(f, x, w)
        return y, vjp(y)  # Gradients too: the CPU path must differentiate the same.

    (y0, g0), (y1, g1) = run(False), run(True)
    np.testing.assert_allclose(np.asarray(y1), np.asarray(y0), rtol=1e-5, atol=1e-5)
    for a, b in zip(g1, g0, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)


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
