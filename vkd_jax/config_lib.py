"""Config checks that run before any compute.

``main`` locks the config, so a misspelled command-line override fails in
ml_collections itself. A config *file* can still add a key the code never
reads (``c.loss.kd_wieght = 2``); :func:`validate` catches that by comparing
every key against the schema declared in ``configs/default.py``.
"""

from __future__ import annotations

import importlib.util
import os

import ml_collections

MODES = (
    "data",
    "train",
    "distill",
    "evaluate",
    "experiment",
    "ablation",
    "cka",
    "pretrain",
    "probe",
)
# Modes that load the teachers given by `teachers.<name>.checkpoint`; the other modes never
# read those keys, so a recipe's required checkpoints are not required there (fine-tuning
# a teacher with mode=train must not ask for the teachers it is about to produce).
TEACHER_MODES = ("distill", "experiment", "ablation")
# Sections whose keys are names chosen by the user (teacher names), not schema keys.
_FREE_SECTIONS = ("teachers",)
# Sections only some configs declare (e.g. configs/ablation.py).
_OPTIONAL_SECTIONS = ("ablation",)


def default_config() -> ml_collections.ConfigDict:
    """The schema: ``get_config()`` of ``configs/default.py`` next to the package."""
    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "default.py")
    spec = importlib.util.spec_from_file_location("_vkd_default_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _flat_keys(cfg, prefix=""):
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict):
            yield from _flat_keys(value, name + ".")
        else:
            yield name


def _get(config, dotted: str):
    for part in dotted.split("."):
        config = config[part]
    return config


def _is_teacher_checkpoint(key: str) -> bool:
    parts = key.split(".")
    return len(parts) == 3 and parts[0] == "teachers" and parts[2] == "checkpoint"


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first unknown key or bad value of ``config``."""
    if config.get("mode") not in MODES:
        raise ValueError(f"Unknown mode {config.get('mode')!r}; known modes: {', '.join(MODES)}")
    schema = set(_flat_keys(default_config()))
    for key in _flat_keys(config):
        top = key.split(".")[0]
        if top in _FREE_SECTIONS or top in _OPTIONAL_SECTIONS:
            continue
        if key not in schema:
            raise ValueError(
                f"Unknown config key {key!r} (not declared in configs/default.py); "
                "check its spelling"
            )
    missing = [
        key
        for key in _flat_keys(config)
        if _get(config, key) is None
        and (config.mode in TEACHER_MODES or not _is_teacher_checkpoint(key))
    ]
    if missing:
        raise ValueError(
            "Required config keys not set: "
            + ", ".join(missing)
            + " (pass them as --config.<key>=<value>)"
        )
    if config.mode == "pretrain":
        from vkd_jax import pretext  # Names the task's module or raises, before any compute.

        pretext.task_module(config.pretext.task)
        if config.pretext.complexity not in (1, 2, 3):
            raise ValueError(
                f"pretext.complexity must be 1, 2 or 3, got {config.pretext.complexity}"
            )
    spec_keys = {"name", "variant", "checkpoint", "num_steps", "learning_rate"}
    for name, spec in config.teachers.items():
        if not isinstance(spec, ml_collections.ConfigDict) or set(spec.keys()) != spec_keys:
            raise ValueError(
                f"config.teachers.{name} must be a model entry with keys {sorted(spec_keys)} "
                "(use configs.default.model_spec)"
            )
