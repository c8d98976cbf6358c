"""tools/diagnose_learning.py: rows parse, model overrides reach the model, test is refused."""

from __future__ import annotations

import argparse
import json
import os
import sys

import pytest
from conftest import tiny_config

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tools import diagnose_learning as dl  # noqa: E402


def test_rows_parse_literals_and_words():
    title, changes = dl.parse_row("lr and head: optim.learning_rate=1e-2; model.head=linear;"
                                  " data.train_scale=(1.0, 1.0)")  # fmt: skip
    assert title == "lr and head"
    assert changes == {
        "optim.learning_rate": 0.01,
        "model.head": "linear",
        "data.train_scale": (1.0, 1.0),
    }
    assert dl.parse_row("baseline:") == ("baseline", {})
    with pytest.raises(ValueError, match="title: key=value"):
        dl.parse_row("no colon here")
    with pytest.raises(ValueError, match="not key=value"):
        dl.parse_row("bad: optim.learning_rate")


def test_a_row_trains_the_overridden_model_and_test_is_refused(tiny_data_dir, tmp_path):
    config = tiny_config(tiny_data_dir)
    config.mode = "train"
    config.data.eval_split = "validation"
    config.train.num_steps = 2
    args = argparse.Namespace(workdir=str(tmp_path))
    row = dl.run_row(config, "student", "no SE", {"model.se_ratio": 0.0}, args)
    assert row["model"] == "x3d/mini+no_se" and 0.0 <= row["val_top1"] <= 1.0
    summary = json.loads((tmp_path / "no_se" / "eval.json").read_text())
    assert summary["num_examples"] == 120  # the validation split of the tiny dataset
    with pytest.raises(KeyError, match="Unknown config key 'optim.learnig_rate'"):
        dl.run_row(config, "student", "typo", {"optim.learnig_rate": 1.0}, args)
    with pytest.raises(ValueError, match="never on test"):
        dl.run_row(config, "student", "test", {"data.eval_split": "test[:50%]"}, args)


def test_every_row_is_checked_before_any_trains(tiny_data_dir):
    config = tiny_config(tiny_data_dir)
    config.data.eval_split = "validation"
    good = ("lr", {"optim.learning_rate": 1e-2})
    dl.check_rows(config, "student", [good, ("no SE", {"model.se_ratio": 0.0})])
    with pytest.raises(ValueError, match="Row 'typo': .*optim.learnig_rate"):
        dl.check_rows(config, "student", [good, ("typo", {"optim.learnig_rate": 1.0})])
    with pytest.raises(ValueError, match="Row 'field'"):
        dl.check_rows(config, "student", [good, ("field", {"model.no_such_field": 1})])
    with pytest.raises(ValueError, match="Row 'test': .*never on test"):
        dl.check_rows(config, "student", [("test", {"data.eval_split": "test"})])
    assert "mini+check" not in dl.models.family_module("x3d").VARIANTS
