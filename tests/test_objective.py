"""Tests of losses.objective: the configured total loss, its heads and teacher needs."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vkd_jax import losses
from vkd_jax.losses import objective

B, C = 4, 5
_CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "default.py"


def _default_loss_cfg() -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location("_default_config", _CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.paper_objective(module.get_config().loss)  # Every term on.


def _cfg(**overrides) -> ml_collections.FrozenConfigDict:
    cfg = _default_loss_cfg()
    for key, value in overrides.items():
        node = cfg
        *path, leaf = key.split(".")
        for p in path:
            node = node[p]
        node[leaf] = value
    return ml_collections.FrozenConfigDict(cfg)


SCRATCH = dict(kd_weight=0.0, sdd_weight=0.0, rkd_distance_weight=0.0, rkd_angle_weight=0.0)


def _rand(seed, shape, dtype=jnp.float32):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), dtype)


def _outputs(dtype=jnp.float32):
    student = (
        _rand(0, (B, C), dtype),
        {
            "stem": _rand(1, (B, 4, 4, 4, 3), dtype),
            "stage1": _rand(2, (B, 2, 2, 2, 6), dtype),
            "stage2": _rand(3, (B, 2, 1, 1, 8), dtype),
            "pre_logits": _rand(4, (B, 8), dtype),
        },
    )
    teachers = {
        "cnn": (
            _rand(5, (B, C), dtype),
            {
                "stage1": _rand(6, (B, 2, 2, 2, 6), dtype),
                "stage3": _rand(7, (B, 2, 2, 2, 10), dtype),
                "pre_logits": _rand(8, (B, 10), dtype),
            },
        ),
        "vit": (
            _rand(9, (B, C), dtype),
            {"stage2": _rand(10, (B, 2, 3, 3, 12), dtype), "pre_logits": _rand(11, (B, 12), dtype)},
        ),
    }
    labels = jnp.array([0, 1, 2, 3])
    return labels, student, teachers


def _np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_resolve_feature_last_stage_is_highest_numbered():
    feats = {"stage2": 2, "stage10": 10, "stage9": 9, "pre_logits": 0, "stage_x": -1}
    assert objective.resolve_feature(feats, "last_stage") == 10
    assert objective.resolve_feature(feats, "pre_logits") == 0
    with pytest.raises(KeyError):
        objective.resolve_feature(feats, "stage3")
    with pytest.raises(KeyError):
        objective.resolve_feature({"pre_logits": 0}, "last_stage")


def test_required_teachers_for_the_ablations():
    assert objective.required_teachers(_cfg()) == ("cnn", "vit")
    assert objective.required_teachers(_cfg(**SCRATCH)) == ()
    single = dict(SCRATCH, kd_weight=1.0, kd_teachers=("cnn",))
    assert objective.required_teachers(_cfg(**single)) == ("cnn",)
    uniform = dict(SCRATCH, kd_weight=1.0, teacher_weighting="uniform")
    assert objective.required_teachers(_cfg(**uniform)) == ("cnn", "vit")
    rkd_only = dict(SCRATCH, rkd_angle_weight=1.0)
    assert objective.required_teachers(_cfg(**rkd_only)) == ("vit",)
    fitnets = dict(SCRATCH, feature_kd_weight=1.0)
    assert objective.required_teachers(_cfg(**fitnets)) == ("cnn",)
    adapter = dict(SCRATCH, **{"sdd.adapter_weight": 1.0})
    assert objective.required_teachers(_cfg(**adapter)) == ("cnn",)
    sdd = dict(SCRATCH, sdd_weight=1.0, **{"sdd.vit_teacher": "b", "sdd.cnn_teacher": "a"})
    assert objective.required_teachers(_cfg(**sdd)) == ("a", "b")


def test_ce_only_objective_equals_plain_cross_entropy_and_needs_nothing():
    cfg = _cfg(**SCRATCH, label_smoothing=0.1)
    labels, (logits, feats), _ = _outputs()
    heads = objective.DistillationHeads(cfg)
    variables = heads.init(jax.random.key(0), feats, {}, train=True)
    assert not jax.tree_util.tree_leaves(variables)  # no params at all
    head_out = heads.apply(variables, feats, {}, train=True)
    assert head_out == {}
    total, metrics = jax.jit(
        lambda lab, lo, fe: objective.total_loss(
            cfg,
            labels=lab,
            student_logits=lo,
            student_features=fe,
            teacher_outputs={},
            head_outputs=head_out,
        )
    )(labels, logits, feats)
    z = np.asarray(logits, np.float64)
    q = np.full((B, C), 0.1 / C)
    q[np.arange(B), np.asarray(labels)] += 0.9
    np.testing.assert_allclose(total, -(q * _np_log_softmax(z)).sum(-1).mean(), rtol=1e-5)
    assert set(metrics) == {"ce", "total", "accuracy"}
    acc = (z.argmax(-1) == np.asarray(labels)).mean()
    np.testing.assert_allclose(metrics["accuracy"], acc)


def _all_on_cfg(**extra):
    return _cfg(
        feature_kd_weight=0.5,
        **{"sdd.adapter_weight": 0.3, "sdd.dim": 8, "sdd.loss_type": "smooth_l1"},
        **extra,
    )


def _residual_constants(cfg, teachers):
    """An SDD residual map fitted on the test batch itself (the shapes are what matters)."""
    grid = tuple(cfg.sdd.grid)
    pool = lambda name: losses.sdd.pooled_features(
        objective.resolve_feature(teachers[name][1], "last_stage"), grid
    )
    x, y = np.asarray(pool(cfg.sdd.cnn_teacher)), np.asarray(pool(cfg.sdd.vit_teacher))
    acc = losses.sdd.RidgeAccumulator()
    acc.add(x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1]))
    fitted = losses.sdd.fit_residual_map(acc, ridge=0.1, dim=int(cfg.sdd.dim))
    return {objective.SDD_RESIDUAL_MAP: {k: fitted[k] for k in ("weight", "bias", "basis")}}


@pytest.mark.parametrize("target", ["residual", "random_projections"])
def test_all_terms_under_jit_give_finite_grads_and_consistent_metrics(target):
    cfg = _all_on_cfg(**{"sdd.target": target})
    labels, (logits, feats), teachers = _outputs()
    teacher_feats = {k: v[1] for k, v in teachers.items()}
    heads = objective.DistillationHeads(cfg)
    variables = jax.jit(lambda k: heads.init(k, feats, teacher_feats, train=True))(
        jax.random.key(1)
    )
    assert set(variables) == {"params"}
    assert set(variables["params"]) == {"sdd_branch", "sdd_adapter", "feature_kd_adapter"}
    head_shapes = jax.eval_shape(
        lambda v: heads.apply(v, feats, teacher_feats, train=True), variables
    )
    # The residual keeps min(D, C_vit) = min(8, 12) directions, the projections D = 8.
    assert head_shapes[objective.SDD_RESIDUAL].shape == (B, *cfg.sdd.grid, 8)
    constants = _residual_constants(cfg, teachers) if target == "residual" else None

    def loss_fn(params, logits, feats):
        head_out = heads.apply({"params": params}, feats, teacher_feats, train=True)
        return objective.total_loss(
            cfg,
            labels=labels,
            student_logits=logits,
            student_features=feats,
            teacher_outputs=teachers,
            head_outputs=head_out,
            constants=constants,
        )

    grad_fn = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1, 2), has_aux=True))
    (total, metrics), grads = grad_fn(variables["params"], logits, feats)
    terms = ("ce", "kd", "sdd", "sdd_adapter", "rkd_distance", "rkd_angle", "feature_kd")
    datw_keys = {
        f"datw_{stat}/{n}"
        for stat in ("weight", "confidence", "discrepancy", "corr_confidence", "corr_discrepancy")
        for n in ("cnn", "vit")
    }
    expect_keys = {*terms, "total", "accuracy", *datw_keys}
    assert set(metrics) == expect_keys
    for v in metrics.values():
        assert v.shape == () and v.dtype == jnp.float32 and np.isfinite(v)
    weights = dict(
        ce=cfg.ce_weight,
        kd=cfg.kd_weight,
        sdd=cfg.sdd_weight,
        sdd_adapter=cfg.sdd.adapter_weight,
        rkd_distance=cfg.rkd_distance_weight,
        rkd_angle=cfg.rkd_angle_weight,
        feature_kd=cfg.feature_kd_weight,
    )
    np.testing.assert_allclose(total, sum(weights[t] * metrics[t] for t in terms), rtol=1e-5)
    np.testing.assert_allclose(total, metrics["total"])
    np.testing.assert_allclose(metrics["datw_weight/cnn"] + metrics["datw_weight/vit"], 1.0, 1e-5)
    for g in jax.tree_util.tree_leaves(grads):
        assert np.all(np.isfinite(g))
    g_params, g_logits, g_feats = grads
    assert float(jnp.abs(g_logits).sum()) > 0
    # The student features read by RKD (pre_logits) and the heads (last stage) get gradients.
    assert float(jnp.abs(g_feats["pre_logits"]).sum()) > 0
    assert float(jnp.abs(g_feats["stage2"]).sum()) > 0
    for sub in ("sdd_branch", "sdd_adapter", "feature_kd_adapter"):
        assert sum(float(jnp.abs(x).sum()) for x in jax.tree_util.tree_leaves(g_params[sub])) > 0


def _total(cfg, dtype=jnp.float32, teachers_subset=None):
    labels, (logits, feats), teachers = _outputs(dtype)
    if teachers_subset is not None:
        teachers = {k: teachers[k] for k in teachers_subset}
    # One jit instead of op-by-op dispatch: much faster on a busy CPU.
    fn = jax.jit(
        lambda lab, lo, fe, te: objective.total_loss(
            cfg,
            labels=lab,
            student_logits=lo,
            student_features=fe,
            teacher_outputs=te,
            head_outputs={},
        )
    )
    return fn(labels, logits, feats, teachers), (logits, teachers)


def test_kd_term_uniform_and_datw_match_the_pure_losses():
    kd_only = dict(SCRATCH, kd_weight=1.0, ce_weight=0.0)
    (total, metrics), (logits, teachers) = _total(_cfg(**kd_only, teacher_weighting="uniform"))
    stack = jnp.stack([teachers["cnn"][0], teachers["vit"][0]])
    mean_kd = losses.kd_loss(logits, stack.mean(0), temperature=4.0).mean()
    np.testing.assert_allclose(total, mean_kd, rtol=1e-6)
    np.testing.assert_allclose(metrics["datw_weight/cnn"], 0.5)
    (total, metrics), _ = _total(_cfg(**kd_only))
    d = _cfg().datw
    hyper = dict(
        temperature=4.0,
        confidence_weight=d.confidence_weight,
        discrepancy_weight=d.discrepancy_weight,
        weight_temperature=d.weight_temperature,
        combine=d.combine,
    )
    expect = losses.datw_loss(logits, stack, **hyper).mean()
    np.testing.assert_allclose(total, expect, rtol=1e-6)
    assert not np.isclose(float(total), float(mean_kd))  # DATW is not the uniform mean here
    # The logged statistics are the batch means / correlations of c_k, d_k, w_k
    # (docs/design.md eqs. D1, D2, D4).
    w, c, dis = losses.datw.datw_terms(logits, stack, **hyper)
    for k, n in enumerate(("cnn", "vit")):
        np.testing.assert_allclose(metrics[f"datw_weight/{n}"], w[:, k].mean(), rtol=1e-5)
        np.testing.assert_allclose(metrics[f"datw_confidence/{n}"], c[:, k].mean(), rtol=1e-5)
        np.testing.assert_allclose(metrics[f"datw_discrepancy/{n}"], dis[:, k].mean(), rtol=1e-5)
        np.testing.assert_allclose(
            metrics[f"datw_corr_confidence/{n}"], np.corrcoef(w[:, k], c[:, k])[0, 1], rtol=1e-4
        )
    # Single-teacher KD needs (and reads) only that teacher.
    (total, metrics), _ = _total(_cfg(**kd_only, kd_teachers=("cnn",)), teachers_subset=("cnn",))
    expect = losses.kd_loss(logits, teachers["cnn"][0], temperature=4.0).mean()
    np.testing.assert_allclose(total, expect, rtol=1e-6)
    np.testing.assert_allclose(metrics["datw_weight/cnn"], 1.0)


def test_rkd_terms_match_the_pure_losses():
    cfg = _cfg(**dict(SCRATCH, ce_weight=0.0, rkd_distance_weight=1.0, rkd_angle_weight=2.0))
    (total, metrics), _ = _total(cfg, teachers_subset=("vit",))
    labels, (logits, feats), teachers = _outputs()
    s, t = feats["pre_logits"], teachers["vit"][1]["pre_logits"]
    np.testing.assert_allclose(metrics["rkd_distance"], losses.rkd_distance_loss(s, t), rtol=1e-6)
    np.testing.assert_allclose(metrics["rkd_angle"], losses.rkd_angle_loss(s, t), rtol=1e-6)
    np.testing.assert_allclose(total, metrics["rkd_distance"] + 2 * metrics["rkd_angle"], rtol=1e-6)


def test_bfloat16_inputs_give_float32_and_missing_pieces_raise():
    (total, metrics), _ = _total(_cfg(sdd_weight=0.0), dtype=jnp.bfloat16)
    assert total.dtype == jnp.float32 and np.isfinite(total)
    assert all(v.dtype == jnp.float32 for v in metrics.values())
    with pytest.raises(KeyError, match="vit"):
        _total(_cfg(sdd_weight=0.0), teachers_subset=("cnn",))
    with pytest.raises(ValueError, match="needs the fitted map"):
        _total(_cfg())  # The residual target, but no fitted map given
    with pytest.raises(KeyError, match="sdd_residual"):
        _total(_cfg(**{"sdd.target": "random_projections"}))  # SDD on, but no head outputs
    with pytest.raises(ValueError):
        _total(_cfg(**dict(SCRATCH, kd_weight=1.0), teacher_weighting="max"))


def test_kd_term_averages_probabilities_of_any_number_of_teachers():
    """ensemble_space="probs": T^2 KL(mean_k softmax(z_k / T) || softmax(s / T)), K = 3."""
    labels, (logits, feats), teachers = _outputs()
    teachers = dict(teachers, third=(_rand(12, (B, C)), {}))
    names = ("cnn", "vit", "third")
    kd_only = dict(SCRATCH, kd_weight=1.0, ce_weight=0.0, kd_teachers=names)
    t = 4.0
    z = np.stack([np.asarray(teachers[n][0]) for n in names]) / t
    q = np.exp(np.stack([_np_log_softmax(zk) for zk in z])).mean(0)
    log_s = _np_log_softmax(np.asarray(logits) / t)
    expect = (t**2 * (q * (np.log(q) - log_s)).sum(-1)).mean()
    for space, differs in (("probs", False), ("logits", True)):
        cfg = _cfg(**kd_only, teacher_weighting="uniform", ensemble_space=space)
        total, metrics = objective.total_loss(
            cfg,
            labels=labels,
            student_logits=logits,
            student_features=feats,
            teacher_outputs=teachers,
            head_outputs={},
        )
        assert np.isclose(float(total), expect, rtol=1e-5) != differs, space
        for n in names:
            np.testing.assert_allclose(metrics[f"datw_weight/{n}"], 1 / 3, rtol=1e-6)
    with pytest.raises(ValueError, match="ensemble_space"):
        objective.total_loss(
            _cfg(**kd_only, ensemble_space="median"),
            labels=labels,
            student_logits=logits,
            student_features=feats,
            teacher_outputs=teachers,
            head_outputs={},
        )


@pytest.mark.parametrize("weighting", ["datw", "uniform", "fixed", "oracle", "ca_mkd", "ebkd"])
@pytest.mark.parametrize("place", ["mix", "per_teacher"])
def test_every_teacher_weighting_at_both_places_matches_the_pure_losses(weighting, place):
    kd_only = dict(SCRATCH, kd_weight=1.0, ce_weight=0.0, teacher_weighting=weighting)
    extra = {"datw.place": place, "teacher_weights": (0.57, 0.43), "datw.discrepancy": "js",
             "datw.confidence_temperature": 1.0}  # fmt: skip
    cfg = _cfg(**kd_only, **extra)
    (total, metrics), (logits, teachers) = _total(cfg)
    stack = jnp.stack([teachers["cnn"][0], teachers["vit"][0]])
    labels = jnp.array([0, 1, 2, 3])
    w = {
        "datw": lambda: losses.datw.datw_weights(
            logits, stack, temperature=4.0, confidence_weight=1.0, discrepancy_weight=1.0,
            weight_temperature=cfg.datw.weight_temperature, discrepancy="js",
            confidence_temperature=1.0,
        ),
        "uniform": lambda: jnp.full((B, 2), 0.5),
        "fixed": lambda: losses.datw.fixed_weights((0.57, 0.43), B),
        "oracle": lambda: losses.datw.oracle_weights(stack, labels),
        "ca_mkd": lambda: losses.datw.ca_mkd_weights(stack, labels),
        "ebkd": lambda: losses.datw.ebkd_weights(stack, temperature=1.0),
    }[weighting]()  # fmt: skip
    expect = losses.datw.weighted_kd_loss(logits, stack, w, temperature=4.0, place=place).mean()
    np.testing.assert_allclose(total, expect, rtol=1e-5)
    np.testing.assert_allclose(metrics["datw_weight/cnn"], w[:, 0].mean(), rtol=1e-5)


def test_fixed_weights_need_one_weight_per_teacher():
    cfg = _cfg(**dict(SCRATCH, kd_weight=1.0), teacher_weighting="fixed", teacher_weights=(1.0,))
    with pytest.raises(ValueError, match="one weight per"):
        _total(cfg)
