"""Paired comparisons between rows of finished tables, under the one verdict rule.

Rows come from an ablation's ``ablation.json`` (``--ablation``, rows by their variant
name: ``uniform_dual``, ``oracle``...) and from screens' ``screen.json`` (``--screen``,
rows by their title), on the same seeds in the same order. Each ``--pair "A > B"``
asks whether row A beats row B: the paired per-seed difference, its 95% interval and
the verdict of docs/design.md eq. V1 (``vkd_jax.reporting``). A teacher's one
evaluation (``cnn``, ``vit`` from the ablation) is a constant.

    python tools/compare_rows.py --ablation runs/ablation_final/ablation.json \\
        --screen runs/report_kd_cnn/screen.json \\
        --pair "oracle > uniform_dual" --pair "uniform_dual > KD CNN, T 8"
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from vkd_jax import reporting, storage  # noqa: E402


def load_rows(ablations=(), screens=()) -> dict[str, np.ndarray]:
    """Row name -> top-1 in points, one value per seed (a teacher: one value)."""
    rows: dict[str, np.ndarray] = {}
    for path in ablations:
        data = storage.read_json(path)
        for name, values in data["ablation"].items():
            rows[name] = 100 * np.asarray(values, np.float64)
        for name, summary in data.get("teachers", {}).items():
            rows.setdefault(name, np.float64(100 * float(summary["top1"])))
    for path in screens:
        for r in storage.read_json(path)["rows"]:
            rows[r["row"]] = 100 * np.asarray(r["top1"], np.float64)
    return rows


def compare(rows: dict[str, np.ndarray], pairs) -> str:
    """A Markdown table: one line per ``"A > B"`` pair."""
    body = []
    for pair in pairs:
        a, sep, b = (x.strip() for x in pair.partition(">"))
        if not sep or a not in rows or b not in rows:
            raise SystemExit(f"compare_rows: {pair!r}: rows are {sorted(rows)}")
        c = reporting.paired_comparison(rows[a], rows[b])
        body.append((a, b, reporting.fmt_comparison(c), c.n, c.verdict))
    lines = reporting.markdown_table(
        ("Row", "beats row", "difference, points [95% CI]", "seeds", "verdict"), body
    )
    return "\n".join([*lines, "", reporting.VERDICT_RULE]) + "\n"


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ablation", action="append", default=[], help="ablation.json")
    parser.add_argument("--screen", action="append", default=[], help="screen.json")
    parser.add_argument("--pair", action="append", default=[], help="'row A > row B'")
    args = parser.parse_args(argv)
    md = compare(load_rows(args.ablation, args.screen), args.pair)
    print(md, end="")
    return md


if __name__ == "__main__":
    main()
