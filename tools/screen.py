"""Screen settings of the student on the validation split, with paired seeds.

Each ``--row "title: key=value; ..."`` is a student stage of the config with those
overrides (full config keys: ``loss.temperature=2.0``, ``optim.learning_rate=1e-2``;
``scratch=True`` trains without teachers), run once per seed of ``--seeds`` with the
given teachers (``--cnn``, ``--vit`` model directories; trained once and shared).
Every row is compared with the first (the baseline) by the paired per-seed rule of
:mod:`vkd_jax.reporting` (docs/design.md eq. V1), on ``--split`` (``validation``;
the test split is refused unless ``--report`` says the rows were already chosen on
validation and are being reported, e.g. a final table's extra row). ``--preset`` gives the
rows of one phase of docs/science.md's plan, in the order the issue asks for:

* ``recipe``: the student from scratch (learning rate, steps, weight decay, label
  smoothing), tuned before anything else;
* ``kd``: the shared KD settings (temperature, KD weight) for uniform dual-teacher KD;
* ``components``: the teacher weightings (DATW and its variants, the controls,
  CA-MKD, EBKD) on top of uniform dual KD, then SDD's and RKD's forms.

Writes ``<workdir>/screen.md`` and ``screen.json``; finished stages are reused, so an
interrupted screen resumes.

    python tools/screen.py --preset components --seeds 0,1 --workdir runs/screen \\
        --cnn runs/default/teacher_cnn/model --vit runs/default/teacher_vit/model
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from vkd_jax import reporting  # noqa: E402

# Every row names each component's weight, whatever the config's defaults are.
_OFF = "loss.sdd_weight=0.0; loss.rkd_distance_weight=0.0; loss.rkd_angle_weight=0.0"
_UNIFORM = f"loss.teacher_weighting='uniform'; {_OFF}"
_SDD = "loss.sdd_weight=1.0; loss.rkd_distance_weight=0.0; loss.rkd_angle_weight=0.0"
_RKD = "loss.sdd_weight=0.0; loss.rkd_distance_weight=1.0; loss.rkd_angle_weight=2.0"

PRESETS = {
    "recipe": [
        "scratch, lr 5e-3 (the recipe before the screen): scratch=True; "
        "optim.learning_rate=5e-3",
        "lr 2e-3: scratch=True; optim.learning_rate=2e-3",
        "lr 1e-2: scratch=True; optim.learning_rate=1e-2",
        "600 steps: scratch=True; train.num_steps=600",
        "weight decay 1e-2: scratch=True; optim.weight_decay=1e-2",
        "label smoothing 0.1: scratch=True; loss.label_smoothing=0.1",
    ],
    "kd": [
        f"uniform dual, T 4, KD weight 1: {_UNIFORM}; loss.kd_weight=1.0",
        f"T 2: {_UNIFORM}; loss.temperature=2.0; loss.kd_weight=1.0",
        f"T 8: {_UNIFORM}; loss.temperature=8.0; loss.kd_weight=1.0",
        f"KD weight 0.5: {_UNIFORM}; loss.kd_weight=0.5",
        f"KD weight 2: {_UNIFORM}; loss.kd_weight=2.0",
    ],
    "components": [
        f"uniform dual: {_UNIFORM}",
        f"DATW original: loss.teacher_weighting='datw'; {_OFF}",
        f"DATW T_c 1, JS: loss.teacher_weighting='datw'; loss.datw.confidence_temperature=1.0; "
        f"loss.datw.discrepancy='js'; {_OFF}",
        f"fixed 0.55/0.45 (DATW's mean in the default run): loss.teacher_weighting='fixed'; "
        f"loss.teacher_weights=(0.55, 0.45); {_OFF}",
        f"oracle (control): loss.teacher_weighting='oracle'; {_OFF}",
        f"CA-MKD per teacher: loss.teacher_weighting='ca_mkd'; loss.datw.place='per_teacher'; "
        f"{_OFF}",
        f"EBKD: loss.teacher_weighting='ebkd'; loss.datw.confidence_temperature=1.0; {_OFF}",
        f"uniform + SDD residual: loss.teacher_weighting='uniform'; {_SDD}",
        f"uniform + SDD random projections: loss.teacher_weighting='uniform'; {_SDD}; "
        "loss.sdd.target='random_projections'",
        f"uniform + RKD from the ViT (1, 2): loss.teacher_weighting='uniform'; {_RKD}",
        f"uniform + RKD from the CNN: loss.teacher_weighting='uniform'; {_RKD}; "
        "loss.rkd.teacher='cnn'",
        "uniform + RKD 0.1/0.2: loss.teacher_weighting='uniform'; loss.sdd_weight=0.0; "
        "loss.rkd_distance_weight=0.1; loss.rkd_angle_weight=0.2",
    ],
}


def row_config(config, changes: dict) -> tuple[ml_collections.ConfigDict, bool]:
    """The config of one row and whether it trains from scratch."""
    from tools.config_cli import set_key
    from vkd_jax.experiment import student_config

    # The students' learning rate first, so that a row's own optim.learning_rate wins.
    cfg = ml_collections.ConfigDict(student_config(config).to_dict())
    scratch = bool(changes.pop("scratch", False))
    for key, value in changes.items():
        set_key(cfg, key, value)
    if "experiment.student_learning_rate" in changes:
        cfg = student_config(cfg)
    return cfg, scratch


def run_row(
    config, title: str, changes: dict, seeds, workdir: str, teacher_dirs, train_only=None,
    reuse_from=(),
) -> dict:
    """Trains (or reuses) the row's student once per seed; returns its top-1s and seconds.

    ``train_only(seed) -> bool``: with ``--shard``, the seeds this process trains (the
    others are left to the other shards and get no result here).
    """
    from vkd_jax import stages, train
    from vkd_jax.losses import objective

    cfg, scratch = row_config(config, dict(changes))
    loss = stages.supervised_loss(cfg.loss) if scratch else cfg.loss
    needed = objective.required_teachers(ml_collections.FrozenConfigDict(loss))
    missing = [n for n in needed if n not in teacher_dirs]
    if missing:
        raise SystemExit(f"screen: row {title!r} needs teachers {missing}: pass --cnn/--vit")
    teachers = {}
    for n in needed:
        spec = ml_collections.ConfigDict(cfg.teachers[n].to_dict())
        spec.checkpoint = teacher_dirs[n]
        teachers[n] = spec
    slug = "".join(c if c.isalnum() else "_" for c in title).strip("_")
    top1, seconds = [], 0.0
    for seed in seeds:
        if train_only is not None and not train_only(seed):
            continue
        cfg.seed = int(seed)
        summary = train.run(
            cfg,
            train.Stage(
                name=f"{title} seed {seed}",
                workdir=os.path.join(workdir, f"{slug}_seed{seed}"),
                model=cfg.student,
                loss=loss,
                num_steps=cfg.train.num_steps,
                teachers=teachers,
                train_split=cfg.experiment.student_train_split,
            ),
            reuse_from=reuse_from,
        )
        top1.append(float(summary["top1"]))
        seconds += float(summary.get("seconds", 0.0))
    return {"row": title, "changes": changes, "top1": top1, "seconds": seconds}


def table(rows: list[dict], split: str, seeds) -> str:
    """Mean ± std per row and each row's paired difference from the first."""
    base = rows[0]
    lines = [
        f"Screen on `{split}`: top-1 %, mean ± std over seeds {tuple(seeds)}; each row "
        f"against the first (`{base['row']}`), paired by seed.",
        "",
    ]
    body = []
    for r in rows:
        if r is base:
            diff, verdict = "-", "-"
        else:
            c = reporting.paired_comparison(
                100 * np.asarray(r["top1"]), 100 * np.asarray(base["top1"])
            )
            diff, verdict = reporting.fmt_comparison(c), c.verdict
        body.append(
            (r["row"], reporting.fmt_mean_std(r["top1"]), diff, verdict, f"{r['seconds']:.0f}")
        )
    lines += reporting.markdown_table(
        ("Row", "Top-1 %", "vs first, points [95% CI]", "Verdict", "Stage s"), body
    )
    lines += ["", reporting.VERDICT_RULE]
    return "\n".join(lines) + "\n"


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/default.py")
    parser.add_argument("--workdir", default="runs/screen")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None)
    parser.add_argument("--row", action="append", default=[], help="'title: key=value; ...'")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--cnn", default="", help="CNN teacher model directory")
    parser.add_argument("--vit", default="", help="ViT teacher model directory")
    parser.add_argument("--set", action="append", default=[], help="key=value for every row")
    parser.add_argument(
        "--shard",
        default="",
        help="I/N: train only every N-th (row, seed) stage from the I-th, so N processes "
        "share the 2 cores' work in one workdir; a run without --shard then writes the "
        "table from the finished stages",
    )
    parser.add_argument(
        "--reuse", action="append", default=[],
        help="folder with finished stages (another screen's): one recorded with a stage's "
        "exact settings is reused, not trained again",
    )  # fmt: skip
    parser.add_argument(
        "--report", action="store_true",
        help="allow the test split: the rows were chosen on validation and are reported",
    )  # fmt: skip
    args = parser.parse_args(argv)
    shard = None
    if args.shard:
        index, _, count = args.shard.partition("/")
        shard = (int(index), int(count))
        if not 0 <= shard[0] < shard[1]:
            raise SystemExit(f"screen: --shard {args.shard!r} is not I/N with 0 <= I < N")
    if args.split.startswith("test") and not args.report:
        raise SystemExit(
            "screen: the test split is for the final table only (pass --report to report "
            "rows already chosen on validation)"
        )
    from tools.config_cli import apply_sets, load_config, parse_row
    from vkd_jax.experiment import student_config

    # The students' learning rate folded into optim first, so that --set wins over it.
    config = student_config(load_config(args.config))
    config.experiment.run_cka = False
    config.data.eval_split = args.split
    config.eval.latency_iters = 1  # Latency is not what is screened.
    apply_sets(config, args.set)
    texts = (PRESETS[args.preset] if args.preset else []) + args.row
    if not texts:
        raise SystemExit("screen: give --preset or at least one --row")
    rows = [parse_row(t) for t in texts]
    for _title, changes in rows:  # Every row's keys are checked before any trains.
        row_config(config, dict(changes))
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    teacher_dirs = {k: v for k, v in (("cnn", args.cnn), ("vit", args.vit)) if v}
    os.makedirs(args.workdir, exist_ok=True)
    started = time.time()
    results = []
    for r, (title, changes) in enumerate(rows):
        if shard is not None:
            def mine(seed, r=r):  # Stages are dealt round-robin in (row, seed) order.
                return (r * len(seeds) + seeds.index(seed)) % shard[1] == shard[0]

            run_row(config, title, changes, seeds, args.workdir, teacher_dirs, train_only=mine,
                    reuse_from=tuple(args.reuse))  # fmt: skip
            continue
        results.append(run_row(config, title, changes, seeds, args.workdir, teacher_dirs,
                               reuse_from=tuple(args.reuse)))  # fmt: skip
        md = table(results, args.split, seeds)
        reporting.write_report(args.workdir, "screen", {"rows": results, "split": args.split,
                                                         "wall_seconds": time.time() - started},
                               md)  # fmt: skip
        print(md, flush=True)
    return results


if __name__ == "__main__":
    main()
