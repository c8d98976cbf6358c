"""tools/compare_rows.py: rows from ablation and screen results, paired by seed."""

from __future__ import annotations

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools import compare_rows  # noqa: E402
from vkd_jax import reporting  # noqa: E402


def test_pairs_ablation_and_screen_rows_by_seed(tmp_path):
    ablation = {"ablation": {"uniform_dual": [0.60, 0.62, 0.64], "oracle": [0.59, 0.62, 0.66]},
                "teachers": {"vit": {"top1": 0.7}}}  # fmt: skip
    screen = {"rows": [{"row": "KD CNN", "top1": [0.50, 0.51, 0.55]}]}
    (tmp_path / "a.json").write_text(json.dumps(ablation))
    (tmp_path / "s.json").write_text(json.dumps(screen))
    md = compare_rows.main([
        "--ablation", str(tmp_path / "a.json"), "--screen", str(tmp_path / "s.json"),
        "--pair", "uniform_dual > KD CNN", "--pair", "oracle > uniform_dual",
        "--pair", "uniform_dual > vit",
    ])  # fmt: skip
    lines = {line.split("|")[1].strip() + ">" + line.split("|")[2].strip(): line
             for line in md.splitlines() if line.startswith("| ")}  # fmt: skip
    # +10, +11, +9 points: resolved. +(-1, 0, +2): not shown. Below the teacher's 70.
    kd = lines["uniform_dual>KD CNN"]
    assert "+10.0 [" in kd and reporting.HOLDS in kd
    assert reporting.NOT_SHOWN in lines["oracle>uniform_dual"]
    assert reporting.OPPOSITE in lines["uniform_dual>vit"]
    with pytest.raises(SystemExit, match="rows are"):
        compare_rows.main(["--ablation", str(tmp_path / "a.json"), "--pair", "x > oracle"])
