"""Measures what each pretext task gives a backbone (docs/pretext.md has the table).

For every backbone and every ``task:complexity`` row, in one resumable workdir:

1. pretrain (``mode=pretrain``) on the pretraining data (default:
   ``synthetic_actions/long``, train split, labels unused) and measure the pretext
   accuracy on its held-out validation clips;
2. linear probe + retrieval (``mode=probe``) of the frozen backbone on the
   downstream data (default: ``synthetic_actions/default``): features of the
   labelled subset ``--labelled_split``, top-1 and recall@k on ``--eval_split``;
3. fine-tune (``mode=train`` with ``init_checkpoint``) on the labelled subset and
   evaluate on ``--eval_split``.

Each backbone also gets a ``random init`` row (the same probe of an untrained
backbone, and training from scratch), the baseline pretraining must beat. The
downstream split used for tuning is validation; pass ``--eval_split=test`` only
for the final table. Every stage skips when finished, so an interrupted run
resumes. Writes ``<workdir>/pretext_table.md`` and ``.json``.

  python tools/pretext_table.py --workdir runs/pretext --backbones x3d/mini \
      --eval_split test
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

ALL_ROWS = "rotnet:1,rotnet:2,rotnet:3,vcop:1,vcop:2,vcop:3,prp:1,prp:2,prp:3,rspnet:3,cvrl:3,tdl:3"


def pretrain_config(args, backbone: str, task: str, complexity: int):
    from vkd_jax import config_lib

    c = config_lib.default_config()
    c.mode = "pretrain"
    c.seed = args.seed
    c.student.name, c.student.variant = backbone.split("/")
    c.data.builder_config = args.pretrain_data
    c.data.train_split = "train"
    c.data.num_frames = 8
    c.data.frame_stride = args.pretrain_stride
    c.pretext.task, c.pretext.complexity = task, complexity
    c.train.batch_size = args.pretrain_batch
    c.train.num_steps = args.pretrain_steps
    c.train.eval_batch_size = 32
    c.optim.learning_rate = args.pretrain_lr
    config_lib.validate(c)
    return c


def downstream_config(args, backbone: str, mode: str, init: str = ""):
    from vkd_jax import config_lib

    c = config_lib.default_config()
    c.mode = mode
    c.seed = args.seed
    c.student.name, c.student.variant = backbone.split("/")
    c.data.train_split = args.labelled_split
    c.data.eval_split = args.eval_split
    c.train.num_steps = args.finetune_steps
    c.init_checkpoint = init
    config_lib.validate(c)
    return c


def random_model(args, backbone: str, path: str) -> str:
    """An untrained backbone as a model directory (the probe's baseline)."""
    import jax
    import jax.numpy as jnp

    from vkd_jax import checkpoint, models, stages
    from vkd_jax.data import pipeline

    if os.path.isfile(os.path.join(path, checkpoint.METADATA_FILE)):
        return path
    c = downstream_config(args, backbone, "probe")
    info = pipeline.dataset_info(c.data)
    module = models.get_model(
        c.student.name,
        variant=c.student.variant,
        num_classes=info.num_classes,
        input_size=(8, 32, 32),
    )
    sample = jnp.zeros((1, 8, 32, 32, 3))
    variables = module.init(jax.random.key(args.seed), sample, train=False)
    meta = stages.model_metadata(c, c.student, info.num_classes)
    meta["stage"] = "random_init"
    checkpoint.save_model(path, variables, meta)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--backbones", default="x3d/mini")
    parser.add_argument("--rows", default=ALL_ROWS, help="task:complexity, comma-separated")
    parser.add_argument("--pretrain_data", default="long", help="synthetic_actions config")
    # 2, as the downstream clips: every other frame of `long` moves as far (in frame widths)
    # as every other frame of `default`.
    parser.add_argument("--pretrain_stride", type=int, default=2)
    parser.add_argument("--pretrain_batch", type=int, default=16, help="videos per step")
    parser.add_argument("--pretrain_steps", type=int, default=300)
    parser.add_argument("--pretrain_lr", type=float, default=5e-3)
    parser.add_argument("--labelled_split", default="train[:12.5%]")
    parser.add_argument("--eval_split", default="validation")
    parser.add_argument("--finetune_steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip_finetune", action="store_true")
    parser.add_argument(
        "--table_only", action="store_true", help="only rewrite the table from finished rows"
    )
    args = parser.parse_args()

    import tensorflow as tf
    from absl import logging

    tf.config.set_visible_devices([], "GPU")
    from vkd_jax import main as cli
    from vkd_jax import modes

    # Progress lines (steps/s, ETA) as the CLI prints them, without the libraries' chatter.
    logging.set_verbosity(logging.INFO)
    logging.get_absl_handler().addFilter(cli._OwnInfoOnly())

    if args.table_only:
        write(args, collect(args))
        return
    rows = []
    for backbone in args.backbones.split(","):
        root = os.path.join(args.workdir, backbone.replace("/", "_"))
        runs = [("random init", None, None)] + [
            (r, r.split(":")[0], int(r.split(":")[1])) for r in args.rows.split(",")
        ]
        for label, task, complexity in runs:
            tag = "random" if task is None else f"{task}_c{complexity}"
            row = {"backbone": backbone, "row": label, "task": task, "complexity": complexity}
            started = time.time()
            if task is None:
                model = random_model(args, backbone, os.path.join(root, tag, "model"))
            else:
                pre = modes.run(
                    pretrain_config(args, backbone, task, complexity), os.path.join(root, tag)
                )
                model = os.path.join(root, tag, "model")
                row.update(
                    pretext_accuracy=pre["pretext_accuracy"],
                    chance=pre["chance"],
                    pretrain_seconds=pre["seconds"],
                )
            pr = modes.run(
                downstream_config(args, backbone, "probe", model), os.path.join(root, tag, "probe")
            )
            row.update({k: pr[k] for k in ("linear_probe_top1", "R@1", "R@5", "R@10")})
            if not args.skip_finetune:
                ft = modes.run(
                    downstream_config(args, backbone, "train", "" if task is None else model),
                    os.path.join(root, tag, "finetune"),
                )
                row["finetune_top1"] = ft["top1"]
            row["seconds"] = time.time() - started
            rows.append(row)
            write(args, collect(args))
            print(json.dumps(row), flush=True)
    write(args, collect(args))


def collect(args) -> list[dict]:
    """Every finished row under the workdir for ``--backbones``, in the canonical order.

    Rows come from the stages' own result files, so tables of several invocations
    (other rows, other backbones) add up instead of overwriting each other.
    """
    order = ["random"] + [f"{r.split(':')[0]}_c{r.split(':')[1]}" for r in ALL_ROWS.split(",")]
    order += [f"{t}_c{c}" for t in ("rspnet", "cvrl", "tdl") for c in (1, 2)]
    rows = []
    for backbone in args.backbones.split(","):
        root = os.path.join(args.workdir, backbone.replace("/", "_"))
        for tag in order:
            probe_file = os.path.join(root, tag, "probe", "probe.json")
            if not os.path.isfile(probe_file):
                continue
            with open(probe_file) as f:
                pr = json.load(f)
            task, complexity = (None, None) if tag == "random" else tag.rsplit("_c", 1)
            row = {
                "backbone": backbone,
                "row": "random init" if task is None else tag,
                "task": task,
                "complexity": None if task is None else int(complexity),
            }
            row.update({k: pr[k] for k in ("linear_probe_top1", "R@1", "R@5", "R@10")})
            if task is not None:
                with open(os.path.join(root, tag, "pretext.json")) as f:
                    pre = json.load(f)
                row.update(
                    pretext_accuracy=pre["pretext_accuracy"],
                    chance=pre["chance"],
                    pretrain_seconds=pre["seconds"],
                )
            ft_file = os.path.join(root, tag, "finetune", "eval.json")
            if os.path.isfile(ft_file):
                with open(ft_file) as f:
                    row["finetune_top1"] = json.load(f)["top1"]
            rows.append(row)
    return rows


def write(args, rows) -> None:
    os.makedirs(args.workdir, exist_ok=True)
    with open(os.path.join(args.workdir, "pretext_table.json"), "w") as f:
        json.dump({"args": vars(args), "rows": rows}, f, indent=2)
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"
    lines = [
        f"Downstream: `{args.labelled_split}` of synthetic_actions/default (labelled), "
        f"evaluated on `{args.eval_split}`. Pretraining: synthetic_actions/{args.pretrain_data} "
        f"train, {args.pretrain_steps} steps of {args.pretrain_batch} videos.",
        "",
        "| backbone | pretext | pretext acc. % (chance) | fine-tune top-1 % | linear probe "
        "top-1 % | R@1 % | R@5 % | pretrain s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        name = r["row"]
        if r["task"] is not None:
            contrastive = r["task"] in ("rspnet", "cvrl", "tdl")
            name = r["task"] if contrastive else f"{r['task']} C{r['complexity']}"
        acc = "-" if r["task"] is None else f"{pct(r['pretext_accuracy'])} ({pct(r['chance'])})"
        lines.append(
            f"| {r['backbone']} | {name} | {acc} | {pct(r.get('finetune_top1'))} | "
            f"{pct(r['linear_probe_top1'])} | {pct(r['R@1'])} | {pct(r['R@5'])} | "
            f"{r.get('pretrain_seconds', 0):.0f} |"
        )
    with open(os.path.join(args.workdir, "pretext_table.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
