"""Tests of losses.rkd (Park et al., CVPR 2019) against the naive published formulas."""

import jax
import jax.numpy as jnp
import numpy as np

from vkd_jax import losses


def _np_smooth_l1(x):
    ax = np.abs(x)
    return np.where(ax < 1.0, 0.5 * x * x, ax - 0.5)


def _np_psi_d(e):
    """Park et al. eq. 4: pairwise distances over their mean off-diagonal distance."""
    n = e.shape[0]
    d = np.sqrt(((e[:, None, :] - e[None, :, :]) ** 2).sum(-1))
    return d / (d.sum() / (n * (n - 1)))


def _np_psi_a(e):
    """Park et al. eq. 6, the naive (N, N, C) way of the reference code: cos of the angle
    between e_j - e_i and e_k - e_i for all (i, j, k); zero-length differences -> 0."""
    diff = e[None, :, :] - e[:, None, :]  # diff[i, j] = e_j - e_i
    norm = np.linalg.norm(diff, axis=-1, keepdims=True)
    unit = diff / np.maximum(norm, 1e-12)
    return np.einsum("ijc,ikc->ijk", unit, unit)


def _np_rkd_d(s, t):
    return _np_smooth_l1(_np_psi_d(s) - _np_psi_d(t)).mean()


def _np_rkd_a(s, t):
    return _np_smooth_l1(_np_psi_a(s) - _np_psi_a(t)).mean()


# Jitted once per shape: op-by-op dispatch of these Gram computations is slow on CPU.
_dist = jax.jit(losses.rkd_distance_loss)
_angle = jax.jit(losses.rkd_angle_loss, static_argnames="anchor_chunk")


def _emb(seed, n=6, c=5):
    return np.random.default_rng(seed).normal(size=(n, c)).astype(np.float64)


def _rotation(seed, c):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(c, c)))
    return q


def test_losses_match_naive_numpy_formulas():
    s, t = _emb(0, c=5), _emb(1, c=8)
    d = _dist(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32))
    a = _angle(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32))
    assert d.shape == () and a.shape == ()
    np.testing.assert_allclose(d, _np_rkd_d(s, t), rtol=1e-4)
    np.testing.assert_allclose(a, _np_rkd_a(s, t), rtol=1e-4)
    # Strictly positive for unrelated embeddings (the tests can fail), 0 for identical ones.
    assert float(d) > 1e-3 and float(a) > 1e-3
    np.testing.assert_allclose(_dist(jnp.asarray(s), jnp.asarray(s)), 0.0, atol=1e-7)
    np.testing.assert_allclose(_angle(jnp.asarray(s), jnp.asarray(s)), 0.0, atol=1e-7)


def test_pairwise_distances_match_numpy():
    e = _emb(2, n=5, c=3)
    expect = np.sqrt(((e[:, None] - e[None]) ** 2).sum(-1))
    np.testing.assert_allclose(
        losses.pairwise_distances(jnp.asarray(e, jnp.float32)), expect, rtol=1e-4, atol=1e-5
    )


def test_invariant_to_rotation_translation_and_uniform_scaling():
    s, t = _emb(3, c=4), _emb(4, c=4)
    base_d = _dist(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32))
    base_a = _angle(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32))
    transforms = [
        lambda x: x @ _rotation(5, 4),
        lambda x: x + np.array([3.0, -2.0, 1.0, 0.5]),
        lambda x: 7.5 * x,
        lambda x: 0.2 * (x @ _rotation(6, 4)) - 1.0,
    ]
    for f in transforms:
        for s2, t2 in ((f(s), t), (s, f(t))):
            s2, t2 = jnp.asarray(s2, jnp.float32), jnp.asarray(t2, jnp.float32)
            np.testing.assert_allclose(_dist(s2, t2), base_d, rtol=1e-4)
            np.testing.assert_allclose(_angle(s2, t2), base_a, rtol=1e-4)


def test_angle_chunked_equals_unchunked_and_naive():
    s, t = _emb(7, n=11, c=6), _emb(8, n=11, c=3)
    s32, t32 = jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32)
    full = _angle(s32, t32)
    np.testing.assert_allclose(full, _np_rkd_a(s, t), rtol=1e-4)
    for chunk in (1, 4):  # 11 anchors: an uneven last chunk for 4
        np.testing.assert_allclose(_angle(s32, t32, anchor_chunk=chunk), full, rtol=1e-5)
    g_full = jax.jit(jax.grad(lambda x: _angle(x, t32)))(s32)
    g_chunk = jax.jit(jax.grad(lambda x: _angle(x, t32, anchor_chunk=4)))(s32)
    np.testing.assert_allclose(g_chunk, g_full, rtol=1e-4, atol=1e-7)


def test_gradient_matches_naive_formula_gradient():
    s, t = _emb(9, n=5, c=4), _emb(10, n=5, c=4)

    def naive_angle(x, y):  # JAX port of the (N, N, C) formula, for its gradient
        def psi(e):
            diff = e[None] - e[:, None]
            # sqrt(max(., eps)): the naive norm's own gradient is NaN at i == j.
            norm = jnp.sqrt(jnp.maximum(jnp.sum(diff * diff, -1, keepdims=True), 1e-24))
            unit = diff / jnp.maximum(norm, 1e-12)
            return jnp.einsum("ijc,ikc->ijk", unit, unit)

        return jnp.mean(losses.rkd.smooth_l1(psi(x) - psi(y)))

    s32, t32 = jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32)
    np.testing.assert_allclose(naive_angle(s32, t32), _np_rkd_a(s, t), rtol=1e-4)
    np.testing.assert_allclose(
        jax.jit(jax.grad(losses.rkd_angle_loss))(s32, t32),
        jax.jit(jax.grad(naive_angle))(s32, t32),
        rtol=1e-3,
        atol=1e-6,
    )


def test_teacher_is_gradient_stopped():
    s, t = jnp.asarray(_emb(11), jnp.float32), jnp.asarray(_emb(12), jnp.float32)
    for fn in (_dist, _angle):
        gs, gt = jax.jit(jax.grad(fn, (0, 1)))(s, t)
        np.testing.assert_array_equal(gt, 0.0)
        assert float(jnp.abs(gs).sum()) > 0


def test_finite_gradients_with_duplicated_embeddings():
    s = _emb(13, n=6, c=4)
    s[3] = s[1]  # zero distance, zero-length difference vectors
    s[5] = s[1]
    t = _emb(14, n=6, c=4)
    t[2] = t[0]
    s32, t32 = jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32)
    for fn in (_dist, _angle):
        val, g = jax.jit(jax.value_and_grad(fn))(s32, t32)
        assert np.isfinite(val) and np.all(np.isfinite(g))
    # The duplicated case still follows the naive formula (zero differences -> cos 0).
    np.testing.assert_allclose(_angle(s32, t32), _np_rkd_a(s, t), rtol=1e-4)
    np.testing.assert_allclose(_dist(s32, t32), _np_rkd_d(s, t), rtol=1e-4)
    # All embeddings equal: everything is 0 and finite.
    same = jnp.ones((4, 3))
    for fn in (_dist, _angle):
        val, g = jax.jit(jax.value_and_grad(fn))(same, same)
        assert np.isfinite(val) and np.all(np.isfinite(g))


def test_bfloat16_jit_vmap_and_map_inputs():
    s, t = _emb(15, n=4, c=2 * 3), _emb(16, n=4, c=5)
    out = _angle(jnp.asarray(s, jnp.bfloat16), jnp.asarray(t, jnp.bfloat16))
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, _np_rkd_a(s, t), rtol=5e-2)
    # (N, T, H, W, C)-shaped features are flattened per example.
    maps = jnp.asarray(s, jnp.float32).reshape(4, 1, 2, 1, 3)
    np.testing.assert_allclose(_dist(maps, jnp.asarray(t, jnp.float32)), _np_rkd_d(s, t), rtol=1e-4)
    stacked = jax.jit(jax.vmap(losses.rkd_distance_loss))(
        jnp.stack([jnp.asarray(s, jnp.float32)] * 2), jnp.stack([jnp.asarray(t, jnp.float32)] * 2)
    )
    np.testing.assert_allclose(stacked, _np_rkd_d(s, t), rtol=1e-4)
