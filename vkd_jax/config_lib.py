"""Config checks that run before any compute.

``main`` locks the config, so a misspelled command-line override fails in
ml_collections itself. A config *file* can still add a key the code never
reads (``c.loss.kd_wieght = 2``); :func:`validate` catches that by comparing
every key against the schema declared in ``configs/default.py``.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import ml_collections

from vkd_jax import errors, storage

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
    "ensemble",
    "export",
)
# Modes that load the teachers given by `teachers.<name>.checkpoint`; the other modes never
# read those keys, so a recipe's required checkpoints are not required there (fine-tuning
# a teacher with mode=train must not ask for the teachers it is about to produce).
TEACHER_MODES = ("distill", "experiment", "ablation")
# Sections whose keys are names chosen by the user (teacher names), not schema keys.
_FREE_SECTIONS = ("teachers",)
# Sections only some configs declare (configs/ablation.py; configs/ensembles/, whose section
# vkd_jax.ensemble_config.validate checks).
_OPTIONAL_SECTIONS = ("ablation", "ensemble")


# Defined in the leaf module vkd_jax.errors; kept importable from here.
ConfigError = errors.ConfigError


# Value ranges, checked before any compute (a negative batch size otherwise dies deep in
# TensorFlow). Keys absent from a config are skipped; teachers.<name> entries are checked
# in `validate`.
_AT_LEAST_1 = (
    "data.num_frames data.frame_stride data.crop_size data.eval_num_clips "
    "train.batch_size train.eval_batch_size train.log_every train.checkpoint_every "
    "train.max_to_keep optim.grad_accum_steps cka.num_examples cka.batch_size probe.chunk_size "
    "eval.latency_batch_size eval.latency_iters loss.sdd.dim "
    "pretext.vcop.clip_frames pretext.vcop.clip_stride pretext.vcop.hidden_dim "
    "pretext.rspnet.dim pretext.rspnet.queue_size pretext.cvrl.hidden_dim pretext.cvrl.dim "
    "pretext.cvrl.num_layers pretext.tdl.dim pretext.tdl.queue_size"
).split()
_AT_LEAST_0 = (
    "train.num_steps train.eval_every optim.warmup_steps optim.learning_rate "
    "optim.min_learning_rate optim.weight_decay optim.grad_clip_norm data.shuffle_buffer "
    "data.prefetch data.folder.short_side data.folder.fps data.folder.max_frames "
    "data.folder.subset data.folder.num_workers experiment.teacher_num_steps "
    "loss.ce_weight loss.kd_weight loss.sdd_weight loss.rkd_distance_weight "
    "loss.rkd_angle_weight loss.feature_kd_weight loss.sdd.adapter_weight "
    "loss.datw.confidence_weight loss.datw.discrepancy_weight loss.sdd.ridge probe.steps "
    "loss.datw.confidence_temperature "
    "probe.learning_rate probe.weight_decay pretext.vcop.interval pretext.tdl.min_gap "
    "pretext.rspnet.avid_weight pretext.rspnet.rsp_weight"
).split()
_ABOVE_0 = (
    "loss.temperature loss.datw.weight_temperature cka.rbf_threshold "
    "pretext.rspnet.temperature pretext.cvrl.temperature pretext.tdl.temperature "
    "pretext.cvrl.power"
).split()
_PROBABILITY = (
    "optim.momentum loss.label_smoothing pretext.dropout_rate pretext.rspnet.momentum "
    "pretext.tdl.momentum pretext.rspnet.grayscale_prob pretext.cvrl.grayscale_prob "
    "pretext.tdl.mixup_max"
).split()
_CHOICES = {
    "data.eval_num_crops": (1, 3),
    "data.folder.split": (1, 2, 3),
    "pretext.complexity": (1, 2, 3),
    "loss.teacher_weighting": ("datw", "uniform", "fixed", "oracle", "ca_mkd", "ebkd"),
    "loss.datw.confidence": ("entropy", "max_prob"),
    "loss.datw.discrepancy": ("cosine", "centered_cosine", "js"),
    "loss.datw.place": ("mix", "per_teacher"),
    "loss.datw.combine": ("sum", "product"),
    "loss.ensemble_space": ("logits", "probs"),
    "loss.sdd.target": ("residual", "random_projections"),
}


def _check_ranges(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the first value outside its range."""
    keys = set(_flat_keys(config))

    def check(key, ok, must):
        if key in keys:
            value = _get(config, key)
            try:
                good = ok(value)
            except TypeError:
                good = False
            if not good:
                raise ConfigError(f"{key} = {value!r}: must be {must}")

    for key in _AT_LEAST_1:
        check(key, lambda v: v >= 1, ">= 1")
    for key in _AT_LEAST_0:
        check(key, lambda v: v >= 0, ">= 0")
    for key in _ABOVE_0:
        check(key, lambda v: v > 0, "> 0")
    for key in _PROBABILITY:
        check(key, lambda v: 0 <= v <= 1, "in [0, 1]")
    for key, choices in _CHOICES.items():
        check(key, lambda v, c=choices: v in c, "one of " + ", ".join(map(str, choices)))
    check("mesh.data", lambda v: v == -1 or v >= 1, "-1 (all devices) or >= 1")
    check(
        "data.train_scale",
        lambda v: len(v) == 2 and 0 < v[0] <= v[1] <= 1,
        "(low, high) with 0 < low <= high <= 1",
    )
    for key in ("data.train_aspect_ratio", "pretext.cvrl.aspect_ratio"):
        check(key, lambda v: len(v) == 2 and 0 < v[0] <= v[1], "(low, high), 0 < low <= high")
    for key in ("pretext.rspnet.crop_scale", "pretext.cvrl.crop_scale"):
        check(key, lambda v: len(v) == 2 and 0 < v[0] <= v[1] <= 1, "(low, high) in (0, 1]")
    check("pretext.rspnet.speeds", lambda v: all(x >= 1 for x in v), "speeds >= 1")


def _check_model_dirs(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError for a model directory that is set but absent (before any compute:
    not after a dataset build or a teacher's training)."""
    paths = [("init_checkpoint", config.get("init_checkpoint", ""))]
    if config.mode in TEACHER_MODES:
        paths += [(f"teachers.{n}.checkpoint", t.checkpoint) for n, t in config.teachers.items()]
    for key, path in paths:
        if isinstance(path, str) and path and not storage.isdir(path):
            raise ConfigError(f"{key} = {path!r}: no such model directory")


def check_workdir(path: str) -> str:
    """The workdir as stages use it: an absolute local path, or a bucket URL unchanged.

    Raises:
      ConfigError: an empty path.
    """
    if not path:
        raise ConfigError("workdir is empty: pass --workdir DIR (a local path or gs://...)")
    return storage.resolve(path)


def parse_value(text: str):
    """A Python literal, or the text itself when it is not one (``adamw``, ``js``)."""
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_assignments(text: str, *, what: str) -> dict[str, Any]:
    """``"a.b=1; c=(1, 2); d=js"`` -> ``{"a.b": 1, "c": (1, 2), "d": "js"}``.

    Raises:
      ValueError: an item is not ``key=value`` (``what`` names the text in the message).
    """
    out: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in str(text).split(";"))):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"{what}: {item!r} is not key=value")
        out[key.strip()] = parse_value(value.strip())
    return out


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


def _undeclared(keys, schema: set[str]) -> list[str]:
    """The keys neither in the schema nor in a free or optional section."""
    free = _FREE_SECTIONS + _OPTIONAL_SECTIONS
    return [k for k in keys if k not in schema and k.split(".")[0] not in free]


def unknown_override_keys(argv) -> list[str]:
    """Keys of ``--config.<key>=...`` arguments that the schema does not declare."""
    keys = [a[len("--config.") :].split("=", 1)[0] for a in argv if a.startswith("--config.")]
    return _undeclared(keys, set(_flat_keys(default_config())))


def _is_teacher_checkpoint(key: str) -> bool:
    parts = key.split(".")
    return len(parts) == 3 and parts[0] == "teachers" and parts[2] == "checkpoint"


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError (a ValueError) naming the first unknown key or bad value."""
    if config.get("mode") not in MODES:
        raise ConfigError(f"Unknown mode {config.get('mode')!r}; known modes: {', '.join(MODES)}")
    unknown = _undeclared(_flat_keys(config), set(_flat_keys(default_config())))
    if unknown:
        raise ConfigError(
            f"Unknown config key {unknown[0]!r} (not declared in configs/default.py); "
            "check its spelling"
        )
    missing = [
        key
        for key in _flat_keys(config)
        if _get(config, key) is None
        and (config.mode in TEACHER_MODES or not _is_teacher_checkpoint(key))
    ]
    if missing:
        raise ConfigError(
            "Required config keys not set: "
            + ", ".join(missing)
            + " (pass them as --config.<key>=<value>)"
        )
    _check_ranges(config)
    _check_model_dirs(config)
    if config.mode == "ensemble":
        from vkd_jax import ensemble_config

        ensemble_config.validate(config)
    if config.mode == "pretrain":
        from vkd_jax import pretext  # Names the task's module or raises, before any compute.

        try:
            pretext.task_module(config.pretext.task)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    spec_keys = {"name", "variant", "checkpoint", "num_steps", "learning_rate"}
    for name, spec in config.teachers.items():
        if not isinstance(spec, ml_collections.ConfigDict) or set(spec.keys()) != spec_keys:
            raise ConfigError(
                f"config.teachers.{name} must be a model entry with keys {sorted(spec_keys)} "
                "(use configs.default.model_spec)"
            )
        for key in ("num_steps", "learning_rate"):
            if not spec[key] >= 0:
                raise ConfigError(f"teachers.{name}.{key} = {spec[key]!r}: must be >= 0")
