"""Teacher ensembles of self-supervised models (``mode=ensemble``; docs/ensembles.md).

The ensemble-distillation study (Kumar, Kumar, Vineet, Rawat, "A Large-Scale
Analysis on Self-Supervised Video Representation Learning", 2023) pretrains teachers with pretext
tasks, fine-tunes them on a labelled downstream dataset, distils an ensemble of
them into a student and reads the models' layer-by-layer CKA maps. Its four
analyses (pretraining subset size, task complexity, out-of-distribution
teachers, pretext task categories) are configs under ``configs/ensembles/``;
each is a table of *rows*, one ensemble (K >= 2 teachers of any architectures)
and its student per row. This module runs one such config as a resumable chain
in one workdir:

1. every distinct teacher: pretrain (``mode=pretrain``, ``vkd_jax.pretrain``) on
   its domain's split, then fine-tune on the labelled downstream split
   (``data.train_split``) and evaluate; a teacher shared by several rows runs once
   (``teachers/<key>/``, or ``ensemble.teacher_dir`` shared between analyses: each
   teacher records its settings and one trained otherwise is never reused);
2. every row's student, distilled from its teachers with ``config.loss`` (KD over
   the row's teachers: uniform averaging of softened probabilities, of logits, or
   DATW) on ``ensemble.student_split`` ("" = the teachers' ``data.train_split``; a
   subset gives the student fewer labels) once per seed of ``ensemble.seeds``
   (``students/<row>_seed<k>/``);
3. the student architectures trained from scratch on the same split (the study's
   ST), per seed (``students/scratch_<arch>_seed<k>/``);
4. CKA self maps of each row's teachers, its student and the scratch student
   (first seed), their block-structure scores (:func:`vkd_jax.cka.block_structure_score`)
   and a figure (``cka/<row>.png``, the study's Fig. 1);
5. the table ``<analysis>.md`` / ``.json`` with the study's columns, each model's
   block score, and a verdict on the study's inference at this scale.

Every stage skips when finished, so an interrupted run resumes. The spread is
over the students' seeds; the teachers are trained once (``config.seed``).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from vkd_jax import evaluation, reporting, stages, storage, train
from vkd_jax.config_lib import ConfigError
from vkd_jax.data import pipeline
from vkd_jax.ensemble_config import (  # noqa: F401  (public names of the module)
    ANALYSES,
    NO_PRETRAINING,
    TEACHER_KEYS,
    ordered,
    validate,
)

BLOCK_INFERENCE = "Students show less block structure than their teachers"


def _model_entry(model: str, checkpoint: str = "") -> ml_collections.ConfigDict:
    name, variant = model.split("/")
    return ml_collections.ConfigDict(
        dict(name=name, variant=variant, checkpoint=checkpoint, num_steps=0, learning_rate=0.0)
    )


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")


def teacher_key(t: ml_collections.ConfigDict) -> str:
    """The directory name of a teacher: everything that makes it a different model."""
    task = t.task if t.task == NO_PRETRAINING else f"{t.task}-c{t.complexity}"
    return "__".join((_slug(t.model), task, _slug(t.domain), _slug(t.split)))


def _copy(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(config.to_dict())


def _pretrain_config(config, t) -> ml_collections.ConfigDict:
    c = _copy(config)
    e, d = config.ensemble, config.ensemble.domains[t.domain]
    c.mode = "pretrain"
    c.train_model = "student"
    c.student = _model_entry(t.model)
    c.data.name, c.data.builder_config = d.name, d.builder_config
    if d.root:
        c.data.folder.root = d.root
        c.data.folder.annotations = d.annotations
        c.data.folder.layout = d.layout or c.data.folder.layout
    c.data.train_split = t.split
    c.data.frame_stride = e.pretrain.frame_stride
    c.pretext.task, c.pretext.complexity = t.task, int(t.complexity)
    c.pretext.eval_split = e.pretrain.eval_split
    c.train.batch_size = e.pretrain.batch_size
    c.train.num_steps = e.pretrain.steps
    c.optim.learning_rate = e.pretrain.learning_rate
    return c


# ----------------------------------------------------------------------------- stages


def teacher_settings(config, t) -> dict[str, Any]:
    """Everything a teacher's training depends on (written to ``teacher.json``)."""
    e = config.ensemble
    return {
        "teacher": t.to_dict(),
        "domain": e.domains[t.domain].to_dict(),
        "pretrain": e.pretrain.to_dict() if t.task != NO_PRETRAINING else None,
        "pretext": config.pretext.to_dict() if t.task != NO_PRETRAINING else None,
        "finetune_steps": int(e.finetune_steps),
        "downstream": {k: config.data[k] for k in ("name", "builder_config", "train_split",
                                                    "num_frames", "crop_size")},
        "optim": config.optim.to_dict(),
        "batch_size": int(config.train.batch_size),
        "seed": int(config.seed),
    }  # fmt: skip


def _claim_teacher_dir(config, t, root: str) -> None:
    """Records a teacher's settings, or raises if its folder holds another teacher."""
    want = json.loads(json.dumps(teacher_settings(config, t), default=list))
    path = os.path.join(root, "teacher.json")
    if storage.isfile(path):
        have = storage.read_json(path)
        if have != want:
            diff = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
            raise ConfigError(
                f"{root} holds a teacher trained with other settings ({', '.join(diff)} "
                "differ); use another ensemble.teacher_dir or workdir"
            )
        return
    storage.makedirs(root)
    if jax.process_index() == 0:
        storage.write_json(path, want, indent=1)


def run_teacher(config, t, teacher_dir: str) -> dict[str, Any]:
    """Pretrains (unless ``task == "none"``) and fine-tunes one teacher; returns its record."""
    root = os.path.join(teacher_dir, teacher_key(t))
    _claim_teacher_dir(config, t, root)
    record: dict[str, Any] = {"key": teacher_key(t), **t.to_dict()}
    init = ""
    if t.task != NO_PRETRAINING:
        from vkd_jax import pretrain  # Imports the pretext tasks only when needed.

        pre = pretrain.run(_pretrain_config(config, t), root)
        record.update(pretext_accuracy=pre["pretext_accuracy"], chance=pre["chance"])
        record["pretrain_seconds"] = pre.get("seconds", 0.0)
        init = os.path.join(root, "model")
    summary = train.run(
        config,
        train.Stage(
            name=f"teacher {teacher_key(t)}",
            workdir=os.path.join(root, "finetune"),
            model=_model_entry(t.model),
            loss=stages.supervised_loss(config.loss),
            num_steps=config.ensemble.finetune_steps,
            init_checkpoint=init,
        ),
    )
    record.update(top1=summary["top1"], seconds=summary.get("seconds", 0.0))
    record["checkpoint"] = os.path.join(root, "finetune", "model")
    return record


def _seed_config(config, seed: int) -> ml_collections.ConfigDict:
    c = _copy(config)
    c.seed = int(seed)
    return c


def run_student(config, workdir: str, row_name: str, row, teachers: Mapping[str, Any], seed: int):
    """Distils ``row``'s student from its fine-tuned teachers with ``config.loss``."""
    loss = _copy(config.loss)
    loss.kd_teachers = tuple(n for n, _ in ordered(row.teachers))
    return train.run(
        _seed_config(config, seed),
        train.Stage(
            name=f"student {row_name} seed {seed}",
            workdir=os.path.join(workdir, "students", f"{row_name}_seed{seed}"),
            model=_model_entry(row.student),
            loss=loss,
            num_steps=config.train.num_steps,
            train_split=config.ensemble.student_split,
            teachers={
                n: _model_entry(row.teachers[n].model, teachers[n]["checkpoint"])
                for n, _ in ordered(row.teachers)
            },
        ),
    )


def run_scratch(config, workdir: str, student: str, seed: int) -> dict[str, Any]:
    """The student architecture trained on the labelled split alone (the study's ST)."""
    return train.run(
        _seed_config(config, seed),
        train.Stage(
            name=f"scratch {student} seed {seed}",
            workdir=os.path.join(workdir, "students", f"scratch_{_slug(student)}_seed{seed}"),
            model=_model_entry(student),
            loss=stages.supervised_loss(config.loss),
            num_steps=config.train.num_steps,
            train_split=config.ensemble.student_split,
        ),
    )


# -------------------------------------------------------------------------------- CKA


def row_maps(config, workdir: str, row_name: str, row, teachers, student_dir, scratch_dir):
    """Self maps and block scores of a row's teachers, student and scratch student."""
    from vkd_jax import cka, cka_maps  # matplotlib only when maps are wanted.

    outdir = os.path.join(workdir, "cka")
    storage.makedirs(outdir)
    json_path = os.path.join(outdir, f"{row_name}.json")
    if storage.isfile(json_path):
        maps = cka_maps.load_cka_json(json_path)
    else:
        paths = {n: teachers[n]["checkpoint"] for n, _ in ordered(row.teachers)}
        paths["student"] = student_dir
        paths["scratch"] = scratch_dir
        maps = dict(cka_maps.model_self_maps(config, paths))
        if jax.process_index() == 0:
            panels = [(v, r, c, _panel_title(n, row)) for n, (v, r, c) in maps.items()]
            cka_maps.plot_cka_maps(panels, os.path.join(outdir, f"{row_name}.png"))
            cka_maps.save_cka_json(json_path, maps)
    e = config.ensemble
    return {
        n: dict(
            block_score=cka.block_structure_score(v, threshold=e.block_threshold,
                                                  min_gap=e.block_min_gap),
            largest_block=cka.largest_block(v, threshold=e.block_threshold),
            layers=len(r),
        )
        for n, (v, r, _) in maps.items()
    }  # fmt: skip


def _panel_title(name: str, row) -> str:
    if name in row.teachers:
        t = row.teachers[name]
        return f"{name}: {_describe(t)}"
    if name == "student":
        return f"student {row.student} (distilled)"
    return f"{row.student} from scratch (ST)"


def _spec_of(record: Mapping[str, Any]) -> dict[str, Any]:
    return {k: record[k] for k in TEACHER_KEYS}


def _describe(t) -> str:
    task = "no pretraining" if t.task == NO_PRETRAINING else t.task
    if t.task in ("rotnet", "vcop", "prp"):
        task += f" C{t.complexity}"
    return f"{t.model} {task} ({t.domain} {t.split})"


# ------------------------------------------------------------------------------- run


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs (or resumes) one ensemble analysis; returns and writes its table."""
    validate(config)
    storage.makedirs(workdir)
    started = time.time()
    pipeline.load_builder(config.data)  # The downstream data, built once before any stage.
    e = config.ensemble
    teacher_dir = e.teacher_dir or os.path.join(workdir, "teachers")
    unique = {teacher_key(t): t for _, row in ordered(e.rows) for _, t in ordered(row.teachers)}
    rows_total = len(e.rows)
    logging.info(
        "Ensemble analysis %s: %d teachers, %d rows x %d seeds of students, in %s",
        e.analysis, len(unique), rows_total, len(e.seeds), workdir,
    )  # fmt: skip
    teachers: dict[str, dict[str, Any]] = {}  # key -> record
    for k, (key, t) in enumerate(unique.items()):
        logging.info("Ensemble teacher %d/%d: %s", k + 1, len(unique), key)
        teachers[key] = run_teacher(config, t, teacher_dir)
    scratch = {
        s: [run_scratch(config, workdir, s, seed) for seed in e.seeds]
        for s in dict.fromkeys(row.student for _, row in ordered(e.rows))
    }
    rows = []
    for r, (row_name, row) in enumerate(ordered(e.rows)):
        logging.info("Ensemble row %d/%d: %s", r + 1, rows_total, row_name)
        members = {n: teachers[teacher_key(t)] for n, t in ordered(row.teachers)}
        students = [run_student(config, workdir, row_name, row, members, seed) for seed in e.seeds]
        record = {
            "row": row_name,
            "title": row.title,
            "student_model": row.student,
            "teachers": members,
            "student_top1": [s["top1"] for s in students],
            "scratch_top1": [s["top1"] for s in scratch[row.student]],
            "teacher_weights": _teacher_weights(students[0]),
        }
        if e.run_cka:
            student_dir = os.path.join(workdir, "students", f"{row_name}_seed{e.seeds[0]}", "model")
            scratch_dir = os.path.join(
                workdir, "students", f"scratch_{_slug(row.student)}_seed{e.seeds[0]}", "model"
            )
            record["cka"] = row_maps(
                config, workdir, row_name, row, members, student_dir, scratch_dir
            )
        rows.append(record)
    results = {
        "analysis": e.analysis,
        "rows": rows,
        "verdicts": verdicts(e.analysis, rows, int(e.block_min_gap)),
        "seconds": time.time() - started,
        "stage_seconds": _stage_seconds(teachers, workdir),
    }
    markdown = table_markdown(config, results)
    if jax.process_index() == 0:
        storage.write_json(
            os.path.join(workdir, f"{e.analysis}.json"), results, indent=2, default=str
        )
        storage.write_text(os.path.join(workdir, f"{e.analysis}.md"), markdown)
        if e.run_cka:
            _figure(config, workdir)
    print(markdown)
    return results


def _teacher_weights(summary: Mapping[str, Any]) -> dict[str, float]:
    """Mean per-teacher weights the student's KD term used (from its logged metrics)."""
    datw = summary.get("datw") or {}
    return {n: st.get("weight") for n, st in datw.items()}


def _stage_seconds(teachers, workdir) -> float:
    """Wall time of every stage's own run (pretraining, fine-tuning, students)."""
    total = sum(t.get("pretrain_seconds", 0.0) + t.get("seconds", 0.0) for t in teachers.values())
    for path, _, files in storage.walk(os.path.join(workdir, "students")):
        if evaluation.EVAL_FILE in files:
            total += storage.read_json(os.path.join(path, evaluation.EVAL_FILE)).get("seconds", 0.0)
    return total


def _figure(config, workdir: str) -> None:
    """All rows' CKA maps in one figure, a row of panels per ensemble (the study's Fig. 1)."""
    from vkd_jax import cka_maps

    grid = []
    for row_name, row in ordered(config.ensemble.rows):
        path = os.path.join(workdir, "cka", f"{row_name}.json")
        maps = cka_maps.load_cka_json(path)
        grid.append(
            [(v, r, c, f"{row.title}\n{_panel_title(n, row)}")
             for n, (v, r, c) in maps.items()]
        )  # fmt: skip
    cka_maps.plot_cka_grid(grid, os.path.join(workdir, f"{config.ensemble.analysis}_cka.png"))


# ---------------------------------------------------------------------------- verdicts


def _vs_best_teacher(row) -> tuple[reporting.Comparison, str]:
    """The student's per-seed top-1 against its best teacher (one run), in points."""
    best = max(row["teachers"], key=lambda n: row["teachers"][n]["top1"])
    c = reporting.paired_comparison(
        100 * np.asarray(row["student_top1"]), 100 * row["teachers"][best]["top1"]
    )
    return c, best


def _entry(inference: str, row: str, compared_with: str, c: reporting.Comparison) -> dict:
    d = {k: v for k, v in c.to_dict().items() if k != "mean"}
    return dict(inference=inference, row=row, compared_with=compared_with, difference=c.mean, **d)


def verdicts(
    analysis: str, rows: Sequence[Mapping[str, Any]], min_gap: int = 2
) -> list[dict[str, Any]]:
    """The study's inference for ``analysis`` and the block-structure one, per row.

    Accuracy inferences use the shared verdict rule of :mod:`vkd_jax.reporting`
    (docs/design.md, "The verdict rule"): the students' per-seed top-1 minus the
    compared model's (a teacher, trained once; or the scratch student of the same
    seed), with a 95% t-interval; "holds" when it lies above 0, "the opposite holds"
    when below, else "not shown". The subset-size inference says "reaches"; it is held
    to the same rule, so there "holds" means the student beats the teacher and "not
    shown" covers a student level with it. Block scores are one map per model, without
    seeds: a difference holds when it is at least one layer pair (``min_gap``: the
    score's), else it is not shown.
    """
    out = []
    if analysis == "subset_size":
        # The smallest subset's student against the best teacher of the largest subset.
        first, last = rows[0], rows[-1]
        best = max(last["teachers"], key=lambda n: last["teachers"][n]["top1"])
        c = reporting.paired_comparison(
            100 * np.asarray(first["student_top1"]), 100 * last["teachers"][best]["top1"]
        )
        out.append(_entry(ANALYSES[analysis]["inference"], first["row"],
                          f"{last['row']}/{best}", c))  # fmt: skip
    else:
        for row in rows:
            c, best = _vs_best_teacher(row)
            out.append(_entry(ANALYSES[analysis]["inference"], row["row"], best, c))
            if analysis == "task_categories":
                c = reporting.paired_comparison(
                    100 * np.asarray(row["student_top1"]), 100 * np.asarray(row["scratch_top1"])
                )
                out.append(_entry("... and beats the student without pretraining (ST)",
                                  row["row"], "ST", c))  # fmt: skip
    for row in rows:
        cka = row.get("cka")
        if not cka:
            continue
        t_scores = [cka[n]["block_score"] for n in row["teachers"] if n in cka]
        diff = float(np.nanmean(t_scores)) - cka["student"]["block_score"]
        # The score is a share of layer pairs: a difference under one pair is no finding.
        pairs = _distant_pairs(cka["student"].get("layers", 0), min_gap)
        if (pairs and abs(diff) * pairs < 1 - 1e-9) or diff == 0:
            verdict = f"{reporting.NOT_SHOWN} (less than one layer pair apart)"
        else:
            verdict = reporting.HOLDS if diff > 0 else reporting.OPPOSITE
        out.append(dict(inference=BLOCK_INFERENCE, row=row["row"],
                        compared_with="mean of its teachers", difference=diff, std=0.0,
                        n=1, verdict=verdict))  # fmt: skip
    return out


def _distant_pairs(num_layers: int, min_gap: int) -> int:
    """Layer pairs at least ``min_gap`` apart among ``num_layers`` (what a score counts)."""
    n = num_layers - min_gap
    return n * (n + 1) // 2 if n > 0 else 0


# ------------------------------------------------------------------------------ table


def _pct(values) -> str:
    return reporting.fmt_mean_std(values)


def table_markdown(config, results: Mapping[str, Any]) -> str:
    """The analysis table, its teachers and the verdicts, as Markdown."""
    e, rows = config.ensemble, results["rows"]
    width = max(len(r["teachers"]) for r in rows)
    loss = config.loss
    combine = (
        "DATW" if loss.teacher_weighting == "datw" else "uniform weights"
    ) + f" over {loss.ensemble_space}"
    lines = [
        f"{ANALYSES[e.analysis]['title']} on `{config.data.name}/{config.data.builder_config}`: "
        f"top-1 % on `{config.data.eval_split}`; teachers fine-tuned and students trained on "
        f"`{config.data.train_split}` and `{e.student_split or config.data.train_split}` "
        f"({e.finetune_steps} and {config.train.num_steps} steps); "
        f"students: mean ± std over seeds {tuple(e.seeds)}, KD with {combine}, T = "
        f"{loss.temperature}. [b] = block-structure score of the model's self-CKA map (share "
        f"of layer pairs >= {e.block_min_gap} apart with CKA >= {e.block_threshold}). "
        f"{results['stage_seconds'] / 60:.1f} min of stage wall time.",
        "",
        "| Row | "
        + " | ".join(f"T{k + 1}" for k in range(width))
        + " | Student | ST (scratch) | Student − best T |",
        "|---|" + "---|" * (width + 3),
    ]
    for r in rows:
        cka = r.get("cka") or {}
        block = lambda n, cka=cka: f" [b {cka[n]['block_score']:.2f}]" if n in cka else ""
        cells = [f"{100 * t['top1']:.1f}{block(n)}" for n, t in r["teachers"].items()] + ["-"] * (
            width - len(r["teachers"])
        )
        diff = _vs_best_teacher(r)[0].mean
        lines.append(
            f"| {r['title']} | " + " | ".join(cells)
            + f" | {_pct(r['student_top1'])}{block('student')} | "
            f"{_pct(r['scratch_top1'])}{block('scratch')} | {diff:+.1f} |"
        )  # fmt: skip
    lines += ["", "Teachers (pretext accuracy on held-out clips of their domain, chance):", ""]
    seen = set()
    for r in rows:
        for t in r["teachers"].values():
            if t["key"] in seen:
                continue
            seen.add(t["key"])
            pre = (
                f"{100 * t['pretext_accuracy']:.1f}% (chance {100 * t['chance']:.1f}%)"
                if "pretext_accuracy" in t else "-"
            )  # fmt: skip
            lines.append(
                f"- `{t['key']}`: {_describe(ml_collections.ConfigDict(_spec_of(t)))}; "
                f"pretext {pre}; fine-tuned top-1 {100 * t['top1']:.1f}%"
            )
    table = []
    for v in results["verdicts"]:
        if v["inference"] == BLOCK_INFERENCE:
            shown = f"{v['difference']:+.2f} block score"
        else:
            shown = reporting.fmt_comparison(dict(v, mean=v["difference"])) + " points"
        table.append((v["inference"], v["row"], v["compared_with"], shown, v["verdict"]))
    lines.append("")
    lines += reporting.markdown_table(
        ("Inference of the study", "Row", "Compared with", "Difference [95% CI]", "Verdict here"),
        table,
    )
    lines += ["", reporting.VERDICT_RULE]
    return "\n".join(lines) + "\n"
