"""Checks of the ``ensemble`` config section (``configs/ensembles/``, ``mode=ensemble``).

Kept apart from :mod:`vkd_jax.ensemble`, which runs the analyses (training, evaluation,
the input pipeline, TensorFlow): ``config_lib.validate`` checks this section before any
compute, and importing the runner for that would pull the whole stack into the config
checks (and make config_lib part of an import cycle).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import ml_collections

from vkd_jax.errors import ConfigError

# The study's four analyses: the table's title and the inference it tests.
ANALYSES: Mapping[str, dict[str, str]] = {
    "subset_size": dict(
        title="Pretraining subset size (the study's Table 1)",
        inference="Distillation reduces the pretraining subset needed: the student of "
        "teachers pretrained on the smallest subset reaches the best teacher pretrained "
        "on the largest one",
    ),
    "task_complexity": dict(
        title="Task complexity (the study's Table 2)",
        inference="Complexities are complementary: the student of the C1-C3 teachers "
        "beats each of them",
    ),
    "ood_teachers": dict(
        title="Out-of-distribution teachers (the study's Table 3)",
        inference="Pretraining datasets are complementary: the student of teachers "
        "pretrained on two domains beats each of them",
    ),
    "task_categories": dict(
        title="Pretext task categories (the study's Table 4)",
        inference="Task categories are complementary: the student of two teachers from "
        "different pretext tasks beats each of them and the student without pretraining",
    ),
}

TEACHER_KEYS = {"model", "task", "complexity", "domain", "split"}
_ROW_KEYS = {"title", "student", "teachers"}
_DOMAIN_KEYS = {"name", "builder_config", "root", "annotations", "layout"}
NO_PRETRAINING = "none"


# ----------------------------------------------------------------------------- config


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the first bad key of the ``ensemble`` section."""
    if "ensemble" not in config:
        raise ConfigError(
            "mode=ensemble needs an `ensemble` section: use a configs/ensembles/ config"
        )
    e = config.ensemble
    if e.analysis not in ANALYSES:
        raise ConfigError(f"ensemble.analysis = {e.analysis!r}: one of {', '.join(ANALYSES)}")
    if not e.rows:
        raise ConfigError("ensemble.rows is empty: nothing to distil")
    if not e.seeds:
        raise ConfigError("ensemble.seeds is empty: at least one student seed is needed")
    for key in ("pretrain.steps", "pretrain.batch_size", "pretrain.frame_stride"):
        if not _get(e, key) >= 1:
            raise ConfigError(f"ensemble.{key} = {_get(e, key)!r}: must be >= 1")
    if not e.finetune_steps >= 0:
        raise ConfigError(f"ensemble.finetune_steps = {e.finetune_steps!r}: must be >= 0")
    for name, d in e.domains.items():
        if set(d.keys()) != _DOMAIN_KEYS:
            raise ConfigError(f"ensemble.domains.{name} must have keys {sorted(_DOMAIN_KEYS)}")
    for row_name, row in e.rows.items():
        if set(row.keys()) != _ROW_KEYS:
            raise ConfigError(f"ensemble.rows.{row_name} must have keys {sorted(_ROW_KEYS)}")
        split_model(row.student, f"ensemble.rows.{row_name}.student")
        if len(row.teachers) < 2:
            raise ConfigError(f"ensemble.rows.{row_name}: an ensemble needs at least 2 teachers")
        for t_name, t in row.teachers.items():
            where = f"ensemble.rows.{row_name}.teachers.{t_name}"
            if set(t.keys()) != TEACHER_KEYS:
                raise ConfigError(
                    f"{where} must have keys {sorted(TEACHER_KEYS)} "
                    "(configs/ensembles/common.teacher)"
                )
            split_model(t.model, f"{where}.model")
            if t.domain not in e.domains:
                raise ConfigError(f"{where}.domain = {t.domain!r}: not in ensemble.domains")
            if t.task != NO_PRETRAINING:
                from vkd_jax import pretext

                try:
                    pretext.task_module(t.task)
                except ValueError as err:
                    raise ConfigError(f"{where}.task: {err}") from None
            if t.complexity not in (1, 2, 3):
                raise ConfigError(f"{where}.complexity = {t.complexity!r}: one of 1, 2, 3")


def ordered(section: ml_collections.ConfigDict) -> list[tuple[str, Any]]:
    """A rows or teachers section in the natural order of its names (subset_300 before
    subset_1200): ConfigDict keeps no insertion order, it sorts its keys."""
    natural = lambda key: [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", key)]
    return sorted(section.items(), key=lambda kv: natural(kv[0]))


def split_model(model: str, where: str) -> tuple[str, str]:
    """(family, variant) of a 'family/variant' entry; ConfigError naming ``where`` otherwise."""
    parts = model.split("/")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"{where} = {model!r}: expected 'family/variant', e.g. 'r2plus1d/tiny'")
    return parts[0], parts[1]


def _get(section, dotted: str):
    for part in dotted.split("."):
        section = section[part]
    return section
