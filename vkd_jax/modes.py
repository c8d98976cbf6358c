"""What each ``config.mode`` does; ``main`` calls :func:`run`."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from vkd_jax import config_lib, evaluation, experiment, stages, storage, train
from vkd_jax.config_lib import ConfigError
from vkd_jax.data import pipeline, preview


def run(config: ml_collections.ConfigDict, workdir: str) -> Any:
    """Dispatches on ``config.mode`` (validated by ``config_lib.validate``)."""
    return _RUNNERS[config.mode](config, workdir)


def run_data(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Builds the dataset, prints its statistics and writes a contact sheet PNG."""
    builder = pipeline.load_builder(config.data)
    info = pipeline.dataset_info(config.data)
    stats = {
        "dataset": config.data.name,
        "builder_config": config.data.builder_config,
        "num_classes": info.num_classes,
        "splits": info.split_sizes,
    }
    shape = builder.info.features[config.data.video_key].shape
    stats["video_shape"] = [int(d) if d is not None else None for d in shape]
    stats["examples_per_class"] = {
        split: {
            info.class_names[c]: n
            for c, n in sorted(preview.class_counts(builder, split, config.data.label_key).items())
        }
        for split in info.split_sizes
    }
    print(json.dumps(stats, indent=2))
    path = os.path.join(workdir, "contact_sheet.png")
    preview.contact_sheet(
        builder,
        config.data.train_split,
        path,
        video_key=config.data.video_key,
        label_key=config.data.label_key,
    )
    storage.write_json(os.path.join(workdir, "data_stats.json"), stats, indent=2)
    print(f"Contact sheet: {path}")
    return stats


def run_train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Supervised training of the student or of one teacher (``config.train_model``)."""
    spec = stages.trained_spec(config)
    summary = train.run(
        config,
        train.Stage(
            name=f"train_{config.train_model}",
            workdir=workdir,
            model=spec,
            loss=stages.supervised_loss(config.loss),
            num_steps=config.train.num_steps,
            init_checkpoint=config.init_checkpoint,
        ),
    )
    _print_summary(summary)
    return summary


def run_distill(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Distills the student from teachers given as checkpoints in the config."""
    summary = train.run(
        config,
        train.Stage(
            name="distill",
            workdir=workdir,
            model=config.student,
            loss=config.loss,
            num_steps=config.train.num_steps,
            teachers=dict(config.teachers),
        ),
    )
    _print_summary(summary)
    return summary


def run_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Evaluates ``config.student.checkpoint`` (or ``<workdir>/model``)."""
    path = config.student.checkpoint or os.path.join(workdir, "model")
    summary = evaluation.evaluate_checkpoint(config, path, workdir)
    _print_summary(summary)
    return summary


def run_cka(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """CKA maps of a finished experiment workdir's teachers and students."""
    from vkd_jax import cka_maps

    return cka_maps.experiment_maps(config, workdir, None)


def run_pretrain(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Self-supervised pretraining of ``config.train_model``'s architecture (``config.pretext``)."""
    from vkd_jax import pretrain

    return pretrain.run(config, workdir)


def run_probe(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Linear probe and retrieval of the frozen model in ``config.init_checkpoint``."""
    from vkd_jax import probe

    return probe.run(config, workdir)


def run_ensemble(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """One teacher-ensemble analysis of ``configs/ensembles/`` (``config.ensemble``)."""
    from vkd_jax import ensemble

    return ensemble.run(config, workdir)


def run_experiment(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Teachers, then the student with each loss of the recipe (``vkd_jax.experiment``)."""
    return experiment.run_experiment(config, workdir)


def run_ablation(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """The loss-term ablation of ``configs/ablation.py`` (``vkd_jax.experiment``)."""
    return experiment.run_ablation(config, workdir)


# ------------------------------------------------------------------------ mode=export


def run_export(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """SavedModel, LiteRT and ONNX artifacts of ``config.export.model``, checked: exports
    it (:mod:`vkd_jax.export`) and measures every artifact's top-1 on ``data.eval_split``
    next to the Flax model's."""
    from vkd_jax import checkpoint, export, runtime

    x = config.export
    path = x.model or os.path.join(workdir, "student_distill", "model")
    if not storage.isdir(path):
        raise checkpoint.CheckpointError(
            f"export.model = {path!r}: no model directory there (set --config.export.model "
            "to a model folder written by a stage or tools/convert_checkpoint.py)"
        )
    formats = export.check_formats(x.formats)
    if x.batch_size < 1:
        raise ConfigError(f"export.batch_size must be >= 1, got {x.batch_size}")
    module, variables, meta = checkpoint.load_model(path, what="export.model")
    meta = dict(meta, checkpoint=storage.resolve(path))
    class_names = meta.get("class_names")
    info = None
    if x.eval_videos or not class_names:
        info = pipeline.dataset_info(config.data)
        if info.num_classes == int(meta["num_classes"]):
            class_names = class_names or info.class_names
        elif x.eval_videos:
            raise ConfigError(
                f"export.model has {meta['num_classes']} classes but data "
                f"{config.data.name}/{config.data.builder_config} has {info.num_classes}: "
                "evaluate it on its own dataset or set export.eval_videos=0"
            )
    prep = runtime.preprocessing(meta, class_names=class_names)
    if x.eval_videos:
        _check_export_sampling(config.data, prep)
    outdir = storage.resolve(x.outdir or os.path.join(workdir, "export"))
    # Evaluating the artifacts reads them from a local folder; a bucket gets the result.
    local = outdir
    if storage.is_remote(outdir):
        local = os.path.join(tempfile.mkdtemp(prefix="vkd_export_"), "export")
    report = export.export(
        module,
        variables,
        meta,
        local,
        formats=formats,
        batch_size=int(x.batch_size),
        tolerance=float(x.tolerance),
        prep=prep,
        log=logging.info,
    )
    if x.eval_videos:
        report["eval"] = evaluate_artifacts(
            config,
            local,
            formats,
            runtime.logits_fn(module, variables, prep),
            variables,
            limit=int(x.eval_videos),
        )
        storage.write_json(os.path.join(local, runtime.EXPORT_FILE), report, indent=2)
    if local != outdir:
        storage.replace_dir(local, outdir)
    print(export_table(report))
    print(f"Artifacts and report ({runtime.EXPORT_FILE}) in {outdir}")
    return report


def _check_export_sampling(data_cfg: Any, prep: Mapping[str, Any]) -> None:
    for key, field in (("num_frames", "num_frames"), ("crop_size", "crop_size")):
        if int(data_cfg[key]) != int(prep[field]):
            raise ConfigError(
                f"data.{key} = {data_cfg[key]} but the exported model takes {prep[field]}; "
                f"set --config.data.{key}={prep[field]} (or export.eval_videos=0)"
            )


def evaluate_artifacts(
    config: Any,
    outdir: str,
    formats: Sequence[str],
    flax_fn: Callable,
    variables: Any,
    *,
    limit: int = -1,
) -> dict[str, Any]:
    """Multi-view top-1 of the Flax model and of each artifact on ``data.eval_split``.

    The views are the evaluation's (``pipeline.eval_views``); each runner sees the
    same pixels, and a video's prediction averages its views' softmax scores.
    """
    from vkd_jax import runtime

    ds = pipeline.eval_dataset(
        config.data,
        batch_size=int(config.train.eval_batch_size),
        process_index=0,
        process_count=1,
        normalized=False,
    )
    runners = {
        fmt: runtime.load_runner(os.path.join(outdir, runtime.FILES[fmt])) for fmt in formats
    }
    forward = jax.jit(flax_fn)
    correct = {name: 0 for name in ("flax", *formats)}
    seen = 0
    for batch in ds.as_numpy_iterator():
        keep = batch["mask"]
        if limit > 0:
            keep = keep & (np.cumsum(keep) + seen <= limit)
        if not keep.any():
            if limit > 0 and seen >= limit:
                break
            continue
        video, label = batch["video"][keep], batch["label"][keep]
        n, v = video.shape[:2]
        views = video.reshape(n * v, *video.shape[2:])
        outs = {"flax": np.asarray(forward(variables, views))}
        for fmt, runner in runners.items():
            outs[fmt] = runtime.run_batched(runner, views)
        for name, logits in outs.items():
            probs = np.asarray(evaluation.multiview_predictions(logits.reshape(n, v, -1)))
            correct[name] += int(np.sum(probs.argmax(-1) == label))
        seen += n
    if not seen:
        raise runtime.ExportError(
            f"no videos in {config.data.eval_split!r} to evaluate the export on"
        )
    return {
        "split": config.data.eval_split,
        "videos": seen,
        "views": int(config.data.eval_num_clips * config.data.eval_num_crops),
        "top1": {name: c / seen for name, c in correct.items()},
    }


def export_table(report: Mapping[str, Any]) -> str:
    """The report as a Markdown table (docs/deploy.md shows one)."""
    top1 = report.get("eval", {}).get("top1", {})
    lines = [
        f"{report['model']}: the artifacts' logits against the Flax model's on check clips, "
        "and multi-view top-1",
        "",
        "| format | file | MB | max abs diff vs Flax | top-1 |",
        "|---|---|---|---|---|",
    ]
    if top1:
        lines.append(f"| Flax (reference) | - | - | - | {100 * top1['flax']:.1f}% |")
    for fmt, e in report["formats"].items():
        acc = f"{100 * top1[fmt]:.1f}%" if fmt in top1 else "-"
        lines.append(
            f"| {fmt} | {e['file']} | {e['bytes'] / 1e6:.2f} | {e['max_abs_diff']:.1e} | {acc} |"
        )
    int8 = report["formats"].get("tflite_int8", {}).get("int8_weight_share")
    if int8 is not None:
        lines.append(
            f"\ntflite_int8 stores {100 * int8:.0f}% of the parameters as int8 (LiteRT's "
            "dynamic-range quantisation leaves CONV_3D weights in float32)."
        )
    if top1:
        ev = report["eval"]
        lines.append(f"\ntop-1 on {ev['videos']} videos of {ev['split']} ({ev['views']} views).")
    return "\n".join(lines)


# One list of modes: config_lib.MODES (checked before any compute, without importing the
# stages); each has its run_<mode> here, or this module fails to import.
_RUNNERS = {mode: globals()[f"run_{mode}"] for mode in config_lib.MODES}


def _print_summary(summary: dict[str, Any]) -> None:
    logging.info("%s", {k: v for k, v in summary.items() if k not in ("confusion", "per_class")})
    print(
        f"{summary.get('model')}: top-1 {100 * summary['top1']:.1f}%  "
        f"top-5 {100 * summary['top5']:.1f}%  params {summary['params']:,}  "
        f"GMACs {summary['gmacs']:.4f}"
    )
