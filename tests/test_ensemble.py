"""Tests of vkd_jax.ensemble: the teacher-ensemble analyses (configs/ensembles/)."""

import importlib
import json
import os

import ml_collections
import numpy as np
import pytest
from conftest import tiny_config

from vkd_jax import config_lib, ensemble, modes, reporting

ANALYSES = ("subset_size", "task_complexity", "ood_teachers", "task_categories")


def _config(name):
    return importlib.import_module(f"configs.ensembles.{name}").get_config()


@pytest.mark.parametrize("name", ANALYSES)
def test_every_analysis_config_validates_and_names_its_ensembles(name):
    c = _config(name)
    config_lib.validate(c)
    assert c.mode == "ensemble" and c.ensemble.analysis == name
    rows = ensemble.ordered(c.ensemble.rows)
    assert rows and all(len(r.teachers) >= 2 for _, r in rows)
    # The study's distillation: KD from the average of softened probabilities, no SDD/RKD.
    assert (c.loss.teacher_weighting, c.loss.ensemble_space) == ("uniform", "probs")
    assert c.loss.sdd_weight == c.loss.rkd_distance_weight == c.loss.rkd_angle_weight == 0
    # Tuning happens on validation; the test split is passed for the final tables only.
    assert c.data.eval_split == "validation"
    if name == "subset_size":
        splits = [r.teachers.t1_light_cnn.split for _, r in rows]
        assert splits == ["train[:300]", "train[:1200]", "train[:4800]"]  # natural order
    if name == "task_complexity":
        assert len(rows) == 6
        assert all([t.complexity for _, t in ensemble.ordered(r.teachers)] == [1, 2, 3]
                   for _, r in rows)  # fmt: skip
    if name == "ood_teachers":
        assert {t.domain for _, r in rows for t in r.teachers.values()} == {"long", "long_ood"}


@pytest.mark.parametrize("name", ANALYSES)
def test_paper_scale_asks_for_the_real_datasets_before_compute(name):
    c = importlib.import_module(f"configs.ensembles.{name}").get_config("paper")
    with pytest.raises(config_lib.ConfigError, match="ensemble.domains.k400.root"):
        config_lib.validate(c)
    models = {t.model for _, r in ensemble.ordered(c.ensemble.rows) for t in r.teachers.values()}
    assert models <= {"shufflenet3d/v2_1.0", "r2plus1d/18"}
    with pytest.raises(ValueError, match="scale"):
        importlib.import_module(f"configs.ensembles.{name}").get_config("huge")


def _bad(**changes):
    c = _config("task_categories")
    for key, value in changes.items():
        node = c
        *path, leaf = key.split(".")
        for p in path:
            node = node[p]
        node[leaf] = value
    return c


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"ensemble.analysis": "table9"}, "ensemble.analysis"),
        ({"ensemble.seeds": ()}, "ensemble.seeds"),
        ({"ensemble.pretrain.steps": 0}, "ensemble.pretrain.steps"),
        ({"ensemble.rows.contrastive.teachers.tdl.domain": "k400"}, "not in ensemble.domains"),
        ({"ensemble.rows.contrastive.teachers.tdl.task": "jigsaw"}, "teachers.tdl.task"),
        ({"ensemble.rows.contrastive.teachers.tdl.model": "r2plus1d"}, "family/variant"),
        ({"ensemble.rows.contrastive.student": "x3d"}, "family/variant"),
        ({"ensemble.rows.contrastive.teachers.tdl.complexity": 4}, "complexity"),
    ],
)
def test_bad_ensemble_settings_fail_before_compute_naming_the_key(changes, message):
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.validate(_bad(**changes))


def test_an_ensemble_of_one_teacher_is_refused():
    c = _config("task_categories")
    del c.ensemble.rows.contrastive.teachers["tdl"]
    with pytest.raises(config_lib.ConfigError, match="at least 2 teachers"):
        config_lib.validate(c)


def _record(row, teachers, students, scratch, blocks=None):
    rec = {
        "row": row,
        "teachers": {n: {"top1": t} for n, t in teachers.items()},
        "student_top1": students,
        "scratch_top1": scratch,
    }
    if blocks:  # 6 layers: 10 pairs at least 2 apart.
        rec["cka"] = {n: {"block_score": b, "layers": 6} for n, b in blocks.items()}
    return rec


def test_verdicts_compare_the_student_with_its_best_teacher_by_the_paired_rule():
    rows = [
        # Student 0.49 / 0.51 vs best teacher 0.40: +10 ± 1.4, t(1) = 12.7 -> [-2.7, +22.7].
        _record("a", {"t1": 0.40, "t2": 0.30}, [0.49, 0.51], [0.2, 0.2],
                {"t1": 0.5, "t2": 0.3, "student": 0.1}),
        # Student 0.40 / 0.42 / 0.41 vs 0.30: +11 ± 1 over 3 seeds: holds.
        _record("b", {"t1": 0.30, "t2": 0.20}, [0.40, 0.42, 0.41], [0.2, 0.2, 0.2],
                {"t1": 0.0, "t2": 0.0, "student": 0.2}),
        # Student 0.20 on both seeds vs 0.42: the opposite holds.
        _record("c", {"t1": 0.42, "t2": 0.30}, [0.2, 0.2], [0.3, 0.3]),
    ]  # fmt: skip
    v = ensemble.verdicts("task_complexity", rows)
    kd = [x for x in v if x["inference"] != ensemble.BLOCK_INFERENCE]
    assert [x["verdict"] for x in kd] == [reporting.NOT_SHOWN, reporting.HOLDS, reporting.OPPOSITE]
    assert kd[0]["difference"] == pytest.approx(10.0) and kd[0]["compared_with"] == "t1"
    assert kd[0]["low"] == pytest.approx(10.0 - 12.7062, abs=1e-3)
    blocks = [x for x in v if x["inference"] == ensemble.BLOCK_INFERENCE]
    assert [x["row"] for x in blocks] == ["a", "b"]  # Row c has no maps.
    assert blocks[0]["verdict"] == reporting.HOLDS and blocks[0]["difference"] == pytest.approx(0.3)
    assert blocks[1]["verdict"] == reporting.OPPOSITE
    assert [ensemble._distant_pairs(n, 2) for n in (2, 3, 6, 10)] == [0, 1, 10, 36]
    # Half a layer pair apart (teachers 0.1 and 0.0, student 0.0): no finding either way.
    tiny = [_record("d", {"t1": 0.4, "t2": 0.3}, [0.5, 0.5], [0.2, 0.2],
                    {"t1": 0.1, "t2": 0.0, "student": 0.0})]  # fmt: skip
    v = [x for x in ensemble.verdicts("ood_teachers", tiny) if x["row"] == "d"]
    assert v[-1]["verdict"].startswith(reporting.NOT_SHOWN + " (less than one layer pair")
    # Task categories also compare with the student without pretraining (ST), per seed.
    v = ensemble.verdicts("task_categories", rows[1:2])
    st = [x for x in v if x["compared_with"] == "ST"]
    assert st and st[0]["difference"] == pytest.approx(21.0) and st[0]["verdict"] == "holds"
    # Subset size: the smallest subset's student against the largest subset's best teacher.
    v = ensemble.verdicts("subset_size", [rows[1], rows[0]])
    assert v[0]["compared_with"] == "a/t1" and v[0]["difference"] == pytest.approx(1.0)
    # +0, +2, +1 points: level with the teacher within the interval, so "reaches" is not shown.
    assert v[0]["verdict"] == reporting.NOT_SHOWN


def _tiny_ensemble(data_dir, **rows):
    c = _config("task_categories")
    tiny = tiny_config(data_dir)
    for section in ("data", "train", "optim", "cka", "eval"):
        c[section] = tiny[section]
    c.data.eval_split = "validation"
    c.ensemble.domains.long.builder_config = "tiny"
    c.ensemble.pretrain.steps = 2
    c.ensemble.pretrain.batch_size = 4
    c.ensemble.pretrain.frame_stride = 1
    c.ensemble.finetune_steps = 2
    c.train.num_steps = 2
    c.ensemble.seeds = (0,)
    c.ensemble.rows = ml_collections.ConfigDict(rows)
    config_lib.validate(c)
    return c


def test_ensemble_runs_the_chain_shares_teachers_resumes_and_guards_them(tiny_data_dir, tmp_path):
    from configs.ensembles import common

    rotnet = common.teacher("x3d/mini", "rotnet", 1)
    scratch = common.teacher("x3d/mini", "none")
    # K = 3; the same teacher under two names is trained once (as across rows).
    c = _tiny_ensemble(
        tiny_data_dir,
        pair=common.row(
            "RotNet + none", "x3d/mini", rotnet=rotnet, plain=scratch,
            rotnet_copy=ml_collections.ConfigDict(rotnet.to_dict()),
        ),
    )  # fmt: skip
    c.loss.teacher_weighting = "datw"  # Per-teacher weights are logged and tabled.
    c.ensemble.student_split = "train[:50%]"  # Students get half of the teachers' labels.
    workdir = str(tmp_path / "ens")
    results = modes.run(c, workdir)
    assert sorted(os.listdir(os.path.join(workdir, "teachers"))) == sorted(
        ensemble.teacher_key(t) for t in (rotnet, scratch)
    )
    assert [r["row"] for r in results["rows"]] == ["pair"]
    pair = results["rows"][0]
    assert list(pair["teachers"]) == ["plain", "rotnet", "rotnet_copy"]
    assert 0.0 <= pair["teachers"]["rotnet"]["pretext_accuracy"] <= 1.0
    assert "pretext_accuracy" not in pair["teachers"]["plain"]  # No pretraining.
    assert len(pair["student_top1"]) == len(pair["scratch_top1"]) == 1
    for stage, split in (
        ("students/pair_seed0", "train[:50%]"),
        ("students/scratch_x3d-mini_seed0", "train[:50%]"),
        (f"teachers/{ensemble.teacher_key(rotnet)}/finetune", "train"),
    ):
        with open(os.path.join(workdir, stage, "eval.json")) as f:
            assert json.load(f)["train_split"] == split, stage  # fmt: skip
    weights = pair["teacher_weights"]
    assert set(weights) == set(pair["teachers"]) and sum(weights.values()) == pytest.approx(1.0)
    for name in ("plain", "rotnet", "student", "scratch"):
        assert 0.0 <= pair["cka"][name]["block_score"] <= 1.0
    for f in ("task_categories.md", "task_categories.json", "task_categories_cka.png",
              "cka/pair.png", "cka/pair.json"):  # fmt: skip
        assert os.path.isfile(os.path.join(workdir, f)), f
    with open(os.path.join(workdir, "task_categories.md")) as f:
        table = f.read()
    assert "| RotNet + none |" in table and "[b " in table and "Verdict here" in table
    # Finished: a second run trains nothing and gives the same table.
    again = modes.run(c, workdir)
    assert again["rows"] == json.loads(json.dumps(results["rows"]))
    # A teacher folder trained with other settings is never silently reused.
    c.ensemble.finetune_steps = 3
    with pytest.raises(config_lib.ConfigError, match="other settings.*finetune_steps"):
        modes.run(c, workdir)
    assert np.isfinite(results["stage_seconds"])
