"""Tests of losses.kd (CE, Hinton KD, teacher ensembles) and losses.feature (FitNets)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vkd_jax import losses


def _np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _np_kd(s, t, temp):
    """Hinton et al. 2015: T^2 * sum_c p_t (log p_t - log p_s) at temperature T."""
    lt, ls = _np_log_softmax(t / temp), _np_log_softmax(s / temp)
    return temp**2 * (np.exp(lt) * (lt - ls)).sum(-1)


def _logits(seed, shape, scale=3.0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32) * scale


def test_kd_loss_matches_numpy_reference():
    s, t = _logits(0, (5, 7)), _logits(1, (5, 7))
    for temp in (1.0, 4.0):
        got = losses.kd_loss(jnp.asarray(s), jnp.asarray(t), temperature=temp)
        assert got.shape == (5,)
        np.testing.assert_allclose(got, _np_kd(s.astype(np.float64), t, temp), rtol=1e-5)


def test_kd_loss_zero_for_equal_logits_and_positive_otherwise():
    s = jnp.asarray(_logits(2, (4, 6)))
    np.testing.assert_allclose(losses.kd_loss(s, s, temperature=3.0), 0.0, atol=1e-6)
    assert np.all(np.asarray(losses.kd_loss(s, s + jnp.arange(6.0), temperature=3.0)) > 0)


def test_kd_temperature_scaling_matches_hinton_high_temperature_limit():
    # Hinton et al. 2015, Sec. 2.1: for large T and zero-mean logits, T^2 KL -> ||s - t||^2 / (2C).
    s, t = _logits(3, (3, 5), 1.0), _logits(4, (3, 5), 1.0)
    s -= s.mean(-1, keepdims=True)
    t -= t.mean(-1, keepdims=True)
    got = losses.kd_loss(jnp.asarray(s), jnp.asarray(t), temperature=100.0)
    np.testing.assert_allclose(got, ((s - t) ** 2).sum(-1) / (2 * 5), rtol=3e-2)


def test_kd_loss_gradient_reaches_only_the_student():
    s, t = jnp.asarray(_logits(5, (3, 4))), jnp.asarray(_logits(6, (3, 4)))
    gs, gt = jax.grad(lambda a, b: losses.kd_loss(a, b, temperature=2.0).sum(), (0, 1))(s, t)
    # d/ds of T^2 KL = T (softmax(s/T) - softmax(t/T)).
    expect = 2.0 * (np.exp(_np_log_softmax(np.asarray(s) / 2)) - np.exp(_np_log_softmax(t / 2)))
    np.testing.assert_allclose(gs, expect, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(gt, 0.0)


def test_kd_loss_bfloat16_inputs_give_float32_and_jit_vmap():
    s, t = _logits(7, (2, 3, 5)), _logits(8, (2, 3, 5))
    out = losses.kd_loss(
        jnp.asarray(s, jnp.bfloat16), jnp.asarray(t, jnp.bfloat16), temperature=2.0
    )
    assert out.dtype == jnp.float32
    f = jax.jit(jax.vmap(lambda a, b: losses.kd_loss(a, b, temperature=2.0)))
    np.testing.assert_allclose(f(s, t), _np_kd(s, t, 2.0), rtol=1e-5)


def test_kd_loss_is_finite_for_extreme_logits():
    s = jnp.asarray([[1e4, -1e4, 0.0]])
    t = jnp.asarray([[-1e4, 1e4, 0.0]])
    val, g = jax.value_and_grad(lambda a: losses.kd_loss(a, t, temperature=1.0).sum())(s)
    assert np.isfinite(val) and np.all(np.isfinite(g))


def test_cross_entropy_with_label_smoothing_matches_numpy():
    z = _logits(9, (4, 6))
    y = np.array([0, 5, 2, 2])
    eps = 0.1
    q = np.full((4, 6), eps / 6)
    q[np.arange(4), y] += 1 - eps
    expect = -(q * _np_log_softmax(z.astype(np.float64))).sum(-1)
    got = losses.cross_entropy(jnp.asarray(z), jnp.asarray(y), label_smoothing=eps)
    np.testing.assert_allclose(got, expect, rtol=1e-5)
    plain = losses.cross_entropy(jnp.asarray(z, jnp.bfloat16), jnp.asarray(y))
    assert plain.dtype == jnp.float32 and plain.shape == (4,)
    # Soft labels of one-hot rows equal integer labels.
    onehot = np.eye(6, dtype=np.float32)[y]
    np.testing.assert_allclose(
        losses.cross_entropy(jnp.asarray(z), jnp.asarray(onehot)),
        losses.cross_entropy(jnp.asarray(z), jnp.asarray(y)),
        rtol=1e-6,
    )


def test_ensemble_targets_logits_and_probs():
    z = _logits(10, (3, 4, 5))  # (K, B, C)
    np.testing.assert_allclose(losses.ensemble_targets(jnp.asarray(z)), z.mean(0), rtol=1e-6)
    w = np.random.default_rng(11).uniform(0.1, 1.0, size=(4, 3)).astype(np.float32)
    wn = w / w.sum(1, keepdims=True)
    got = losses.ensemble_targets(jnp.asarray(z), weights=jnp.asarray(w))
    np.testing.assert_allclose(got, np.einsum("bk,kbc->bc", wn, z), rtol=1e-5)
    shared = np.array([1.0, 2.0, 1.0], np.float32)
    got = losses.ensemble_targets(jnp.asarray(z), weights=jnp.asarray(shared))
    np.testing.assert_allclose(got, np.einsum("k,kbc->bc", shared / 4, z), rtol=1e-5)
    probs = losses.ensemble_targets(
        jnp.asarray(z), weights=jnp.asarray(w), space="probs", temperature=2.0
    )
    expect = np.einsum("bk,kbc->bc", wn, np.exp(_np_log_softmax(z / 2.0)))
    np.testing.assert_allclose(probs, expect, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(probs).sum(-1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError):
        losses.ensemble_targets(jnp.asarray(z), space="bogus")


def test_kd_loss_from_probs_equals_kd_loss_for_a_single_teacher():
    s, t = _logits(12, (3, 5)), _logits(13, (3, 5))
    q = losses.ensemble_targets(jnp.asarray(t)[None], space="probs", temperature=3.0)
    np.testing.assert_allclose(
        losses.kd_loss_from_probs(jnp.asarray(s), q, temperature=3.0),
        _np_kd(s, t, 3.0),
        rtol=1e-4,
    )
    # A target with exact zeros stays finite.
    q0 = jnp.asarray([[1.0, 0.0, 0.0, 0.0, 0.0]])
    g = jax.grad(lambda a: losses.kd_loss_from_probs(a, q0, temperature=1.0).sum())(
        jnp.asarray(s[:1])
    )
    assert np.all(np.isfinite(g))


def test_feature_kd_loss_is_per_example_mse_with_stopped_teacher():
    a = _logits(14, (3, 2, 2, 2, 4), 1.0)
    b = _logits(15, (3, 2, 2, 2, 4), 1.0)
    got = losses.feature_kd_loss(jnp.asarray(a), jnp.asarray(b))
    np.testing.assert_allclose(got, ((a - b) ** 2).reshape(3, -1).mean(1), rtol=1e-5)
    gb = jax.grad(lambda y: losses.feature_kd_loss(jnp.asarray(a), y).sum())(jnp.asarray(b))
    np.testing.assert_array_equal(gb, 0.0)
    with pytest.raises(ValueError):
        losses.feature_kd_loss(jnp.zeros((3, 4)), jnp.zeros((3, 5)))
