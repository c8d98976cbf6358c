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

import os
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from vkd_jax import config_lib, evaluation, reporting, rundir, stages, train
from vkd_jax.data import pipeline
from vkd_jax.losses import objective

# Ablation rows of the dual-teacher method, as overrides of config.loss. Each row
# adds one component to the one above it (the paper's ablation order).
ABLATIONS: Mapping[str, dict[str, Any]] = {
    "scratch": {},  # Handled by stages.supervised_loss.
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
    # Controls and published peers of DATW (docs/design.md eqs. D6-D9), logit KD only,
    # not in the paper's table: add them with --config.ablation.variants. "fixed" takes
    # ablation.fixed_weights (e.g. DATW's mean weights from the datw row's results), or
    # loss.teacher_weights when that is empty.
    "fixed": dict(
        teacher_weighting="fixed", sdd_weight=0.0, rkd_distance_weight=0.0, rkd_angle_weight=0.0
    ),
    "oracle": dict(
        teacher_weighting="oracle", sdd_weight=0.0, rkd_distance_weight=0.0, rkd_angle_weight=0.0
    ),
    "ca_mkd": dict(
        teacher_weighting="ca_mkd",
        datw=dict(place="per_teacher"),
        sdd_weight=0.0,
        rkd_distance_weight=0.0,
        rkd_angle_weight=0.0,
    ),
    # EBKD's entropies at temperature 1 (the teachers' own softmax), not at the KD's T.
    "ebkd": dict(
        teacher_weighting="ebkd",
        datw=dict(confidence_temperature=1.0),
        sdd_weight=0.0,
        rkd_distance_weight=0.0,
        rkd_angle_weight=0.0,
    ),
}

ABLATION_TITLES = {
    "scratch": "Student from scratch",
    "kd_cnn": "KD from CNN teacher",
    "kd_vit": "KD from ViT teacher",
    "uniform_dual": "Dual teacher, uniform weights",
    "datw": "+ DATW",
    "datw_sdd": "+ DATW + SDD",
    "datw_sdd_rkd": "+ DATW + SDD + RKD (full)",
    "fixed": "Dual teacher, fixed weights (control)",
    "oracle": "Dual teacher, oracle per clip (control, uses labels)",
    "ca_mkd": "Dual teacher, CA-MKD (per-teacher KL)",
    "ebkd": "Dual teacher, EBKD",
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
                loss=stages.supervised_loss(config.loss),
                num_steps=spec.num_steps or config.experiment.teacher_num_steps,
            )
            teacher_config = config
            if spec.learning_rate:
                teacher_config = ml_collections.ConfigDict(config.to_dict())
                teacher_config.optim.learning_rate = spec.learning_rate
            summaries[name] = train.run(teacher_config, stage)
            spec.checkpoint = os.path.join(stage.workdir, "model")
        specs[name] = spec
    return specs, summaries


def _evaluate_checkpoint(config, path: str, workdir: str, name: str) -> dict[str, Any]:
    outdir = os.path.join(workdir, f"teacher_{name}")
    stored = evaluation.stored_evaluation(outdir, config)  # For this split and these views.
    if stored is not None:
        return stored
    return evaluation.evaluate_checkpoint(
        config, path, outdir, what=f"teacher {name!r}", stage=f"teacher_{name}"
    )


def student_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config the students' stages train with: ``optim.learning_rate`` replaced by
    ``experiment.student_learning_rate`` when that is set (the teachers keep the former),
    which is then 0, so folding twice changes nothing and a later ``optim.learning_rate``
    override wins. The stage records the learning rate it used, so a stage trained either
    way is found by its settings."""
    lr = config.experiment.get("student_learning_rate", 0.0)
    if not lr:
        return config
    cfg = ml_collections.ConfigDict(config.to_dict())
    cfg.optim.learning_rate = float(lr)
    cfg.experiment.student_learning_rate = 0.0
    return cfg


def run_experiment(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """The default dual-teacher experiment; returns (and writes) the results."""
    pipeline.load_builder(config.data)  # Builds the dataset once, before any stage.
    teacher_specs, teacher_summaries = _teacher_stages(config, workdir)
    students = student_config(config)
    scratch = train.run(
        students,
        train.Stage(
            name="student_scratch",
            workdir=os.path.join(workdir, "student_scratch"),
            model=config.student,
            loss=stages.supervised_loss(config.loss),
            num_steps=config.train.num_steps,
            train_split=config.experiment.student_train_split,
        ),
    )
    distill = train.run(
        students,
        train.Stage(
            name="student_distill",
            workdir=os.path.join(workdir, "student_distill"),
            model=config.student,
            loss=config.loss,
            num_steps=config.train.num_steps,
            teachers=teacher_specs,
            train_split=config.experiment.student_train_split,
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
        "teacher_weighting": config.loss.teacher_weighting,
    }
    if config.experiment.run_cka:
        from vkd_jax import cka_maps  # Imports matplotlib; only when maps are wanted.

        results["cka"] = cka_maps.experiment_maps(config, workdir, teacher_specs)
    results["efficiency"] = efficiency(
        distill, teacher_summaries, batch_size=config.eval.latency_batch_size
    )
    markdown = _results_markdown(rows, results)
    markdown += "\n".join(rundir.settings_markdown(config, config_lib.default_config())) + "\n"
    _write_results(workdir, results, markdown)
    print(markdown)
    return results


def efficiency(
    student: dict[str, Any], teachers: dict[str, dict[str, Any]], *, batch_size: int
) -> dict[str, Any]:
    """The deployment comparison of the dual-teacher paper ("Revisiting Cross-Architecture
    Distillation: Adaptive Dual-Teacher Transfer for Lightweight Video Models"): the
    student's parameters, MACs and CPU latency against each teacher's, with the
    reductions in percent (positive = the student is smaller or faster)."""

    def cost(s):
        return {
            "model": s["model"],
            "params": int(s["params"]),
            "gmacs": float(s["gmacs"]),
            "latency_ms": float(s["latency"]["median_ms"]),
        }

    out = {"batch_size": int(batch_size), "student": cost(student), "teachers": {}}
    for name, t in teachers.items():
        c = cost(t)
        c["reduction_pct"] = {
            key: 100.0 * (1.0 - out["student"][key] / c[key]) if c[key] else None
            for key in ("params", "gmacs", "latency_ms")
        }
        out["teachers"][name] = c
    return out


def efficiency_markdown(eff: dict[str, Any]) -> list[str]:
    s = eff["student"]
    lines = [
        "",
        f'Efficiency (the comparison of "Revisiting Cross-Architecture Distillation: '
        f'Adaptive Dual-Teacher Transfer for Lightweight Video Models"; latency: median '
        f"of the jitted forward at batch "
        f"{eff['batch_size']} on this machine's CPU):",
        "",
        "| Model | Architecture | Params | GMACs | Latency ms | Student's reduction: params / "
        "GMACs / latency |",
        "|---|---|---|---|---|---|",
        f"| Student | {s['model']} | {s['params']:,} | {s['gmacs']:.4f} | {s['latency_ms']:.2f} "
        "| - |",
    ]
    for name, t in eff["teachers"].items():
        r = t["reduction_pct"]
        shown = " / ".join("-" if r[k] is None else f"{r[k]:.0f}%" for k in r)
        lines.append(
            f"| Teacher `{name}` | {t['model']} | {t['params']:,} | {t['gmacs']:.4f} | "
            f"{t['latency_ms']:.2f} | {shown} |"
        )
    return lines


def parse_datw_variant(text: str, datw: ml_collections.ConfigDict) -> dict[str, Any]:
    """``"confidence_temperature=1.0; discrepancy='js'"`` -> its keys of ``loss.datw``.

    Raises:
      ValueError: an item is not ``key=value``, names no key of loss.datw, or gives a
        value of another type than the key's.
    """
    out = config_lib.parse_assignments(text, what="ablation.datw")
    for key, parsed in out.items():
        if key not in datw:
            raise ValueError(
                f"ablation.datw: {key!r} is not one of loss.datw's keys "
                f"({', '.join(sorted(datw))})"
            )
        if isinstance(datw[key], float) and isinstance(parsed, int):
            out[key] = parsed = float(parsed)
        if type(parsed) is not type(datw[key]):
            raise ValueError(
                f"ablation.datw: {key} takes a {type(datw[key]).__name__}, got {parsed!r}"
            )
    return out


def ablation_row_loss(
    config: ml_collections.ConfigDict, variant: str, datw_variant: dict[str, Any]
) -> ml_collections.ConfigDict:
    """The loss config of the ablation row ``variant`` (a key of ``ABLATIONS``).

    ``datw_variant`` (from :func:`parse_datw_variant`) acts on the rows that weight by
    DATW only, ``config.ablation.fixed_weights`` on the ``fixed`` row only: the other
    rows keep their recorded settings and stay reusable from a screen.
    """
    if variant == "scratch":
        return stages.supervised_loss(config.loss)
    loss = ml_collections.ConfigDict(config.loss.to_dict())
    loss.update(ABLATIONS[variant])
    if loss.teacher_weighting == "datw":
        loss.datw.update(datw_variant)
    if variant == "fixed" and config.ablation.get("fixed_weights"):
        loss.teacher_weights = tuple(config.ablation.fixed_weights)
    return loss


def run_ablation(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """The ablation table over ``config.ablation.seeds``; returns (and writes) it."""
    pipeline.load_builder(config.data)
    unknown = [v for v in config.ablation.variants if v not in ABLATIONS]
    if unknown:
        raise ValueError(f"Unknown ablation variants {unknown}; known: {list(ABLATIONS)}")
    datw_variant = parse_datw_variant(config.ablation.get("datw", ""), config.loss.datw)
    teacher_specs, teacher_summaries = _teacher_stages(config, workdir)
    seconds = sum(s.get("seconds", 0.0) for s in teacher_summaries.values())
    table: dict[str, list[dict[str, Any]]] = {}
    for variant in config.ablation.variants:
        for seed in config.ablation.seeds:
            cfg = ml_collections.ConfigDict(student_config(config).to_dict())
            cfg.seed = int(seed)
            loss = ablation_row_loss(config, variant, datw_variant)
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
                    train_split=config.experiment.student_train_split,
                ),
                reuse_from=tuple(config.ablation.get("reuse_from", ())),
            )
            table.setdefault(variant, []).append(summary)
            seconds += summary.get("seconds", 0.0)
    top1 = {v: [r["top1"] for r in rows] for v, rows in table.items()}
    verdicts = claim_verdicts(top1, teacher_summaries)
    markdown = ablation_markdown(config, top1, teacher_summaries, verdicts, seconds)
    results = {
        "ablation": top1,
        "seconds": seconds,
        "teachers": teacher_summaries,
        "verdicts": verdicts,
    }
    _write_results(workdir, results, markdown, name="ablation")
    print(markdown)
    return results


# The dual-teacher paper's claims, each as (claim, row, rows compared with): the row is
# compared with the best (by mean) of the compared rows, paired by seed, under the verdict
# rule of vkd_jax.reporting. "cnn"/"vit" compare with a teacher (one run, no spread).
CLAIMS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("Two teachers beat the best single teacher (uniform KD)", "uniform_dual",
     ("kd_cnn", "kd_vit")),
    ("The full method beats the best single teacher", "datw_sdd_rkd", ("kd_cnn", "kd_vit")),
    ("DATW beats uniform teacher weighting", "datw", ("uniform_dual",)),
    ("SDD adds to DATW", "datw_sdd", ("datw",)),
    ("RKD adds to DATW + SDD", "datw_sdd_rkd", ("datw_sdd",)),
    ("The distilled student beats the student from scratch", "datw_sdd_rkd", ("scratch",)),
    ("The distilled student beats its ViT teacher", "datw_sdd_rkd", ("vit",)),
)  # fmt: skip


def claim_verdicts(
    table: Mapping[str, list[float]], teachers: Mapping[str, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Each claim of :data:`CLAIMS` whose rows were run, with its paired verdict.

    Args:
      table: ablation row -> top-1 (fractions), one per seed, every row on the same
        seeds in the same order.
      teachers: teacher name -> evaluation summary (``top1``).

    Returns:
      Dicts with ``claim``, ``row``, ``compared_with`` (the compared row with the best
      mean), ``difference`` (points: the mean per-seed difference), ``std``, ``low``,
      ``high`` (its 95% t-interval), ``n``, ``differences`` and ``verdict``
      (``reporting.HOLDS``, ``NOT_SHOWN`` or ``OPPOSITE``; docs/design.md, "The verdict rule").
    """
    values: dict[str, Any] = {row: 100 * np.asarray(v, np.float64) for row, v in table.items()}
    for name, summary in teachers.items():
        values.setdefault(name, np.float64(100 * float(summary["top1"])))
    out = []
    for claim, row, others in CLAIMS:
        if row not in values or not all(o in values for o in others):
            continue
        best = max(others, key=lambda o: float(np.mean(values[o])))
        c = reporting.paired_comparison(values[row], values[best])
        out.append(dict(claim=claim, row=row, compared_with=best, difference=c.mean,
                        **{k: v for k, v in c.to_dict().items() if k != "mean"}))  # fmt: skip
    return out


def ablation_markdown(config, top1, teacher_summaries, verdicts, seconds: float) -> str:
    """The ablation table (mean ± std over seeds) and the claims' verdicts, as Markdown.

    ``top1``: ablation row -> top-1 (fractions) over seeds; ``verdicts``: from
    :func:`claim_verdicts`.
    """
    seeds = len(config.ablation.seeds)
    split = config.experiment.student_train_split or config.data.train_split
    lines = [
        f"Ablation of the dual-teacher objective on `{config.data.name}`: top-1 % on "
        f"`{config.data.eval_split}`, mean ± std over {seeds} seeds; students trained on "
        f"`{split}` for {config.train.num_steps} steps; {seconds / 60:.1f} min of stage "
        "wall time in all (the stages' own runs).",
        "",
    ]
    rows = [
        (f"Teacher `{n}` ({s['model']})", reporting.fmt_mean_std([s["top1"]]), 1)
        for n, s in teacher_summaries.items()
    ]
    rows += [
        (ABLATION_TITLES[v], reporting.fmt_mean_std(accs), len(accs)) for v, accs in top1.items()
    ]
    lines += reporting.markdown_table(("Setting", "Top-1 %", "Seeds"), rows)
    if verdicts:
        lines.append("")
        lines += reporting.markdown_table(
            ("Claim of the paper", "Compared with", "Paired difference, points [95% CI]",
             "Verdict here"),
            [(v["claim"], v["compared_with"], reporting.fmt_comparison(
                dict(v, mean=v["difference"])), v["verdict"]) for v in verdicts],
        )  # fmt: skip
        lines += ["", reporting.VERDICT_RULE]
    return "\n".join(lines) + "\n"


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
        "| Model | Architecture | Train split | Top-1 % | Top-5 % | Params | GMACs | "
        "Latency ms (CPU) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for title, s in rows:
        lines.append(
            f"| {title} | {s['model']} | `{s.get('train_split', '')}` | {100 * s['top1']:.1f} | "
            f"{100 * s['top5']:.1f} | {s['params']:,} | {s['gmacs']:.4f} | "
            f"{s['latency']['median_ms']:.2f} |"
        )
    lines += [
        "",
        f"Distillation objective: {results['objective']}",
        f"Distilled student vs scratch: {100 * results['student_gain_top1']:+.1f} top-1 points",
    ]
    if "efficiency" in results:
        lines += efficiency_markdown(results["efficiency"])
    datw = results["models"]["student_distill"].get("datw")
    if datw:
        weighting = results.get("teacher_weighting", "datw")
        title = (
            "What DATW did"
            if weighting == "datw"
            else f"The teachers' weights ({weighting}) and DATW's terms, logged for comparison"
        )
        lines += [
            "",
            f"{title} (means over the second half of training; "
            "[figure](student_distill/mechanism.png)):",
            "",
            "| Teacher | weight | confidence c_k | discrepancy d_k | corr(w, c) | corr(w, d) |",
            "|---|---|---|---|---|---|",
        ]
        for name, st in datw.items():
            cells = [st.get(k) for k in ("weight", "confidence", "discrepancy",
                                         "corr_confidence", "corr_discrepancy")]  # fmt: skip
            shown = " | ".join("-" if c is None else f"{c:.3f}" for c in cells)
            lines.append(f"| `{name}` | {shown} |")
    return "\n".join(lines) + "\n"


def _write_results(workdir, results, markdown, name="results") -> None:
    if jax.process_index() != 0:
        return
    reporting.write_report(workdir, name, results, markdown)
    logging.info("Wrote %s", os.path.join(workdir, f"{name}.md"))
