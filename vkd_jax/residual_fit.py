"""The SDD residual map of a distillation stage: fitted once, stored with the run.

``loss.sdd.target = "residual"`` (docs/design.md eq. S1) needs the linear map ``(A, b)``
from the CNN teacher's pooled, per-position-normalized features to the ViT
teacher's, and the principal directions ``U`` of the residual. Before the student
trains, :func:`stage_constants` runs both frozen teachers over the stage's train
split (every clip once, the evaluation's uniformly spaced centre views, no
augmentation), accumulates the ridge sums in float64 on the host
(:class:`vkd_jax.losses.sdd.RidgeAccumulator`) and solves in closed form
(:func:`vkd_jax.losses.sdd.fit_residual_map`). The result goes to
``<stage>/sdd_residual_map.npz``; a resumed stage reloads it, so the target never
changes during a stage. The module imports the data pipeline (TensorFlow) only to
fit, so the benchmark's step imports it without TensorFlow.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from vkd_jax import sharding, storage
from vkd_jax.losses import objective, sdd

MAP_FILE = "sdd_residual_map.npz"
_ARRAYS = ("weight", "bias", "basis")


def save_map(path: str, residual_map: Mapping[str, Any]) -> None:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in residual_map.items()})
    storage.write_bytes(path, buf.getvalue())


def load_map(path: str) -> dict[str, np.ndarray]:
    with storage.open(path, "rb") as f:
        data = np.load(io.BytesIO(f.read()))
        return {k: data[k] for k in data.files}


def teacher_position_features(
    teachers: Mapping[str, Any], teacher_vars: Mapping[str, Any], loss_cfg: Any
):
    """A jitted ``videos (N, T, H, W, 3) -> (x (N, T', H', W', C_cnn), y (..., C_vit))``."""
    cfg = loss_cfg.sdd
    grid = tuple(cfg.grid)
    cnn, vit = cfg.cnn_teacher, cfg.vit_teacher

    @jax.jit
    def features(variables, videos):
        _, f_cnn = teachers[cnn].apply(variables[cnn], videos, train=False)
        _, f_vit = teachers[vit].apply(variables[vit], videos, train=False)
        x = sdd.pooled_features(objective.resolve_feature(f_cnn, cfg.cnn_feature), grid)
        y = sdd.pooled_features(objective.resolve_feature(f_vit, cfg.vit_feature), grid)
        return x, y

    return lambda videos: features(
        {n: teacher_vars[n] for n in (cnn, vit)}, jnp.asarray(videos, jnp.float32)
    )


def accumulate(features_fn, batches) -> sdd.RidgeAccumulator:
    """Ridge sums over every unmasked view of ``batches`` (evaluation-style batches)."""
    acc = sdd.RidgeAccumulator()
    for batch in batches:
        video = np.asarray(batch["video"])
        b, v = video.shape[:2]
        x, y = features_fn(video.reshape((b * v, *video.shape[2:])))
        keep = np.repeat(np.asarray(batch["mask"]).astype(bool), v)
        x = sharding.to_host(x)[keep]
        y = sharding.to_host(y)[keep]
        acc.add(x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1]))
    return acc


def fit(config, split: str, teachers, teacher_vars, loss_cfg) -> dict[str, Any]:
    """Fits the residual map on ``split`` (every clip once)."""
    from vkd_jax.data import pipeline  # TensorFlow: only when a map is fitted.

    data_cfg = ml_collections.ConfigDict(config.data.to_dict())
    data_cfg.eval_split = split
    batches = pipeline.eval_dataset(
        data_cfg, batch_size=config.train.eval_batch_size, process_index=0, process_count=1
    ).as_numpy_iterator()
    acc = accumulate(teacher_position_features(teachers, teacher_vars, loss_cfg), batches)
    return sdd.fit_residual_map(acc, ridge=float(loss_cfg.sdd.ridge), dim=int(loss_cfg.sdd.dim))


def stage_constants(config, stage, teachers, teacher_vars) -> dict[str, Any]:
    """The fitted constants ``objective.total_loss`` needs for ``stage`` (may be ``{}``).

    Loads ``<stage.workdir>/sdd_residual_map.npz`` when present, else fits and writes it.
    """
    loss_cfg = ml_collections.FrozenConfigDict(stage.loss)
    if not objective.sdd_uses_residual_map(loss_cfg):
        return {}
    path = os.path.join(stage.workdir, MAP_FILE)
    if storage.isfile(path):
        residual_map = load_map(path)
    else:
        split = stage.train_split or config.data.train_split
        residual_map = fit(config, split, teachers, teacher_vars, loss_cfg)
        logging.info(
            "SDD residual map on %s: R^2 %.3f of the ViT features from the CNN's, residual "
            "variance %.3f per kept direction (%d), %.0f positions",
            split,
            float(residual_map["r2"]),
            float(residual_map["residual_variance"]),
            residual_map["basis"].shape[1],
            float(residual_map["num_positions"]),
        )
        if jax.process_index() == 0:
            save_map(path, residual_map)
    return {objective.SDD_RESIDUAL_MAP: {k: np.asarray(residual_map[k]) for k in _ARRAYS}}


def shape_constants(loss_cfg, teachers, teacher_vars, video) -> dict[str, Any]:
    """Constants of the right shapes without a fit (zero map, leading basis vectors).

    For cost measurements only (tools/benchmark.py): the step's compute does not depend
    on the fitted values. ``video``: a sample batch.
    """
    if not objective.sdd_uses_residual_map(loss_cfg):
        return {}
    x, y = jax.eval_shape(teacher_position_features(teachers, teacher_vars, loss_cfg), video)
    return {objective.SDD_RESIDUAL_MAP: placeholder_map(x.shape[-1], y.shape[-1], loss_cfg.sdd.dim)}


def placeholder_map(cnn_channels: int, vit_channels: int, dim: int) -> dict[str, np.ndarray]:
    """A residual map of the fitted map's shapes: zero ``A`` and ``b``, the leading basis
    vectors as ``U`` (cost measurements only: the step's compute does not depend on it)."""
    width = sdd.residual_width(vit_channels, int(dim))
    return {
        "weight": np.zeros((cnn_channels, vit_channels), np.float32),
        "bias": np.zeros((vit_channels,), np.float32),
        "basis": np.eye(vit_channels, width, dtype=np.float32),
    }
