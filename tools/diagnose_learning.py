"""How fast does a model learn? One short supervised stage per row, validation top-1 each.

Each ``--row "title: key=value; key=value"`` trains the chosen model (the student or
a teacher of the config) from scratch with those overrides on top of the config and
prints its validation top-1, its last logged training loss and accuracy, and its wall
time. Keys are config keys (``optim.learning_rate=1e-2``,
``data.train_scale=(1.0,1.0)``) or, prefixed with ``model.``, hyperparameters of the
trained model's family (``model.se_ratio=0.0``, ``model.head='linear'``), so an
architecture change needs no new zoo variant. Rows are independent (each starts
from the config), so a row that changes one thing measures that one thing.

The rows are evaluated on ``--split`` (``validation`` by default); the test split
is refused: tuning on it would make every table that follows meaningless.

    python tools/diagnose_learning.py --model cnn --steps 300 --workdir runs/diagnose \\
        --set teachers.cnn.variant=tiny_m \\
        --row "baseline:" --row "no zero-init: model.zero_init_last_bn=False"

The tables of docs/results.md, "Why the tiny models learned slowly", came from this
tool.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import ml_collections  # noqa: E402

from tools.config_cli import (  # noqa: E402, F401 (parse_row/set_key: the tools import them here)
    apply_sets,
    load_config,
    parse_row,
    parse_value,
    set_key,
)
from vkd_jax import config_lib, mechanism, models, stages, train  # noqa: E402


def model_entry(config: ml_collections.ConfigDict, which: str) -> ml_collections.ConfigDict:
    if which == "student":
        return config.student
    if which not in config.teachers:
        raise ValueError(f"--model must be 'student' or a teacher ({sorted(config.teachers)})")
    return config.teachers[which]


def derived_variant(spec, overrides: dict[str, object], tag: str) -> str:
    """Registers ``<variant>+<tag>``: the variant with hyperparameter overrides."""
    family = models.family_module(spec.name)
    if spec.variant not in family.VARIANTS:
        raise ValueError(f"Unknown variant {spec.variant!r} of {spec.name}")
    name = f"{spec.variant}+{tag}"
    family.VARIANTS[name] = {**family.VARIANTS[spec.variant], **overrides}
    try:
        models.get_model(spec.name, variant=name, num_classes=2)  # Unknown fields fail here.
    except Exception:
        family.VARIANTS.pop(name)  # The zoo is left as it was.
        raise
    return name


def model_changes_of(changes) -> dict[str, object]:
    """The row's ``model.<field>`` changes, keyed by field."""
    return {k[len("model.") :]: v for k, v in changes.items() if k.startswith("model.")}


def row_config(base: ml_collections.ConfigDict, changes) -> ml_collections.ConfigDict:
    """A copy of ``base`` with the row's config (non-``model.``) changes, validated."""
    config = ml_collections.ConfigDict(base.to_dict())
    for key, value in changes.items():
        if not key.startswith("model."):
            set_key(config, key, value)
    if config.data.eval_split.split("[")[0] == "test":
        raise ValueError("Diagnosis rows are evaluated on a validation split, never on test")
    config_lib.validate(config)
    return config


def check_rows(base: ml_collections.ConfigDict, which: str, rows) -> None:
    """Fails before any training when a row names an unknown key, field or the test split.

    A typo in the last row would otherwise surface only after the others trained.
    """
    for title, changes in rows:
        try:
            spec = model_entry(row_config(base, changes), which)
            model_changes = model_changes_of(changes)
            if model_changes:
                name = derived_variant(spec, model_changes, "check")
                models.family_module(spec.name).VARIANTS.pop(name, None)
        except (KeyError, ValueError, TypeError) as err:
            raise ValueError(f"Row {title!r}: {err}") from err


def run_row(base: ml_collections.ConfigDict, which: str, title: str, changes, args) -> dict:
    config = row_config(base, changes)
    model_changes = model_changes_of(changes)
    spec = model_entry(config, which)
    tag = re.sub(r"[^A-Za-z0-9]+", "_", title).strip("_").lower() or "row"
    base_variant = spec.variant
    if model_changes:
        spec.variant = derived_variant(spec, model_changes, tag)
    start = time.time()
    workdir = os.path.join(args.workdir, tag)
    try:
        summary = train.run(
            config,
            train.Stage(
                name=tag,
                workdir=workdir,
                model=spec,
                loss=stages.supervised_loss(config.loss),
                num_steps=config.train.num_steps,
            ),
        )
    finally:
        if spec.variant != base_variant:  # The zoo is left as it was.
            models.family_module(spec.name).VARIANTS.pop(spec.variant, None)
    history = mechanism.read_history(workdir)
    last = history[-1] if history else {}
    return {
        "row": title,
        "changes": changes,
        "model": f"{spec.name}/{spec.variant}",
        "val_top1": summary["top1"],
        "train_loss": last.get("loss", float("nan")),
        "train_acc": last.get("accuracy", float("nan")),
        "params": summary["params"],
        "seconds": time.time() - start,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/default.py")
    parser.add_argument("--model", default="cnn", help="'student' or a teacher name")
    parser.add_argument("--steps", type=int, default=300, help="training steps of every row")
    parser.add_argument("--split", default="validation", help="split the rows are scored on")
    parser.add_argument("--workdir", default="runs/diagnose")
    parser.add_argument("--set", action="append", default=[], help="key=value for every row")
    parser.add_argument("--row", action="append", default=[], help="'title: key=value; ...'")
    args = parser.parse_args(argv)

    config = load_config(args.config)
    config.mode = "train"
    config.experiment.run_cka = False
    config.train.num_steps = args.steps
    config.data.eval_split = args.split
    config.eval.latency_iters = 1  # Latency is not what is measured here.
    apply_sets(config, args.set)
    rows = [parse_row(r) for r in (args.row or ["baseline:"])]
    check_rows(config, args.model, rows)
    print(f"command: python tools/diagnose_learning.py {' '.join(sys.argv[1:])}")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__} on "
        f"{jax.devices()[0].platform}; {args.steps} steps, batch {config.train.batch_size}, "
        f"scored on {args.split}"
    )
    print("| row | changes | model | val top-1 % | last train loss / acc | params | s |")
    print("|---|---|---|---|---|---|---|")
    results = []
    for title, changes in rows:
        r = run_row(config, args.model, title, changes, args)
        results.append(r)
        changed = "; ".join(f"{k}={v}" for k, v in changes.items()) or "-"
        print(
            f"| {title} | {changed} | {r['model']} | {100 * r['val_top1']:.1f} | "
            f"{r['train_loss']:.2f} / {r['train_acc']:.2f} | {r['params']:,} | "
            f"{r['seconds']:.0f} |",
            flush=True,
        )
    with open(os.path.join(args.workdir, "diagnosis.json"), "w") as f:
        json.dump(results, f, indent=2, default=str)


if __name__ == "__main__":
    main()
