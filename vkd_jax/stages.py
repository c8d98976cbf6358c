"""What a training stage is: the model it trains, its objective, steps, teachers and data.

:func:`vkd_jax.train.run` trains one :class:`Stage`; the experiment, ablation,
ensemble and pretraining drivers describe theirs with these helpers. Nothing
here touches data or TensorFlow, so benchmarks import it on machines without them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import ml_collections


@dataclasses.dataclass
class Stage:
    """What one stage trains.

    Attributes:
      name: human-readable name (used in logs and results).
      workdir: the stage's directory.
      model: model entry (``name``, ``variant``) of the trained model.
      loss: the objective's config (``loss`` section); CE-only for supervised.
      num_steps: optimizer updates.
      teachers: teacher name -> model entry with a ``checkpoint`` directory.
      init_checkpoint: model directory whose variables initialize the trained
        model (fine-tuning); layers whose shapes differ start fresh.
      train_split: TFDS split the stage trains on; "" means ``config.data.train_split``
        (an experiment gives its students a labelled subset this way).
    """

    name: str
    workdir: str
    model: ml_collections.ConfigDict
    loss: ml_collections.ConfigDict
    num_steps: int
    teachers: Mapping[str, ml_collections.ConfigDict] = dataclasses.field(default_factory=dict)
    init_checkpoint: str = ""
    train_split: str = ""


def trained_spec(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The model entry ``config.train_model`` names (the student or a teacher)."""
    if config.train_model == "student":
        return config.student
    if config.train_model in config.teachers:
        return config.teachers[config.train_model]
    raise ValueError(
        f"config.train_model={config.train_model!r} is neither 'student' nor a teacher "
        f"name ({sorted(config.teachers)})"
    )


def supervised_loss(loss_cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The objective with every distillation term off (cross-entropy only).

    Only the cross-entropy's keys (``ce_weight``, ``label_smoothing``) come from
    ``loss_cfg``; every other key takes configs/default.py's value. A stage without
    teachers then records the same settings (vkd_jax.rundir) whatever the run's
    distillation settings are, so a student from scratch trained by a screen is the
    same stage as the ablation's (and is reused by it), not a new one.
    """
    from vkd_jax import config_lib

    cfg = config_lib.default_config().loss
    cfg.ce_weight = float(loss_cfg.ce_weight)
    cfg.label_smoothing = float(loss_cfg.label_smoothing)
    for key in ("kd_weight", "sdd_weight", "rkd_distance_weight", "rkd_angle_weight"):
        cfg[key] = 0.0
    cfg.feature_kd_weight = 0.0
    cfg.sdd.adapter_weight = 0.0
    # Unread without KD. Fixed rather than the default's, so that a default change does
    # not make every finished scratch stage look like another one ("datw": what they
    # recorded before configs/default.py turned to uniform weighting).
    cfg.teacher_weighting = "datw"
    return cfg


def compute_dtype(config: ml_collections.ConfigDict) -> Any:
    if config.dtype not in ("float32", "bfloat16"):
        raise ValueError(f"config.dtype must be 'float32' or 'bfloat16', got {config.dtype!r}")
    return jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32


def model_metadata(
    config: ml_collections.ConfigDict,
    spec: Any,
    num_classes: int,
    class_names: Any = None,
) -> dict:
    """What a model directory records so it can be reloaded, reused as a teacher, exported
    and run on video files (vkd_jax.predict samples clips as the evaluation did)."""
    d = config.data
    meta = {
        "name": spec.name,
        "variant": spec.variant,
        "num_classes": int(num_classes),
        "num_frames": int(d.num_frames),
        "crop_size": int(d.crop_size),
        "mean": list(d.mean),
        "std": list(d.std),
        "dataset": d.name,
        "frame_stride": int(d.frame_stride),
        "eval_num_clips": int(d.eval_num_clips),
        "eval_num_crops": int(d.eval_num_crops),
    }
    if d.name == "video_folder":  # How the dataset decoded its videos.
        meta.update(short_side=int(d.folder.short_side), fps=float(d.folder.fps))
    if class_names is not None:
        meta["class_names"] = [str(n) for n in class_names]
    return meta
