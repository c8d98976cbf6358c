"""The PyTorch reference step of tools/benchmark.py --torch computes vkd_jax's losses."""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vkd_jax import losses

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools"))


@pytest.fixture(scope="module")
def ref(torch):
    import torch_step

    return torch_step


def _t(torch, x):
    return torch.as_tensor(np.array(x))


def test_datw_kd_equals_vkd_jax(torch, ref):
    k = jax.random.split(jax.random.key(0), 2)
    s = jax.random.normal(k[0], (6, 10)) * 3
    z = jax.random.normal(k[1], (2, 6, 10)) * 3
    for gamma in (0.5, 2.0):
        want = losses.datw_loss(
            s,
            z,
            temperature=4.0,
            confidence_weight=1.0,
            discrepancy_weight=0.5,
            weight_temperature=gamma,
        )
        got = ref.datw_kd(_t(torch, s), _t(torch, z), temperature=4.0, a=1.0, b=0.5, gamma=gamma)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)


def test_sdd_equals_vkd_jax(torch, ref):
    k = jax.random.split(jax.random.key(1), 3)
    f_vit = jax.random.normal(k[0], (3, 4, 7, 7, 24))
    f_cnn = jax.random.normal(k[1], (3, 8, 5, 5, 12))
    pred = jax.random.normal(k[2], (3, 2, 2, 2, 16))
    want = losses.sdd_loss(pred, f_vit, f_cnn, grid=(2, 2, 2), dim=16, seed=3)
    cf = lambda x: _t(torch, x).permute(0, 4, 1, 2, 3)  # channels first, as PyTorch models
    got = ref.sdd(_t(torch, pred), cf(f_vit), cf(f_cnn), grid=(2, 2, 2), dim=16, seed=3)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-5)


def test_residual_sdd_equals_vkd_jax(torch, ref):
    """The residual target (eq. S1) with a map of the fitted map's shapes."""
    k = jax.random.split(jax.random.key(2), 6)
    f_vit = jax.random.normal(k[0], (3, 4, 7, 7, 24))
    f_cnn = jax.random.normal(k[1], (3, 8, 5, 5, 12))
    pred = jax.random.normal(k[2], (3, 2, 2, 2, 16))
    rmap = {
        "weight": jax.random.normal(k[3], (12, 24)),
        "bias": jax.random.normal(k[4], (24,)),
        "basis": jnp.linalg.qr(jax.random.normal(k[5], (24, 16)))[0],
    }
    want = losses.sdd_loss(pred, f_vit, f_cnn, grid=(2, 2, 2), dim=16, residual_map=rmap)
    cf = lambda x: _t(torch, x).permute(0, 4, 1, 2, 3)  # channels first, as PyTorch models
    got = ref.sdd(
        _t(torch, pred), cf(f_vit), cf(f_cnn), grid=(2, 2, 2), dim=16,
        residual_map={n: _t(torch, v) for n, v in rmap.items()},
    )  # fmt: skip
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-5)
    # Not the random-projection target: the two forms differ on the same features.
    other = ref.sdd(_t(torch, pred), cf(f_vit), cf(f_cnn), grid=(2, 2, 2), dim=16)
    assert np.abs(other.numpy() - np.asarray(want)).max() > 1e-2


@pytest.mark.parametrize("case", ["batch", "one clip", "equal embeddings"])
def test_rkd_equals_vkd_jax(torch, ref, case):
    k = jax.random.split(jax.random.key(2), 2)
    n = 1 if case == "one clip" else 7
    s = jax.random.normal(k[0], (n, 12))
    t = jax.random.normal(k[1], (n, 20))
    if case == "equal embeddings":  # no scale to normalise by
        t = jnp.broadcast_to(t[:1], t.shape)
    for ours, theirs in [
        (losses.rkd_distance_loss(s, t), ref.rkd_distance(_t(torch, s), _t(torch, t))),
        (losses.rkd_angle_loss(s, t), ref.rkd_angle(_t(torch, s), _t(torch, t))),
    ]:
        # assert_allclose counts NaN as equal to NaN: finiteness is checked on its own.
        assert np.isfinite(theirs.numpy()) and np.isfinite(ours)
        np.testing.assert_allclose(theirs.numpy(), ours, rtol=1e-4, atol=1e-6)
