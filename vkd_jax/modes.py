"""What each ``config.mode`` does; ``main`` calls :func:`run`."""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections
from absl import logging

from vkd_jax import config_lib, evaluation, experiment, stages, storage, train
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


def run_export(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """SavedModel, LiteRT and ONNX artifacts of ``config.export.model``, checked."""
    from vkd_jax import export

    return export.run(config, workdir)


def run_experiment(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Teachers, then the student with each loss of the recipe (``vkd_jax.experiment``)."""
    return experiment.run_experiment(config, workdir)


def run_ablation(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """The loss-term ablation of ``configs/ablation.py`` (``vkd_jax.experiment``)."""
    return experiment.run_ablation(config, workdir)


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
