"""Tests of losses.datw against the DATW formulation of docs/design.md (eqs. D1-D5)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vkd_jax import losses

KW = dict(temperature=2.0, confidence_weight=1.0, discrepancy_weight=1.0, weight_temperature=0.5)


def _np_softmax(z, axis=-1):
    z = z - z.max(axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis, keepdims=True)


def _np_datw_weights(
    s, z, *, temperature, confidence_weight, discrepancy_weight, weight_temperature, combine="sum"
):
    """docs/design.md DATW (eqs. D1-D4), written directly: z (K, B, C), s (B, C) -> (B, K)."""
    num_classes = z.shape[-1]
    p = _np_softmax(z / temperature)
    c = 1.0 - (-(p * np.log(p)).sum(-1)) / np.log(num_classes)
    cos = (z * s[None]).sum(-1) / (np.linalg.norm(z, axis=-1) * np.linalg.norm(s, axis=-1)[None])
    d = 1.0 - cos
    if combine == "sum":
        e = confidence_weight * c + discrepancy_weight * d
    else:
        e = c**confidence_weight * d**discrepancy_weight
    return _np_softmax(e / weight_temperature, axis=0).T


def _np_datw_loss(s, z, **kw):
    w = _np_datw_weights(s, z, **kw)
    temp = kw["temperature"]
    target = np.einsum("bk,kbc->bc", w, z)
    pt = _np_softmax(target / temp)
    return temp**2 * (pt * (np.log(pt) - np.log(_np_softmax(s / temp)))).sum(-1)


def _data(seed, k=2, b=4, c=6):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(b, c)) * 2).astype(np.float32), (
        rng.normal(size=(k, b, c)) * 2
    ).astype(np.float32)


@pytest.mark.parametrize("combine", ["sum", "product"])
def test_weights_and_loss_match_numpy_reference(combine):
    s, z = _data(0, k=3)
    kw = dict(KW, combine=combine)
    w = losses.datw_weights(jnp.asarray(s), jnp.asarray(z), **kw)
    assert w.shape == (4, 3) and w.dtype == jnp.float32
    np.testing.assert_allclose(w, _np_datw_weights(s.astype(np.float64), z, **kw), rtol=1e-4)
    np.testing.assert_allclose(np.asarray(w).sum(1), 1.0, rtol=1e-6)
    loss = losses.datw_loss(jnp.asarray(s), jnp.asarray(z), **kw)
    assert loss.shape == (4,)
    np.testing.assert_allclose(loss, _np_datw_loss(s.astype(np.float64), z, **kw), rtol=1e-4)


def test_terms_are_the_confidence_and_discrepancy_behind_the_weights():
    s, z = _data(3, k=2)
    w, c, d = losses.datw.datw_terms(jnp.asarray(s), jnp.asarray(z), **KW)
    assert w.shape == c.shape == d.shape == (4, 2)
    np.testing.assert_allclose(w, losses.datw_weights(jnp.asarray(s), jnp.asarray(z), **KW))
    conf = losses.datw.teacher_confidence(jnp.asarray(z), temperature=KW["temperature"])
    np.testing.assert_allclose(c, conf.T, rtol=1e-6)
    np.testing.assert_allclose(d, losses.datw.logit_discrepancy(jnp.asarray(z), s[None]).T)
    # Eq. D4 from the returned terms: softmax over teachers of (a c + b d) / gamma.
    e = (c + d) / KW["weight_temperature"]
    np.testing.assert_allclose(w, jax.nn.softmax(e, axis=1), rtol=1e-5)


def test_equal_teachers_get_equal_weights():
    s, z = _data(1, k=1)
    w = losses.datw_weights(jnp.asarray(s), jnp.asarray(np.concatenate([z, z])), **KW)
    np.testing.assert_allclose(w, 0.5, rtol=1e-6)


def test_more_confident_teacher_gets_more_weight():
    s, z = _data(2, k=1)
    # Scaling logits up sharpens softmax(z/T) (higher confidence) and keeps the cosine.
    both = np.concatenate([z, 3.0 * z])
    w = np.asarray(losses.datw_weights(jnp.asarray(s), jnp.asarray(both), **KW))
    assert np.all(w[:, 1] > w[:, 0])


def test_more_discrepant_teacher_gets_more_weight():
    s, _ = _data(3, k=1)
    # Teacher 0 agrees with the student; teacher 1 is a class-permuted copy: same
    # entropy (same confidence) but a larger cosine distance.
    z0 = s.copy()
    z1 = s[:, ::-1].copy()
    w = np.asarray(losses.datw_weights(jnp.asarray(s), jnp.asarray(np.stack([z0, z1])), **KW))
    assert np.all(w[:, 1] > w[:, 0])


def test_no_gradient_flows_through_the_weights():
    s, z = _data(4, k=2)
    s, z = jnp.asarray(s), jnp.asarray(z)
    w_fixed = losses.datw_weights(s, z, **KW)
    fixed_target = losses.ensemble_targets(z, weights=w_fixed)

    g_datw = jax.grad(lambda a: losses.datw_loss(a, z, **KW).sum())(s)
    g_plain = jax.grad(lambda a: losses.kd_loss(a, fixed_target, temperature=2.0).sum())(s)
    np.testing.assert_allclose(g_datw, g_plain, rtol=1e-6, atol=1e-7)
    # And the weights themselves have zero gradient w.r.t. both inputs.
    gw_s, gw_z = jax.grad(lambda a, b: losses.datw_weights(a, b, **KW)[:, 0].sum(), (0, 1))(s, z)
    np.testing.assert_array_equal(gw_s, 0.0)
    np.testing.assert_array_equal(gw_z, 0.0)


def test_uniform_weights_equal_ensemble_mean_kd():
    s, z = _data(5, k=2)
    s, z = jnp.asarray(s), jnp.asarray(z)
    uniform = losses.kd_loss(
        s, losses.ensemble_targets(z, weights=jnp.full((4, 2), 0.5)), temperature=2.0
    )
    mean_kd = losses.kd_loss(s, z.mean(0), temperature=2.0)
    np.testing.assert_allclose(uniform, mean_kd, rtol=1e-6)
    # DATW with identical teachers is exactly this baseline.
    same = jnp.stack([z[0], z[0]])
    np.testing.assert_allclose(
        losses.datw_loss(s, same, **KW), losses.kd_loss(s, z[0], temperature=2.0), rtol=1e-6
    )


def test_bfloat16_jit_vmap_and_zero_student_logits():
    s, z = _data(6, k=2)
    out = jax.jit(lambda a, b: losses.datw_loss(a, b, **KW))(
        jnp.asarray(s, jnp.bfloat16), jnp.asarray(z, jnp.bfloat16)
    )
    assert out.dtype == jnp.float32 and np.all(np.isfinite(out))
    # vmap over an extra leading axis (e.g. clips) of student and teachers.
    batched = jax.vmap(lambda a, b: losses.datw_loss(a, b, **KW), in_axes=(0, 1))(
        jnp.stack([s, s]), jnp.stack([z, z], axis=1)
    )
    np.testing.assert_allclose(batched[0], batched[1])
    # An untrained student with all-zero logits must not give NaN weights.
    w = losses.datw_weights(jnp.zeros_like(s), jnp.asarray(z), **KW)
    assert np.all(np.isfinite(w))
    with pytest.raises(ValueError):
        losses.datw_weights(jnp.asarray(s), jnp.asarray(z), **dict(KW, combine="max"))
