"""Multi-stage runs in one workdir, each stage resumable and skipped when done.

``experiment`` (the default): train the CNN teacher, train the ViT teacher,
train the student from scratch (the baseline), distill the student from both
teachers with the configured objective (DATW + SDD + RKD), evaluate all, write
CKA maps, then ``results.md`` / ``results.json``.

``ablation``: the dual-teacher ablation table (scratch, KD from the CNN
teacher, KD from the ViT teacher, uniform dual teacher, +DATW, +SDD, +RKD) over
several seeds, sharing the teachers, reported as mean and standard deviation.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from vkd_jax import train
from vkd_jax.data import pipeline
from vkd_jax.losses import objective

# Ablation rows of the dual-teacher method, as overrides of config.loss. Each row
# adds one component to the one above it (the paper's ablation order).
ABLATIONS: Mapping[str, dict[str, Any]] = {
    "scratch": {},  # Handled by train.supervised_loss.
    "kd_cnn": dict(
        kd_teachers=("cnn",),
        teacher_weighting="uniform",
        sdd_weight=0.0,
        rkd_distance_weight=0.0,
        rkd_angle_weight=0.0,
    ),
    "kd_vit": dict(
        kd_teachers=("vit",),
        teacher_weighting="uniform",
        sdd_weight=0.0,
        rkd_distance_weight=0.0,
        rkd_angle_weight=0.0,
    ),
    "uniform_dual": dict(
        teacher_weighting="uniform", sdd_weight=0.0, rkd_distance_weight=0.0, rkd_angle_weight=0.0
    ),
    "datw": dict(
        teacher_weighting="datw", sdd_weight=0.0, rkd_distance_weight=0.0, rkd_angle_weight=0.0
    ),
    "datw_sdd": dict(teacher_weighting="datw", rkd_distance_weight=0.0, rkd_angle_weight=0.0),
    "datw_sdd_rkd": dict(teacher_weighting="datw"),
}

ABLATION_TITLES = {
    "scratch": "Student from scratch",
    "kd_cnn": "KD from CNN teacher",
    "kd_vit": "KD from ViT teacher",
    "uniform_dual": "Dual teacher, uniform weights",
    "datw": "+ DATW",
    "datw_sdd": "+ DATW + SDD",
    "datw_sdd_rkd": "+ DATW + SDD + RKD (full)",
}


def _teacher_stages(config, workdir) -> tuple[dict[str, Any], dict[str, Any]]:
    """Trains (or reuses) every teacher the objective needs.

    Returns:
      ``(teacher_specs, summaries)``: specs with ``checkpoint`` filled in, and
      each teacher's evaluation summary.
    """
    needed = objective.required_teachers(ml_collections.FrozenConfigDict(config.loss))
    specs, summaries = {}, {}
    for name in needed:
        if name not in config.teachers:
            raise ValueError(
                f"config.loss needs teacher {name!r}, but config.teachers has "
                f"{sorted(config.teachers)}"
            )
        spec = ml_collections.ConfigDict(config.teachers[name].to_dict())
        if spec.checkpoint:  # A given (e.g. converted) teacher: evaluate, don't train.
            summaries[name] = _evaluate_checkpoint(config, spec.checkpoint, workdir, name)
        else:
            stage = train.Stage(
                name=f"teacher_{name}",
                workdir=os.path.join(workdir, f"teacher_{name}"),
                model=spec,
                loss=train.supervised_loss(config.loss),
                num_steps=config.experiment.teacher_num_steps,
            )
            summaries[name] = train.run(config, stage)
            spec.checkpoint = os.path.join(stage.workdir, "model")
        specs[name] = spec
    return specs, summaries


def _evaluate_checkpoint(config, path: str, workdir: str, name: str) -> dict[str, Any]:
    outdir = os.path.join(workdir, f"teacher_{name}")
    eval_path = os.path.join(outdir, train.EVAL_FILE)
    if os.path.isfile(eval_path):
        with open(eval_path) as f:
            return json.load(f)
    return train.evaluate_checkpoint(
        config, path, outdir, what=f"teacher {name!r}", stage=f"teacher_{name}"
    )


def run_experiment(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """The default dual-teacher experiment; returns (and writes) the results."""
    pipeline.load_builder(config.data)  # Builds the dataset once, before any stage.
    teacher_specs, teacher_summaries = _teacher_stages(config, workdir)
    scratch = train.run(
        config,
        train.Stage(
            name="student_scratch",
            workdir=os.path.join(workdir, "student_scratch"),
            model=config.student,
            loss=train.supervised_loss(config.loss),
            num_steps=config.train.num_steps,
        ),
    )
    distill = train.run(
        config,
        train.Stage(
            name="student_distill",
            workdir=os.path.join(workdir, "student_distill"),
            model=config.student,
            loss=config.loss,
            num_steps=config.train.num_steps,
            teachers=teacher_specs,
        ),
    )
    rows = [(f"Teacher `{n}`", s) for n, s in teacher_summaries.items()]
    rows += [("Student from scratch", scratch), ("Student distilled", distill)]
    results = {
        "models": {
            **{f"teacher_{n}": s for n, s in teacher_summaries.items()},
            "student_scratch": scratch,
            "student_distill": distill,
        },
        "student_gain_top1": distill["top1"] - scratch["top1"],
        "objective": _objective_description(config.loss),
    }
    if config.experiment.run_cka:
        from vkd_jax import cka_maps  # Imports matplotlib; only when maps are wanted.

        results["cka"] = cka_maps.experiment_maps(config, workdir, teacher_specs)
    markdown = _results_markdown(rows, results)
    _write_results(workdir, results, markdown)
    print(markdown)
    return results


def run_ablation(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """The ablation table over ``config.ablation.seeds``; returns (and writes) it."""
    pipeline.load_builder(config.data)
    unknown = [v for v in config.ablation.variants if v not in ABLATIONS]
    if unknown:
        raise ValueError(f"Unknown ablation variants {unknown}; known: {list(ABLATIONS)}")
    teacher_specs, teacher_summaries = _teacher_stages(config, workdir)
    table: dict[str, list[float]] = {}
    for variant in config.ablation.variants:
        for seed in config.ablation.seeds:
            cfg = ml_collections.ConfigDict(config.to_dict())
            cfg.seed = int(seed)
            if variant == "scratch":
                loss = train.supervised_loss(config.loss)
            else:
                loss = ml_collections.ConfigDict(config.loss.to_dict())
                loss.update(ABLATIONS[variant])
            needed = objective.required_teachers(ml_collections.FrozenConfigDict(loss))
            summary = train.run(
                cfg,
                train.Stage(
                    name=f"{variant}_seed{seed}",
                    workdir=os.path.join(workdir, "ablation", f"{variant}_seed{seed}"),
                    model=config.student,
                    loss=loss,
                    num_steps=config.train.num_steps,
                    teachers={n: teacher_specs[n] for n in needed},
                ),
            )
            table.setdefault(variant, []).append(summary["top1"])
    lines = [
        f"Ablation of the dual-teacher objective on `{config.data.name}` "
        f"({len(config.ablation.seeds)} seeds, top-1 %, mean ± std)",
        "",
        "| Setting | Top-1 | Seeds |",
        "|---|---|---|",
    ]
    for n, s in teacher_summaries.items():
        lines.append(f"| Teacher `{n}` ({s['model']}) | {100 * s['top1']:.1f} | 1 |")
    for variant, accs in table.items():
        a = 100 * np.asarray(accs)
        std = a.std(ddof=1) if len(a) > 1 else 0.0
        lines.append(f"| {ABLATION_TITLES[variant]} | {a.mean():.1f} ± {std:.1f} | {len(a)} |")
    markdown = "\n".join(lines) + "\n"
    results = {"ablation": table, "teachers": teacher_summaries}
    _write_results(workdir, results, markdown, name="ablation")
    print(markdown)
    return results


def _objective_description(loss) -> str:
    terms = [f"{loss.ce_weight} CE"]
    if loss.kd_weight:
        teachers = ", ".join(loss.kd_teachers)
        terms.append(f"{loss.kd_weight} KD[{loss.teacher_weighting}; {teachers}]")
    if loss.sdd_weight:
        terms.append(f"{loss.sdd_weight} SDD")
    if loss.rkd_distance_weight:
        terms.append(f"{loss.rkd_distance_weight} RKD-D")
    if loss.rkd_angle_weight:
        terms.append(f"{loss.rkd_angle_weight} RKD-A")
    return " + ".join(terms)


def _results_markdown(rows, results) -> str:
    lines = [
        "| Model | Architecture | Top-1 % | Top-5 % | Params | GMACs | Latency ms (CPU) |",
        "|---|---|---|---|---|---|---|",
    ]
    for title, s in rows:
        lines.append(
            f"| {title} | {s['model']} | {100 * s['top1']:.1f} | {100 * s['top5']:.1f} | "
            f"{s['params']:,} | {s['gmacs']:.4f} | {s['latency']['median_ms']:.2f} |"
        )
    lines += [
        "",
        f"Distillation objective: {results['objective']}",
        f"Distilled student vs scratch: {100 * results['student_gain_top1']:+.1f} top-1 points",
    ]
    return "\n".join(lines) + "\n"


def _write_results(workdir, results, markdown, name="results") -> None:
    if jax.process_index() != 0:
        return
    with open(os.path.join(workdir, f"{name}.json"), "w") as f:
        json.dump(results, f, indent=2, default=str)
    with open(os.path.join(workdir, f"{name}.md"), "w") as f:
        f.write(markdown)
    logging.info("Wrote %s", os.path.join(workdir, f"{name}.md"))
