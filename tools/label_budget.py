"""Where distillation helps: the student's top-1 against its labelled-clip budget.

For each budget of ``--budgets`` (labelled training clips, the first N of the train
split), every row trains the student once per seed on those clips (the same number of
steps at every budget: equal compute, more or fewer epochs) and is evaluated on
``--split``. Rows are screen rows (``"title: key=value; ..."``, ``scratch=True``
trains without teachers); the defaults are the student from scratch, KD from the CNN
teacher, uniform dual-teacher KD and the full method (the config's own loss). Each
row's gain over the first row is the paired per-seed difference under the verdict
rule of docs/design.md eq. V1.

Writes ``<workdir>/label_budget.md``, ``label_budget.json`` and ``label_budget.png``;
finished stages are reused (``--shard I/N`` splits the training over processes, as in
tools/screen.py). The rows' settings are chosen on the validation split first
(tools/screen.py); this tool reports, so its split defaults to ``test``.

    python tools/label_budget.py --workdir runs/label_budget --seeds 0,1,2 \\
        --budgets 300,600,1200,4800 \\
        --cnn runs/default/teacher_cnn/model --vit runs/default/teacher_vit/model
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from vkd_jax import reporting, storage  # noqa: E402

_OFF = "loss.sdd_weight=0.0; loss.rkd_distance_weight=0.0; loss.rkd_angle_weight=0.0"
ROWS = [
    "scratch: scratch=True",
    f"KD CNN: loss.kd_teachers=('cnn',); loss.teacher_weighting='uniform'; {_OFF}",
    f"uniform dual KD: loss.teacher_weighting='uniform'; {_OFF}",
    "full method (config's loss):",
]
FIGURE = "label_budget.png"


def budget_split(train_split: str, clips: int, own: tuple[str, int] | None = None) -> str:
    """The first ``clips`` examples of the train split (TFDS slicing).

    ``own`` is the config's student split and its size: a budget of that size takes the
    split's own string (``train[:12.5%]`` rather than ``train[:600]``, the same clips),
    so that stages of experiments and ablations at that split are found and reused."""
    if own is not None and own[0] and int(own[1]) == int(clips):
        return own[0]
    return f"{train_split.split('[')[0]}[:{int(clips)}]"


def split_size(data_cfg, split: str) -> int:
    """Examples in a TFDS split string of the config's dataset."""
    from vkd_jax.data import pipeline

    return int(pipeline.load_builder(data_cfg).info.splits[split].num_examples)


def table(results: dict, split: str, seeds) -> str:
    """Mean ± std per (row, budget) and each row's paired gain over the first row."""
    budgets = sorted(results, key=int)
    rows = list(results[budgets[0]])
    base = rows[0]
    lines = [
        f"Top-1 % on `{split}`, mean ± std over seeds {tuple(seeds)}, by labelled train "
        "clips; below each, the paired gain over "
        f"`{base}` in points with its 95% interval and verdict (docs/design.md eq. V1).",
        "",
    ]
    body = []
    for row in rows:
        cells = [row]
        for b in budgets:
            top1 = results[b][row]["top1"]
            text = reporting.fmt_mean_std(top1)
            if row != base:
                c = reporting.paired_comparison(
                    100 * np.asarray(top1), 100 * np.asarray(results[b][base]["top1"])
                )
                text += f"<br>{reporting.fmt_comparison(c)} {c.verdict}"
            cells.append(text)
        body.append(cells)
    lines += reporting.markdown_table(["Row", *(f"{b} clips" for b in budgets)], body)
    lines += ["", reporting.VERDICT_RULE]
    return "\n".join(lines) + "\n"


def plot(results: dict, split: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = sorted(results, key=int)
    fig, ax = plt.subplots(figsize=(6, 4))
    for row in results[budgets[0]]:
        values = [100 * np.asarray(results[b][row]["top1"]) for b in budgets]
        means = [v.mean() for v in values]
        stds = [v.std(ddof=1) if len(v) > 1 else 0.0 for v in values]
        ax.errorbar([int(b) for b in budgets], means, yerr=stds, marker="o", capsize=3,
                    label=row)  # fmt: skip
    ax.set_xscale("log")
    ax.minorticks_off()  # Only the budgets are labelled (log minor labels overlap them).
    ax.set_xticks([int(b) for b in budgets], labels=budgets)
    ax.set_xlabel("labelled train clips of the student")
    ax.set_ylabel(f"top-1 % on {split} (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    storage.savefig(fig, path, dpi=120)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/default.py")
    parser.add_argument("--workdir", default="runs/label_budget")
    parser.add_argument("--budgets", default="300,600,1200,4800")
    parser.add_argument("--row", action="append", default=[], help="'title: key=value; ...'")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--split", default="test")
    parser.add_argument("--cnn", default="", help="CNN teacher model directory")
    parser.add_argument("--vit", default="", help="ViT teacher model directory")
    parser.add_argument("--set", action="append", default=[], help="key=value for every row")
    parser.add_argument("--shard", default="", help="I/N as in tools/screen.py")
    parser.add_argument(
        "--reuse", action="append", default=[],
        help="folder with finished stages (e.g. the final ablation's): one with a stage's "
        "exact settings is reused, not trained again",
    )  # fmt: skip
    args = parser.parse_args(argv)
    from tools import screen
    from tools.config_cli import apply_sets, load_config, parse_row
    from vkd_jax.experiment import student_config

    # The students' learning rate folded into optim first, so that --set wins over it.
    config = student_config(load_config(args.config))
    config.experiment.run_cka = False
    config.data.eval_split = args.split
    config.eval.latency_iters = 1
    apply_sets(config, args.set)
    rows = [parse_row(t) for t in (args.row or ROWS)]
    for _title, changes in rows:  # Every row's keys are checked before any trains.
        screen.row_config(config, dict(changes))
    budgets = [int(b) for b in args.budgets.split(",") if b.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    shard = tuple(int(x) for x in args.shard.split("/")) if args.shard else None
    teacher_dirs = {k: v for k, v in (("cnn", args.cnn), ("vit", args.vit)) if v}
    own_split = config.experiment.student_train_split
    own = (own_split, split_size(config.data, own_split)) if own_split else None
    started = time.time()
    results: dict[str, dict] = {}
    index = 0
    for budget in budgets:
        config.experiment.student_train_split = budget_split(config.data.train_split, budget, own)
        workdir = os.path.join(args.workdir, f"budget_{budget}")
        for title, changes in rows:
            first = index
            index += len(seeds)

            def mine(seed, first=first):  # Stages dealt round-robin, as in tools/screen.py.
                return (first + seeds.index(seed)) % shard[1] == shard[0]

            r = screen.run_row(config, title, changes, seeds, workdir, teacher_dirs,
                               train_only=mine if shard else None,
                               reuse_from=tuple(args.reuse))  # fmt: skip
            results.setdefault(str(budget), {})[title] = r
    if shard:
        return results
    md = table(results, args.split, seeds)
    plot(results, args.split, os.path.join(args.workdir, FIGURE))
    md += f"\n![top-1 against labelled clips]({FIGURE})\n"
    reporting.write_report(
        args.workdir, "label_budget",
        {"results": results, "split": args.split, "wall_seconds": time.time() - started}, md,
    )  # fmt: skip
    print(md, flush=True)
    return results


if __name__ == "__main__":
    main()
