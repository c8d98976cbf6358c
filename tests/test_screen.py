"""tools/screen.py: presets name real config keys, the paired table, a tiny row."""

import os

import pytest
from conftest import tiny_config

from tools import screen
from tools.config_cli import parse_row
from vkd_jax import config_lib, evaluation, reporting


@pytest.mark.parametrize("preset", sorted(screen.PRESETS))
def test_every_preset_row_sets_declared_keys_to_valid_values(preset):
    config = config_lib.default_config()
    for text in screen.PRESETS[preset]:
        title, changes = parse_row(text)
        cfg, scratch = screen.row_config(config, dict(changes))
        config_lib.validate(cfg)
        assert scratch == (preset == "recipe"), title


def test_students_learning_rate_folds_into_optim_and_a_row_or_set_wins():
    from vkd_jax.experiment import student_config

    config = config_lib.default_config()
    teachers_lr = config.optim.learning_rate
    folded = student_config(config)
    assert folded.optim.learning_rate == config.experiment.student_learning_rate != teachers_lr
    assert folded.experiment.student_learning_rate == 0.0
    assert config.optim.learning_rate == teachers_lr  # The given config is not changed.
    assert student_config(folded).optim.learning_rate == folded.optim.learning_rate
    cfg, _ = screen.row_config(folded, {"optim.learning_rate": 1e-3})  # A row's own wins.
    assert cfg.optim.learning_rate == 1e-3
    cfg, _ = screen.row_config(folded, {"experiment.student_learning_rate": 3e-2})
    assert cfg.optim.learning_rate == 3e-2
    config.experiment.student_learning_rate = 0.0  # Off: the students take optim's.
    assert student_config(config).optim.learning_rate == teachers_lr


def test_table_compares_every_row_with_the_first_by_seed():
    rows = [
        {"row": "base", "top1": [0.50, 0.60, 0.55], "seconds": 3.0},
        {"row": "better", "top1": [0.52, 0.62, 0.57], "seconds": 3.0},
        {"row": "noisy", "top1": [0.60, 0.50, 0.55], "seconds": 3.0},
    ]
    md = screen.table(rows, "validation", (0, 1, 2))
    lines = {line.split(" | ")[0].strip("| "): line for line in md.splitlines()}
    assert "+2.0 [+2.0, +2.0]" in lines["better"] and f"| {reporting.HOLDS} |" in lines["better"]
    assert f"| {reporting.NOT_SHOWN} |" in lines["noisy"]


def test_a_scratch_row_trains_per_seed_and_test_is_refused(tiny_data_dir, tmp_path):
    config = tiny_config(tiny_data_dir)
    config.data.eval_split = "validation"
    r = screen.run_row(config, "scratch lr", {"scratch": True, "optim.learning_rate": 1e-2},
                       [0, 1], str(tmp_path), {})  # fmt: skip
    assert len(r["top1"]) == 2 and all(0.0 <= a <= 1.0 for a in r["top1"])
    assert (tmp_path / "scratch_lr_seed1" / "eval.json").is_file()
    # A shard trains only its stages; the other shard's are left alone.
    half = screen.run_row(config, "other", {"scratch": True}, [0, 1], str(tmp_path), {},
                          train_only=lambda seed: seed == 1)  # fmt: skip
    assert len(half["top1"]) == 1 and (tmp_path / "other_seed1" / "eval.json").is_file()
    assert not (tmp_path / "other_seed0").exists()
    with pytest.raises(SystemExit, match="needs teachers"):
        screen.run_row(config, "kd", {}, [0], str(tmp_path), {})
    with pytest.raises(SystemExit, match="test split"):
        screen.main(["--row", "a: scratch=True", "--split", "test"])


def test_a_screened_stage_is_reused_by_settings_and_evaluated_on_the_new_split(
    tiny_data_dir, tmp_path
):
    config = tiny_config(tiny_data_dir)
    config.data.eval_split = "validation"
    screened = screen.run_row(config, "s", {"scratch": True}, [0], str(tmp_path / "a"), {})
    config.data.eval_split = "test"
    reused = screen.run_row(config, "s", {"scratch": True}, [0], str(tmp_path / "b"), {},
                            reuse_from=(str(tmp_path / "a"),))  # fmt: skip
    assert os.path.islink(tmp_path / "b" / "s_seed0")
    assert reused["seconds"] == screened["seconds"]  # Not trained again.
    direct = evaluation.evaluate_checkpoint(
        config, str(tmp_path / "a" / "s_seed0" / "model"), str(tmp_path / "direct")
    )
    assert reused["top1"] == [direct["top1"]]
    # Other settings (another learning rate) are never reused.
    screen.run_row(config, "s", {"scratch": True, "optim.learning_rate": 1e-2}, [0],
                   str(tmp_path / "c"), {}, reuse_from=(str(tmp_path / "a"),))  # fmt: skip
    assert not os.path.islink(tmp_path / "c" / "s_seed0")
