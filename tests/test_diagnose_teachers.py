"""tools/diagnose_teachers.py: the agreement table, the weight split, R² and gradient shares."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import init_variables, tiny_config

from tools import diagnose_teachers as dt
from vkd_jax import checkpoint, models, stages
from vkd_jax.losses import sdd


def test_agreement_and_the_weights_split_by_who_is_right():
    labels = np.array([0, 0, 1, 1])
    # CNN right on clips 0, 1; ViT right on clips 0, 2.
    cnn = np.array([[2.0, 0.0], [2.0, 0.0], [2.0, 0.0], [2.0, 0.0]])
    vit = np.array([[2.0, 0.0], [0.0, 2.0], [0.0, 2.0], [2.0, 0.0]])
    a = dt.agreement(cnn, vit, labels)
    assert [a[k] for k in dt.CATEGORIES] == [0.25, 0.25, 0.25, 0.25]
    assert (a["cnn_top1"], a["vit_top1"], a["oracle_top1"]) == (0.5, 0.5, 0.75)
    variants = dt.weighting_variants(temperature=4.0, gamma=0.5)
    rows = {r["variant"]: r for r in dt.weight_rows(np.zeros((4, 2)), cnn, vit, labels, variants)}
    oracle = rows["Oracle (control, uses labels)"]
    assert oracle["vit_weight|only ViT right"] == 1.0 and oracle["vit_weight|only CNN right"] == 0.0
    assert oracle["vit_weight|both right"] == 0.5 and oracle["vit_weight|neither right"] == 0.5
    assert oracle["right_teacher_weight"] == 1.0 and oracle["target_top1"] == 0.75
    uniform = rows["Uniform"]
    assert uniform["vit_weight_mean"] == 0.5 and uniform["right_teacher_weight"] == 0.5
    # Equal confidence everywhere: CA-MKD favours the right teacher where one is right.
    assert rows["CA-MKD"]["right_teacher_weight"] > 0.5
    for r in rows.values():
        assert 0.0 <= r["vit_weight_mean"] <= 1.0


def test_heldout_r2_of_a_linear_and_an_unrelated_feature():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6))
    y = x @ rng.normal(size=(6, 4)) + 1.0
    acc = sdd.RidgeAccumulator()
    acc.add(x[:300], y[:300])
    fitted = sdd.fit_residual_map(acc, ridge=1e-6, dim=8)
    assert dt.heldout_r2(fitted, x[300:], y[300:]) == pytest.approx(1.0, abs=1e-4)
    acc = sdd.RidgeAccumulator()
    noise = rng.normal(size=(400, 4))
    acc.add(x[:300], noise[:300])
    fitted = sdd.fit_residual_map(acc, ridge=1e-3, dim=8)
    assert dt.heldout_r2(fitted, x[300:], noise[300:]) < 0.05


def _save(path, config, which, num_classes, seed):
    spec = config.teachers[which] if which != "student" else config.student
    t, s = config.data.num_frames, config.data.crop_size
    model = models.get_model(spec.name, variant=spec.variant, num_classes=num_classes,
                             input_size=(t, s, s))  # fmt: skip
    variables = init_variables(model, seed, jnp.zeros((1, t, s, s, 3)))
    meta = stages.model_metadata(config, spec, num_classes)
    checkpoint.save_model(str(path), variables, meta)
    return str(path)


def test_diagnose_runs_on_a_tiny_setup_and_refuses_test(tiny_data_dir, tmp_path):
    from vkd_jax.data import pipeline

    config = tiny_config(tiny_data_dir)
    config.data.eval_split = "validation"
    n = pipeline.dataset_info(config.data).num_classes
    cnn = _save(tmp_path / "cnn", config, "cnn", n, 0)
    vit = _save(tmp_path / "vit", config, "vit", n, 1)
    out = str(tmp_path / "diag")
    # The gradient shares of the whole objective compile a large program: checked below on
    # a smaller objective, to keep the suite's time.
    result = dt.diagnose(config, cnn=cnn, vit=vit, split="validation", fit_split="train",
                         grad_batches=0, out=out)  # fmt: skip
    a = result["agreement"]
    assert sum(a[k] for k in dt.CATEGORIES) == pytest.approx(1.0) and a["num_clips"] > 0
    assert len(result["weights"]) == len(dt.weighting_variants(4.0, 0.5))
    assert -1.0 < result["r2"]["heldout_r2"] <= 1.0 and result["r2"]["fit_r2"] <= 1.0
    assert "gradients" not in result
    saved = json.loads(open(os.path.join(out, "diagnosis.json")).read())
    assert saved["agreement"] == a
    assert "only ViT right" in open(os.path.join(out, "diagnosis.md")).read()
    with pytest.raises(ValueError, match="test split"):
        dt.diagnose(config, cnn=cnn, vit=vit, split="test")


def test_gradient_shares_of_each_term_on_the_backbone(tiny_data_dir, tmp_path):
    import ml_collections

    from vkd_jax.data import pipeline

    config = tiny_config(tiny_data_dir)
    n = pipeline.dataset_info(config.data).num_classes
    cnn_dir = _save(tmp_path / "cnn", config, "cnn", n, 0)
    module, variables, _ = checkpoint.load_model(cnn_dir, num_classes=n)
    loss = ml_collections.ConfigDict(config.loss.to_dict())
    loss.update(kd_teachers=("cnn",), teacher_weighting="uniform", sdd_weight=0.0,
                rkd_distance_weight=0.0, rkd_angle_weight=0.0, kd_weight=2.0)  # fmt: skip
    frozen = ml_collections.FrozenConfigDict(loss)
    batch = next(pipeline.train_dataset(config.data, batch_size=8, seed=0).as_numpy_iterator())
    g = dt.gradient_shares(config, frozen, {"cnn": module}, {"cnn": variables}, {}, "", [batch])
    assert set(g["terms"]) == {"ce", "kd"} and g["classifier_excluded"]
    assert sum(t["share"] for t in g["terms"].values()) == pytest.approx(1.0)
    assert all(t["grad_norm"] > 0 for t in g["terms"].values())
    # Doubling a term's weight doubles its gradient norm.
    loss.kd_weight = 4.0
    g2 = dt.gradient_shares(config, ml_collections.FrozenConfigDict(loss), {"cnn": module},
                            {"cnn": variables}, {}, "", [batch])  # fmt: skip
    assert g2["terms"]["kd"]["grad_norm"] == pytest.approx(2 * g["terms"]["kd"]["grad_norm"], 1e-4)
    assert g2["terms"]["ce"]["grad_norm"] == pytest.approx(g["terms"]["ce"]["grad_norm"], 1e-4)
