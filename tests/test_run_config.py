"""Runs know their config (vkd_jax/rundir.py): a stage's folder records the settings that
shape its model, and a resume or a skip with other settings stops unless allowed."""

from __future__ import annotations

import json
import os

import pytest
from conftest import tiny_config

from vkd_jax import config_lib, errors, rundir, stages, train


def _stage(config, workdir, **kw):
    return train.Stage(
        name="train_student",
        workdir=str(workdir),
        model=config.student,
        loss=kw.pop("loss", stages.supervised_loss(config.loss)),
        num_steps=kw.pop("num_steps", config.train.num_steps),
        **kw,
    )


def test_a_stage_without_teachers_records_only_the_cross_entropy_settings():
    plain, tuned = config_lib.default_config(), config_lib.default_config()
    tuned.loss.temperature, tuned.loss.kd_weight = 2.0, 2.0
    tuned.loss.teacher_weights = (0.6, 0.4)
    tuned.loss.datw.discrepancy = "js"
    settings = [
        rundir.stage_settings(c, _stage(c, "/tmp/unused")) for c in (plain, tuned)
    ]
    assert settings[0] == settings[1]  # The same scratch stage: reusable by a table.
    assert settings[0]["loss.kd_weight"] == 0.0
    tuned.loss.label_smoothing = 0.1  # The cross-entropy's own keys do shape it.
    smoothed = rundir.stage_settings(tuned, _stage(tuned, "/tmp/unused"))
    assert rundir.differing_keys(settings[0], smoothed) == ["loss.label_smoothing"]


def test_settings_hold_what_shapes_the_model_and_not_logging():
    config = config_lib.default_config()
    stage = _stage(config, "/tmp/unused", loss=config.loss, train_split="train[:10%]")
    settings = rundir.stage_settings(config, stage)
    for key in ("loss.temperature", "loss.kd_weight", "loss.datw.confidence_weight",
                "train.num_steps", "data.train_split", "optim.learning_rate", "seed",
                "model.variant", "train.batch_size"):  # fmt: skip
        assert key in settings, key
    assert settings["data.train_split"] == "train[:10%]"
    for key in rundir.NOT_SHAPING:
        assert key not in settings, key
    assert not [k for k in settings if k.startswith(("eval.", "cka.", "mesh.", "probe."))]
    # Every ignored key is a real config key (a renamed key would silently be compared).
    flat = rundir._flatten(config)
    assert [k for k in rundir.NOT_SHAPING if k not in flat] == []


def test_claim_refuses_other_settings_naming_the_keys_and_records_an_allowed_change(tmp_path):
    config = config_lib.default_config()
    stage = _stage(config, tmp_path, loss=config.loss)
    rundir.claim_stage(config, stage)
    recorded = json.loads((tmp_path / rundir.CONFIG_FILE).read_text())
    assert recorded["settings"]["loss.temperature"] == config.loss.temperature
    rundir.claim_stage(config, stage)  # Same settings: fine.

    config.train.log_every = 1  # Logging does not shape the model.
    config.loss.temperature = 1.0
    stage = _stage(config, tmp_path, loss=config.loss, num_steps=50)
    with pytest.raises(errors.ConfigChangedError) as e:
        rundir.claim_stage(config, stage)
    message = str(e.value)
    assert "loss.temperature, train.num_steps differ" in message, message
    assert "new --workdir" in message and "--config.allow_config_change=True" in message
    assert "log_every" not in message and "\n" not in message

    config.allow_config_change = True
    rundir.claim_stage(config, stage)
    changes = json.loads((tmp_path / rundir.CHANGES_FILE).read_text())
    assert changes[-1]["changed"]["loss.temperature"] == [4.0, 1.0]
    assert changes[-1]["changed"]["train.num_steps"][1] == 50
    recorded = json.loads((tmp_path / rundir.CONFIG_FILE).read_text())
    assert recorded["settings"]["loss.temperature"] == 1.0


def test_a_finished_stage_rerun_with_other_steps_is_refused(tiny_data_dir, tmp_path):
    config = tiny_config(tiny_data_dir)
    config.train.num_steps = 2
    train.run(config, _stage(config, tmp_path))
    assert os.path.isfile(tmp_path / "eval.json")
    config.train.log_every = 1  # Still the same run: skipped.
    train.run(config, _stage(config, tmp_path))
    config.train.num_steps = 3
    with pytest.raises(errors.ConfigChangedError, match=r"\(train\.num_steps differ"):
        train.run(config, _stage(config, tmp_path))
    config.optim.learning_rate = 0.5
    with pytest.raises(errors.ConfigChangedError, match=r"optim\.learning_rate, train\.num_steps"):
        train.run(config, _stage(config, tmp_path))


def test_results_md_states_the_settings_that_differ_from_the_defaults():
    config = config_lib.default_config()
    text = "\n".join(rundir.settings_markdown(config, config_lib.default_config()))
    assert "temperature 4.0" in text and "teacher weighting `uniform`" in text
    assert "KD 2.0, SDD 0.0" in text  # The components configs/default.py leaves off.
    assert "300 steps at peak learning rate 0.02" in text  # The students' own rate.
    assert "student split `train[:12.5%]`" in text
    assert "Every other setting is configs/default.py's." in text
    config.loss.temperature = 1.0
    config.train.num_steps = 50
    config.train.log_every = 3  # Not a result's setting: not listed.
    text = "\n".join(rundir.settings_markdown(config, config_lib.default_config()))
    assert "`loss.temperature` = 1.0 (default 4.0)" in text
    assert "`train.num_steps` = 50 (default 300)" in text and "log_every" not in text
