"""tools/label_budget.py: the budget's split, the paired table and the figure."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools import label_budget  # noqa: E402
from vkd_jax import reporting  # noqa: E402


def test_budget_split_takes_the_first_clips():
    assert label_budget.budget_split("train", 300) == "train[:300]"
    assert label_budget.budget_split("train[:50%]", 1200) == "train[:1200]"
    # The config's own student split keeps its string where its size is the budget's, so
    # the stages of experiments at that split are reused.
    own = ("train[:12.5%]", 600)
    assert label_budget.budget_split("train", 600, own) == "train[:12.5%]"
    assert label_budget.budget_split("train", 300, own) == "train[:300]"


def test_table_pairs_every_row_with_the_first_per_budget(tmp_path):
    results = {
        "300": {"scratch": {"top1": [0.30, 0.32, 0.34]}, "kd": {"top1": [0.40, 0.43, 0.44]}},
        "1200": {"scratch": {"top1": [0.60, 0.50, 0.70]}, "kd": {"top1": [0.61, 0.49, 0.72]}},
    }
    md = label_budget.table(results, "test", [0, 1, 2])
    kd = next(line for line in md.splitlines() if line.startswith("| kd"))
    cells = [c.strip() for c in kd.strip("|").split("|")]
    # 300 clips: +10, +11, +10 points, resolved; 1200: +1, -1, +2, not shown.
    assert cells[1].startswith("42.3 ± 2.1") and reporting.HOLDS in cells[1]
    assert "+10.3" in cells[1]
    assert reporting.NOT_SHOWN in cells[2] and "+0.7" in cells[2]
    label_budget.plot(results, "test", str(tmp_path / "f.png"))
    assert os.path.getsize(tmp_path / "f.png") > 0
