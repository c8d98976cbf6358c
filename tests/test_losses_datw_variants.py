"""DATW's variants, the controls and the published peers against their formulas
(docs/design.md eqs. D1-D8), on hand-computed values and invariances."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vkd_jax.losses import datw, kd


def _z(*rows):
    return jnp.asarray(rows, jnp.float32)


def test_confidence_at_the_kd_temperature_is_squashed_and_its_own_temperature_is_not():
    # 12 classes, one-class logit margin 6 / 10 (the numbers): c = 0.07 / 0.26 at
    # T = 4, 0.93 / 0.998 at T_c = 1.
    z = np.zeros((2, 12), np.float32)
    z[0, 0], z[1, 0] = 6.0, 10.0
    c4 = datw.teacher_confidence(jnp.asarray(z), temperature=4.0)
    np.testing.assert_allclose(c4, [0.07223, 0.26370], atol=1e-4)
    c1 = datw.teacher_confidence(jnp.asarray(z), temperature=1.0)
    np.testing.assert_allclose(c1, [0.92509, 0.99779], atol=1e-4)
    # max-probability: softmax([2, 0])_0 = e^2 / (e^2 + 1) = 0.88080.
    np.testing.assert_allclose(datw.max_probability(_z([2.0, 0.0]), temperature=1.0), 0.88080, 1e-4)
    # confidence_temperature reaches the terms; 0 / None means the KD temperature.
    s = jnp.zeros((2, 12))
    zk = jnp.asarray(z)[None]
    own = datw.datw_terms(s, zk, temperature=4.0, confidence_temperature=1.0)[1]
    np.testing.assert_allclose(own[:, 0], c1, rtol=1e-5)
    for t_c in (0.0, None):
        same = datw.datw_terms(s, zk, temperature=4.0, confidence_temperature=t_c)[1]
        np.testing.assert_allclose(same[:, 0], c4, rtol=1e-5)
    mp = datw.datw_terms(s, zk, temperature=4.0, confidence="max_prob", confidence_temperature=1.0)
    np.testing.assert_allclose(mp[1][:, 0], datw.max_probability(jnp.asarray(z), temperature=1.0))


def test_discrepancies_on_hand_computed_values():
    # Centred cosine of (1, 0, -1) and (0, 1, -1) (both zero-mean): cos = 1 / 2.
    z, s = _z([1.0, 0.0, -1.0]), _z([0.0, 1.0, -1.0])
    np.testing.assert_allclose(datw.centered_cosine_discrepancy(z, s), 0.5, rtol=1e-6)
    np.testing.assert_allclose(datw.logit_discrepancy(z, s), 0.5, rtol=1e-6)
    # Shifting the teacher's logits moves the raw cosine, not the centred one.
    assert abs(float(datw.logit_discrepancy(z + 5.0, s)[0]) - 0.5) > 0.1
    np.testing.assert_allclose(datw.centered_cosine_discrepancy(z + 5.0, s - 3.0), 0.5, rtol=1e-5)
    # JS of (0.5, 0.5) and (0.9, 0.1) is 0.10175 nats, / log 2 = 0.14679.
    js = datw.js_discrepancy(_z([0.0, 0.0]), _z([math.log(9.0), 0.0]), temperature=1.0)
    np.testing.assert_allclose(js, 0.146793, rtol=1e-4)
    np.testing.assert_allclose(
        datw.js_discrepancy(_z([0.0, 0.0]) + 7, _z([math.log(9.0), 0.0]) - 2, temperature=1.0),
        0.146793,
        rtol=1e-4,
    )
    np.testing.assert_allclose(datw.js_discrepancy(z, z, temperature=2.0), 0.0, atol=1e-6)
    # JS is at the KD temperature: T = 2 halves the logits.
    np.testing.assert_allclose(
        datw.js_discrepancy(_z([0.0, 0.0]), _z([2 * math.log(9.0), 0.0]), temperature=2.0),
        0.146793,
        rtol=1e-4,
    )


def test_standardized_terms_and_the_single_term_variants():
    x = jnp.asarray([[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_allclose(
        datw.standardize(x), (np.asarray(x) - 2.5) / (math.sqrt(1.25) + 1e-6), rtol=1e-6
    )
    rng = np.random.default_rng(0)
    s = jnp.asarray(rng.normal(size=(6, 5)), jnp.float32)
    z = jnp.asarray(rng.normal(size=(2, 6, 5)) * 3, jnp.float32)
    kw = dict(temperature=2.0, weight_temperature=0.5)
    w, c, d = datw.datw_terms(s, z, standardize_terms=True, **kw)
    cs, ds = datw.standardize(c.T).T, datw.standardize(d.T).T
    want = jax.nn.softmax((cs + ds) / 0.5, axis=1)
    np.testing.assert_allclose(w, want, rtol=1e-5)
    # Confidence-only (b = 0) and discrepancy-only (a = 0).
    w_c = datw.datw_weights(s, z, discrepancy_weight=0.0, **kw)
    np.testing.assert_allclose(w_c, jax.nn.softmax(c / 0.5, axis=1), rtol=1e-5)
    w_d = datw.datw_weights(s, z, confidence_weight=0.0, **kw)
    np.testing.assert_allclose(w_d, jax.nn.softmax(d / 0.5, axis=1), rtol=1e-5)
    # gamma sharpens: a smaller weight temperature moves weights away from 1/2.
    sharp = datw.datw_weights(s, z, temperature=2.0, weight_temperature=0.05)
    assert float(jnp.abs(sharp - 0.5).mean()) > float(jnp.abs(w_c - 0.5).mean())
    with pytest.raises(ValueError, match="standardized"):
        datw.datw_terms(s, z, combine="product", standardize_terms=True, temperature=2.0)
    with pytest.raises(ValueError, match="discrepancy"):
        datw.datw_terms(s, z, discrepancy="l2", temperature=2.0)
    with pytest.raises(ValueError, match="confidence"):
        datw.datw_terms(s, z, confidence="margin", temperature=2.0)


def test_peers_and_controls_on_hand_computed_values():
    # CA-MKD, K = 2, label 0: CE = (log(1 + e^-2), log 2) = (0.12693, 0.69315);
    # w = 1 - softmax(CE) = (0.63789, 0.36211).
    z = jnp.asarray([[[2.0, 0.0]], [[0.0, 0.0]]])
    np.testing.assert_allclose(
        datw.ca_mkd_weights(z, jnp.asarray([0])), [[0.63789, 0.36211]], rtol=1e-4
    )
    # EBKD: H = (0.95027, log 3) for (log 3, 0, 0) and (0, 0, 0): w_1 = H_2 / (H_1 + H_2).
    z = jnp.asarray([[[math.log(3.0), 0.0, 0.0]], [[0.0, 0.0, 0.0]]])
    np.testing.assert_allclose(
        datw.ebkd_weights(z, temperature=1.0), [[0.53620, 0.46380]], rtol=1e-4
    )
    # Oracle: only the CNN right -> (1, 0); both right or neither -> uniform.
    z = jnp.asarray([[[3.0, 0.0], [3.0, 0.0], [3.0, 0.0]], [[0.0, 3.0], [3.0, 0.0], [3.0, 0.0]]])
    labels = jnp.asarray([0, 0, 1])
    np.testing.assert_allclose(
        datw.oracle_weights(z, labels), [[1.0, 0.0], [0.5, 0.5], [0.5, 0.5]]
    )
    np.testing.assert_allclose(  # soft (one-hot) labels work too
        datw.oracle_weights(z, jax.nn.one_hot(labels, 2)), datw.oracle_weights(z, labels)
    )
    np.testing.assert_allclose(datw.fixed_weights((0.57, 0.43), 3), [[0.57, 0.43]] * 3, 1e-6)
    np.testing.assert_allclose(datw.fixed_weights((2.0, 2.0), 1), [[0.5, 0.5]])
    # One teacher: weight 1.
    one = jnp.asarray([[[1.0, 0.0]]])
    np.testing.assert_allclose(datw.ca_mkd_weights(one, jnp.asarray([0])), [[1.0]])
    np.testing.assert_allclose(datw.ebkd_weights(one, temperature=1.0), [[1.0]])


def _all_weights(s, z, labels):
    out = {"fixed": datw.fixed_weights((0.6, 0.3, 0.1), s.shape[0]),
           "oracle": datw.oracle_weights(z, labels),
           "ca_mkd": datw.ca_mkd_weights(z, labels),
           "ebkd": datw.ebkd_weights(z, temperature=2.0)}  # fmt: skip
    for conf in datw.CONFIDENCES:
        for disc in datw.DISCREPANCIES:
            for std in (False, True):
                out[f"datw/{conf}/{disc}/{std}"] = datw.datw_weights(
                    s, z, temperature=2.0, confidence_temperature=1.0, confidence=conf,
                    discrepancy=disc, standardize_terms=std, weight_temperature=0.5,
                )  # fmt: skip
    return out


def test_every_weighting_sums_to_one_is_shift_invariant_where_designed_and_has_no_gradient():
    rng = np.random.default_rng(3)
    s = jnp.asarray(rng.normal(size=(5, 4)) * 2, jnp.float32)
    z = jnp.asarray(rng.normal(size=(3, 5, 4)) * 2, jnp.float32)
    labels = jnp.asarray(rng.integers(0, 4, 5))
    base = _all_weights(s, z, labels)
    shifted = _all_weights(s + 4.0, z + jnp.asarray([1.0, -3.0, 7.0])[:, None, None], labels)
    for name, w in base.items():
        assert w.shape == (5, 3), name
        assert np.all(np.asarray(w) >= 0), name
        np.testing.assert_allclose(jnp.sum(w, axis=1), 1.0, rtol=1e-5, err_msg=name)
        if "/cosine/" not in name:  # only the original raw cosine reads the logits' mean
            np.testing.assert_allclose(shifted[name], w, rtol=1e-4, atol=1e-5, err_msg=name)
    assert not np.allclose(shifted["datw/entropy/cosine/False"], base["datw/entropy/cosine/False"])

    def through_weights(s, z):
        return sum(jnp.sum(w * jnp.arange(3.0)) for w in _all_weights(s, z, labels).values())

    gs, gz = jax.grad(through_weights, (0, 1))(s, z)
    np.testing.assert_array_equal(gs, 0.0)
    np.testing.assert_array_equal(gz, 0.0)


def test_weighted_kd_at_both_places():
    rng = np.random.default_rng(4)
    s = jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)
    z = jnp.asarray(rng.normal(size=(2, 4, 6)) * 2, jnp.float32)
    w = jnp.asarray(rng.dirichlet([1.0, 1.0], size=4), jnp.float32)
    t = 3.0
    per = datw.weighted_kd_loss(s, z, w, temperature=t, place="per_teacher")
    want = w[:, 0] * kd.kd_loss(s, z[0], temperature=t) + w[:, 1] * kd.kd_loss(
        s, z[1], temperature=t
    )
    np.testing.assert_allclose(per, want, rtol=1e-5)
    mix = datw.weighted_kd_loss(s, z, w, temperature=t, place="mix")
    target = w[:, :1] * z[0] + w[:, 1:] * z[1]
    np.testing.assert_allclose(mix, kd.kd_loss(s, target, temperature=t), rtol=1e-5)
    probs = datw.weighted_kd_loss(s, z, w, temperature=t, place="mix", space="probs")
    q = w[:, :1] * jax.nn.softmax(z[0] / t) + w[:, 1:] * jax.nn.softmax(z[1] / t)
    np.testing.assert_allclose(probs, kd.kd_loss_from_probs(s, q, temperature=t), rtol=1e-5)
    # Per-teacher KL is at least the KL to the mixed probabilities (convexity of KL).
    assert np.all(np.asarray(per) >= np.asarray(probs) - 1e-5)
    # Gradients reach the student, never the weights.
    gs, gw = jax.grad(
        lambda s, w: datw.weighted_kd_loss(s, z, w, temperature=t, place="per_teacher").sum(),
        (0, 1),
    )(s, w)
    assert float(jnp.abs(gs).sum()) > 0
    np.testing.assert_array_equal(gw, 0.0)
    with pytest.raises(ValueError, match="place"):
        datw.weighted_kd_loss(s, z, w, temperature=t, place="both")
