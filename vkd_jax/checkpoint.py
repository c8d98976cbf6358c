"""Checkpoints: resumable training state, and exported models that load as teachers.

Two kinds of directories:

* **Training checkpoints** (``<stage>/checkpoints/<step>``): the whole
  ``TrainState`` (student, training-only heads, optimizer state, step) through an
  orbax ``CheckpointManager``; a stage resumes from the latest one. Orbax writes
  each step to a temporary directory and renames it when complete, so a run
  killed mid-save never leaves a checkpoint that reads as valid.
* **Model directories** (``<stage>/model``, or what ``tools/convert_checkpoint.py``
  writes): the deployable variables of one model (``params`` and
  ``batch_stats``, no optimizer state, no training-only heads) plus
  ``vkd_model.json`` naming the architecture, class count and input
  normalization. A config's teacher entry points at such a directory.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from vkd_jax import errors, models, storage

METADATA_FILE = "vkd_model.json"
_VARIABLES_DIR = "variables"


# Defined in the leaf module vkd_jax.errors; kept importable from here.
CheckpointError = errors.CheckpointError


# ----------------------------------------------------------------- model dirs


def save_model(path: str, variables: Mapping[str, Any], metadata: Mapping[str, Any]) -> None:
    """Writes a model directory atomically (temporary directory, then rename).

    Args:
      path: destination directory; replaced if it exists.
      variables: ``{"params": ..., "batch_stats": ...}`` of the model.
      metadata: at least ``name``, ``variant`` and ``num_classes``; usually
        also ``num_frames``, ``crop_size``, ``mean``, ``std`` and ``source``.
    """
    for key in ("name", "variant", "num_classes"):
        if key not in metadata:
            raise ValueError(f"Model metadata needs {key!r}, got keys {sorted(metadata)}")
    path = storage.resolve(path)
    tmp = path + ".tmp"
    if jax.process_index() == 0 and storage.exists(tmp):
        storage.rmtree(tmp)
    variables = jax.tree_util.tree_map(np.asarray, jax.device_get(dict(variables)))
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.join(tmp, _VARIABLES_DIR), variables)
        ckptr.wait_until_finished()
    if jax.process_index() == 0:
        storage.write_json(
            os.path.join(tmp, METADATA_FILE), dict(metadata), indent=2, default=_json_default
        )
        storage.replace_dir(tmp, path)


def read_metadata(path: str) -> dict[str, Any]:
    """Reads ``vkd_model.json`` of a model directory, with errors that say what is wrong."""
    if not path:
        raise CheckpointError("No checkpoint path given")
    if not storage.isdir(path):
        raise CheckpointError(
            f"Model checkpoint not found: {path!r} (expected a directory written by a vkd_jax "
            "train/distill stage or by tools/convert_checkpoint.py)"
        )
    meta_path = os.path.join(path, METADATA_FILE)
    if not storage.isfile(meta_path) or not storage.isdir(os.path.join(path, _VARIABLES_DIR)):
        raise CheckpointError(
            f"{path!r} is not a complete vkd_jax model directory: it needs {METADATA_FILE} and "
            f"{_VARIABLES_DIR}/ (an interrupted save leaves only a '.tmp' directory)"
        )
    return storage.read_json(meta_path)


def load_model(
    path: str, *, num_classes: int | None = None, dtype: Any = None, what: str = "model"
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Loads a model directory.

    Args:
      path: a directory written by :func:`save_model`.
      num_classes: if given, the class count the model must have (the dataset's).
      dtype: computation dtype for the returned module (parameters stay float32).
      what: how error messages name this model (e.g. ``"teacher 'cnn'"``).

    Returns:
      ``(module, variables, metadata)``.

    Raises:
      CheckpointError: missing or incomplete directory, or a class-count mismatch.
    """
    try:
        meta = read_metadata(path)
    except CheckpointError as e:
        raise CheckpointError(f"{what}: {e}") from None
    if num_classes is not None and int(meta["num_classes"]) != int(num_classes):
        raise CheckpointError(
            f"{what} at {path!r} has {meta['num_classes']} classes but the dataset has "
            f"{num_classes}; fine-tune it on this dataset first (mode=train) or pick the "
            "matching dataset"
        )
    kwargs = {} if dtype is None else {"dtype": dtype}
    if "num_frames" in meta and "crop_size" in meta:
        kwargs["input_size"] = (meta["num_frames"], meta["crop_size"], meta["crop_size"])
    module = models.get_model(
        meta["name"], variant=meta["variant"], num_classes=int(meta["num_classes"]), **kwargs
    )
    abstract = abstract_variables(module, meta)
    with ocp.StandardCheckpointer() as ckptr:
        try:
            variables = ckptr.restore(
                os.path.join(storage.resolve(path), _VARIABLES_DIR),
                jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), abstract),
            )
        except (ValueError, KeyError) as e:
            raise CheckpointError(
                f"{what} at {path!r} does not match {meta['name']}/{meta['variant']}: {e}"
            ) from e
    return module, variables, meta


def abstract_variables(module: Any, meta: Mapping[str, Any]) -> dict[str, Any]:
    """Shapes of ``module``'s variables (no compute) for the input in ``meta``."""
    t = int(meta.get("num_frames", 8))
    s = int(meta.get("crop_size", 32))
    video = jax.ShapeDtypeStruct((1, t, s, s, 3), np.float32)
    out = jax.eval_shape(lambda v: module.init(jax.random.key(0), v, train=False), video)
    return dict(out)


# -------------------------------------------------------- training checkpoints


def checkpoint_manager(directory: str, *, max_to_keep: int) -> ocp.CheckpointManager:
    """An orbax manager for a stage's training state; saves are asynchronous."""
    return ocp.CheckpointManager(
        epath.Path(storage.resolve(directory)),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
    )


def save_state(manager: ocp.CheckpointManager, step: int, state: Any) -> None:
    manager.save(step, args=ocp.args.StandardSave(state), force=True)


def restore_state(manager: ocp.CheckpointManager, abstract_state: Any) -> tuple[Any, int] | None:
    """Restores the newest intact training state onto ``abstract_state``'s shardings, or
    None when there is no checkpoint.

    A checkpoint that fails to restore (array files cut short by a partial copy from a
    bucket, a disk error) is not the end of the run: a warning names its step and the
    reason, and the next older one is tried. Once one restores, the damaged newer ones are
    deleted (training would otherwise stop when it reaches their step numbers again). If
    none restores, `CheckpointError` names the folder to delete to start the stage over.
    """
    steps = sorted(manager.all_steps(), reverse=True)
    if not steps:
        return None
    failures: list[tuple[int, str]] = []
    for step in steps:
        logging.info("Resuming from checkpoint at step %d in %s", step, manager.directory)
        try:
            state = manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
        except Exception as e:  # noqa: BLE001 - any failure to read a step means "damaged".
            reason = " ".join(str(e).split())[:300] or type(e).__name__
            failures.append((step, reason))
            logging.warning(
                "Checkpoint at step %d in %s cannot be restored (%s: %s); trying the one before.",
                step,
                manager.directory,
                type(e).__name__,
                reason,
            )
            continue
        for damaged, _ in failures:
            logging.warning(
                "Deleting the damaged checkpoint at step %d; resuming from step %d.", damaged, step
            )
            manager.delete(damaged)
        return state, step
    newest, reason = failures[0]
    layout = ""
    if all("Structure mismatch" in r for _, r in failures):
        # Not damage: the state's tree differs from the one saved.
        layout = (
            "; the checkpoints hold a training state of another layout, e.g. one written "
            "before the optimizer state became one vector per moment (vkd_jax.train_step."
            "FlatOptimizer), which this version cannot resume"
        )
    raise CheckpointError(
        f"no intact checkpoint in {manager.directory} (steps {', '.join(map(str, steps))}; step "
        f"{newest}: {reason}){layout}; delete {manager.directory} to start this stage over"
    )


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (tuple, np.ndarray)):
        return list(obj)
    raise TypeError(f"Not JSON serializable: {type(obj).__name__}")


def load_teachers(
    teachers: Mapping[str, Any],
    names: tuple[str, ...],
    num_classes: int,
    *,
    dtype: Any,
    clip: tuple[int, int],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Loads the named teachers' model directories, failing before any compute on a bad entry.

    Args:
      teachers: teacher name -> model entry with ``name``, ``variant``, ``checkpoint``.
      names: the teachers to load (those the objective needs).
      num_classes: the dataset's class count (a mismatch is an error).
      dtype: computation dtype of the loaded modules.
      clip: ``(num_frames, crop_size)`` of the run's clips (checked against teachers
        whose position tables are sized for their clip).

    Returns:
      ``(modules, variables)``, each keyed by teacher name.
    """
    modules, variables = {}, {}
    for name in names:
        if name not in teachers:
            raise ValueError(
                f"The loss needs teacher {name!r} but config.teachers has {sorted(teachers)}"
            )
        spec = teachers[name]
        if not spec.checkpoint:
            raise CheckpointError(
                f"Teacher {name!r} has no checkpoint: set config.teachers.{name}.checkpoint"
            )
        module, var, meta = load_model(
            spec.checkpoint, num_classes=num_classes, dtype=dtype, what=f"teacher {name!r}"
        )
        if (meta["name"], meta["variant"]) != (spec.name, spec.variant):
            logging.warning(
                "Teacher %r: config says %s/%s, checkpoint holds %s/%s; using the checkpoint's",
                name,
                spec.name,
                spec.variant,
                meta["name"],
                meta["variant"],
            )
        sized = "input_size" in models.family_module(meta["name"]).VARIANTS[meta["variant"]]
        want = tuple(clip)
        have = (meta.get("num_frames", want[0]), meta.get("crop_size", want[1]))
        if sized and tuple(have) != tuple(want):
            # Position tables are sized for the clip the teacher was built for.
            raise CheckpointError(
                f"Teacher {name!r} ({meta['name']}/{meta['variant']}) takes {have[0]}x{have[1]}"
                f"x{have[1]} clips but config.data gives {want[0]}x{want[1]}x{want[1]}; set "
                "config.data.num_frames and config.data.crop_size to match"
            )
        modules[name], variables[name] = module, var
    return modules, variables


class Preemption:
    """Turns SIGTERM (TPU preemption, job schedulers) into a flag a training loop checks, so
    that it saves a checkpoint and exits instead of dying mid-step."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # Not the main thread: leave signals alone.
            self._previous = None
        return self

    def _handle(self, signum, frame):
        logging.warning("SIGTERM received: saving a checkpoint, then exiting")
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
