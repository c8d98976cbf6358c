"""A workdir belongs to one run at a time: the lock ``main`` takes before any compute.

Two runs in one workdir would write one checkpoint series, one model and one
``results.md`` from two configs, with nothing saying which came from which. ``main``
therefore takes ``<workdir>/.vkd_lock`` (host, pid, start time, command, as JSON) before
it builds anything, and removes it when the run ends, however it ends short of SIGKILL.

Local (and NFS) workdirs: the file is created if absent and held with ``fcntl.flock``
for the life of the process. The kernel drops that lock when the process dies, however it
dies, so:

* a second process finds the lock held and stops with one line naming the holder;
* a file left by a killed run (SIGKILL, OOM, a lost machine) is no longer locked: on the
  same host that proves the run is gone, and the file is taken over with a warning; a
  file written by another host is not taken over (that host's run may be alive, and its
  ``flock`` need not reach us): the error says which file to delete once it is not.

``gs://`` workdirs: a bucket has no lock. The file is read, then written, and read back;
two launches within the same second or so can both pass. A stale file from another host
is never taken over. docs/reliability.md says what that does and does not guarantee.

Multi-process runs (``jax.process_count() > 1``, one process per host): process 0 takes
the lock for the whole job and tells every process whether it got it
(``broadcast_one_to_all``), so all processes of a refused job stop together rather than
waiting on a process 0 that has left.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

from absl import logging

from vkd_jax import errors, storage

LOCK_FILE = ".vkd_lock"


def lock_path(workdir: str) -> str:
    return os.path.join(workdir, LOCK_FILE)


def _describe(holder: dict[str, Any]) -> str:
    started = holder.get("started")
    when = (
        time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started))
        if isinstance(started, (int, float))
        else "an unknown time"
    )
    return f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, started {when}"


def _read(text: str) -> dict[str, Any]:
    try:
        holder = json.loads(text)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _busy(path: str, holder: dict[str, Any], why: str) -> errors.WorkdirBusyError:
    return errors.WorkdirBusyError(
        f"workdir in use: {path} is held by {_describe(holder)} ({why}); wait for that run, "
        "or give this one another --workdir"
    )


class WorkdirLock:
    """The held lock of one workdir; `release` (or leaving `hold`) gives it back."""

    def __init__(self, path: str, info: dict[str, Any], fd: int | None):
        self.path, self.info, self._fd = path, info, fd

    def release(self) -> None:
        if self._fd is None and not self.info:
            return
        try:
            if storage.is_remote(self.path):
                if storage.exists(self.path) and _read(storage.read_text(self.path)) == self.info:
                    storage.remove(self.path)
            else:
                # Unlink while still holding the flock, then close: a process that opened
                # the old file sees its inode gone (`_acquire_local` checks) and retries.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
        finally:
            if self._fd is not None:
                os.close(self._fd)
            self._fd, self.info = None, {}


def _info(command: Sequence[str] | None) -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": time.time(),
        "command": " ".join(command if command is not None else sys.argv),
    }


def _acquire_local(path: str, info: dict[str, Any]) -> WorkdirLock:
    import fcntl

    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            with open(path) as f:
                holder = _read(f.read())
            os.close(fd)
            raise _busy(path, holder, "a live process holds its lock") from None
        try:
            if os.fstat(fd).st_ino != os.stat(path).st_ino:
                os.close(fd)  # Released and removed by its last holder meanwhile: retry.
                continue
        except FileNotFoundError:
            os.close(fd)
            continue
        break
    old = _read(os.pread(fd, 1 << 16, 0).decode(errors="replace"))
    if old:
        if old.get("host") != info["host"]:
            os.close(fd)
            raise errors.WorkdirBusyError(
                f"workdir in use: {path} was written by {_describe(old)}, another host, whose "
                "run cannot be checked from here; delete that file once that run has ended"
            )
        logging.warning(
            "Taking over the workdir lock %s left by a run that ended without releasing it "
            "(%s); its last checkpoint, if any, is resumed as usual.",
            path,
            _describe(old),
        )
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    os.fsync(fd)
    return WorkdirLock(path, info, fd)


def _acquire_remote(path: str, info: dict[str, Any]) -> WorkdirLock:
    if storage.exists(path):
        old = _read(storage.read_text(path))
        raise errors.WorkdirBusyError(
            f"workdir in use: {path} is held by {_describe(old)} (a bucket's lock cannot be "
            "checked for a live process); delete that file once that run has ended"
        )
    storage.write_text(path, json.dumps(info))
    if _read(storage.read_text(path)) != info:  # Another launch wrote after us.
        raise _busy(path, _read(storage.read_text(path)), "it wrote the lock at the same time")
    return WorkdirLock(path, info, None)


def acquire(workdir: str, *, command: Sequence[str] | None = None) -> WorkdirLock:
    """Takes ``workdir``'s lock in this process, or raises `errors.WorkdirBusyError`."""
    path = lock_path(workdir)
    info = _info(command)
    if storage.is_remote(path):
        return _acquire_remote(path, info)
    return _acquire_local(path, info)


# Lock files this process holds: holding one again (a stage whose folder is the run's
# workdir, as in mode=train) is a no-op instead of a conflict with itself.
_HELD: set[str] = set()


@contextlib.contextmanager
def hold(workdir: str, *, command: Sequence[str] | None = None) -> Iterator[WorkdirLock | None]:
    """Holds ``workdir``'s lock for the block; with several JAX processes, process 0
    holds it for all and every process stops if it could not. Re-entrant within a
    process (`vkd_jax.train.run` holds each stage's folder inside the run's workdir)."""
    import jax

    key = lock_path(workdir)
    key = key if storage.is_remote(key) else os.path.realpath(key)
    if key in _HELD:
        yield None
        return
    multi = jax.process_count() > 1
    lock, failure = None, None
    if jax.process_index() == 0:
        try:
            lock = acquire(workdir, command=command)
        except errors.WorkdirBusyError as e:
            failure = e
    if multi:
        import numpy as np
        from jax.experimental import multihost_utils

        ok = multihost_utils.broadcast_one_to_all(np.int32(failure is None))
        if not int(ok) and failure is None:
            failure = errors.WorkdirBusyError(
                f"workdir in use: process 0 could not take {lock_path(workdir)} (its log "
                "names the holder)"
            )
    if failure is not None:
        raise failure
    _HELD.add(key)
    try:
        yield lock
    finally:
        _HELD.discard(key)
        if lock is not None:
            lock.release()


# ------------------------------------------------------------ a stage's settings

CONFIG_FILE = "config.json"  # A stage's resolved settings (and its whole config, for the record).
CHANGES_FILE = "config_changes.json"  # Changes allowed by config.allow_config_change.

# The config keys a stage reads that do NOT shape its trained model: where the data
# lives, how the run is logged, checkpointed and evaluated, and input speed. A resumed
# or finished stage may differ from its recorded settings in these; any other difference
# stops the run (`claim`). Sections a stage never reads for training (eval, cka, probe,
# export, mesh, compilation_cache, mode, ...) are not recorded at all: `stage_settings`
# takes the model, loss, steps, teachers and split from the stage, and data, optim,
# train.batch_size, seed and dtype from the config.
NOT_SHAPING = (
    "data.data_dir",
    "data.eval_split",
    "data.eval_num_clips",
    "data.eval_num_crops",
    "data.prefetch",
    "data.folder.num_workers",
    "train.log_every",
    "train.eval_every",
    "train.checkpoint_every",
    "train.max_to_keep",
    "train.eval_batch_size",
)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if hasattr(tree, "to_dict"):
        tree = tree.to_dict()
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key in sorted(tree):
            out.update(_flatten(tree[key], f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def _settings(tree: dict[str, Any]) -> dict[str, Any]:
    flat = {k: v for k, v in _flatten(tree).items() if k not in NOT_SHAPING}
    return json.loads(json.dumps(flat, default=list))  # Tuples as JSON reads them back.


def stage_settings(config: Any, stage: Any) -> dict[str, Any]:
    """The settings that shape a training stage's model (`vkd_jax.stages.Stage`), flat
    (``loss.temperature``), as JSON values."""
    return _settings(
        {
            "seed": int(config.seed),
            "dtype": config.dtype,
            "data": dict(
                config.data.to_dict(), train_split=stage.train_split or config.data.train_split
            ),
            "optim": config.optim,
            "train": {"batch_size": int(config.train.batch_size), "num_steps": stage.num_steps},
            "model": stage.model,
            "loss": stage.loss,
            "teachers": {name: spec for name, spec in dict(stage.teachers).items()},
            "init_checkpoint": stage.init_checkpoint,
        }
    )


def pretrain_settings(config: Any, spec: Any) -> dict[str, Any]:
    """The settings that shape a pretraining stage's model."""
    return _settings(
        {
            "seed": int(config.seed),
            "dtype": config.dtype,
            "data": config.data,
            "optim": config.optim,
            "train": {
                "batch_size": int(config.train.batch_size),
                "num_steps": int(config.train.num_steps),
            },
            "model": spec,
            "pretext": config.pretext,
            "init_checkpoint": config.init_checkpoint,
        }
    )


def differing_keys(have: dict[str, Any], want: dict[str, Any]) -> list[str]:
    missing = object()
    return sorted(k for k in set(have) | set(want) if have.get(k, missing) != want.get(k, missing))


def claim(
    stage_dir: str, settings: dict[str, Any], *, allow_change: bool, name: str, config: Any = None
) -> None:
    """Records ``settings`` in ``<stage_dir>/config.json``, or checks them against the
    ones recorded there by an earlier run of the stage.

    Raises:
      errors.ConfigChangedError: the recorded settings differ and ``allow_change`` is
        False; the message lists the differing keys and the two ways on.
    """
    import jax

    path = os.path.join(stage_dir, CONFIG_FILE)
    record = {"settings": settings}
    if config is not None:
        record["config"] = json.loads(json.dumps(_flatten(config), default=list))
    if storage.isfile(path):
        have = storage.read_json(path).get("settings", {})
        diff = differing_keys(have, settings)
        if not diff:
            return
        shown = ", ".join(diff[:8]) + (f" and {len(diff) - 8} more" if len(diff) > 8 else "")
        if not allow_change:
            raise errors.ConfigChangedError(
                f"stage {name} in {stage_dir} was run with other settings ({shown} differ; "
                f"{CONFIG_FILE} there has the recorded ones): give a new --workdir, or pass "
                "--config.allow_config_change=True to continue it with these (recorded in "
                f"{CHANGES_FILE})"
            )
        logging.warning(
            "Stage %s continues with changed settings (%s), as config.allow_config_change "
            "allows; recorded in %s.",
            name,
            shown,
            os.path.join(stage_dir, CHANGES_FILE),
        )
        if jax.process_index() == 0:
            changes_path = os.path.join(stage_dir, CHANGES_FILE)
            changes = storage.read_json(changes_path) if storage.isfile(changes_path) else []
            changes.append(
                {
                    "time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                    "command": " ".join(sys.argv),
                    "changed": {k: [have.get(k), settings.get(k)] for k in diff},
                }
            )
            storage.write_json(changes_path, changes, indent=1)
    if jax.process_index() == 0:
        storage.makedirs(stage_dir)
        storage.write_json(path, record, indent=1)


def claim_stage(config: Any, stage: Any) -> None:
    """`claim` for a `vkd_jax.stages.Stage` trained with ``config``."""
    claim(
        stage.workdir,
        stage_settings(config, stage),
        allow_change=bool(config.get("allow_config_change", False)),
        name=stage.name,
        config=config,
    )


def find_finished_stage(
    settings: dict[str, Any], roots: Sequence[str], done_files: Sequence[str]
) -> str | None:
    """A stage folder under ``roots`` recorded with exactly ``settings`` that holds every
    file of ``done_files`` (paths relative to it); None if there is none.

    Lets a table reuse a stage another run already trained with the same settings (a
    screen's stage in the final table, say) instead of training it again.
    """
    for root in roots:
        # Linked stages too: a table's reused stage is a link to the screen's folder.
        for path, dirs, files in storage.walk(root, followlinks=True):
            dirs[:] = [d for d in dirs if d not in ("model", "checkpoints")]
            if CONFIG_FILE not in files:
                continue
            have = storage.read_json(os.path.join(path, CONFIG_FILE)).get("settings")
            if have == settings and all(
                storage.isfile(os.path.join(path, f)) for f in done_files
            ):
                return path
    return None


# ------------------------------------------------------------- results.md's settings

# Sections of a config whose values shape an experiment's results (what `settings_markdown`
# compares with configs/default.py); NOT_SHAPING keys are left out.
_RESULT_SECTIONS = ("seed", "dtype", "data", "optim", "train", "loss", "student", "teachers",
                    "experiment", "init_checkpoint")  # fmt: skip


def settings_markdown(config: Any, default: Any) -> list[str]:
    """Lines for ``results.md``: the distillation stage's settings, and every setting
    that shapes the results and differs from ``default`` (configs/default.py's config),
    so that a table is never read as the result of other settings."""
    lo, e = config.loss, config.get("experiment", {})
    split = (e.get("student_train_split", "") if e else "") or config.data.train_split
    lr = (e.get("student_learning_rate", 0.0) if e else 0.0) or config.optim.learning_rate
    weights = ", ".join(
        f"{name} {lo[key]}"
        for name, key in (("CE", "ce_weight"), ("KD", "kd_weight"), ("SDD", "sdd_weight"),
                          ("RKD-D", "rkd_distance_weight"), ("RKD-A", "rkd_angle_weight"),
                          ("feature KD", "feature_kd_weight"))  # fmt: skip
    )
    lines = [
        "",
        "Settings (each stage's folder records its own in config.json):",
        "",
        f"- Distillation: temperature {lo.temperature}; loss weights {weights}; teacher "
        f"weighting `{lo.teacher_weighting}`; {config.train.num_steps} steps at peak learning "
        f"rate {lr}; student split `{split}`; seed {config.seed}.",
    ]
    have = {k: v for k, v in _flatten(config).items() if k.split(".")[0] in _RESULT_SECTIONS}
    base = _flatten(default)
    missing = object()
    changed = [
        k
        for k in sorted(have)
        if k not in NOT_SHAPING
        and json.dumps(have[k], default=list) != json.dumps(base.get(k, missing), default=str)
    ]
    if not changed:
        lines.append("- Every other setting is configs/default.py's.")
    else:
        shown = "; ".join(
            f"`{k}` = {json.dumps(have[k], default=list)} "
            f"(default {json.dumps(base[k], default=list) if k in base else 'none'})"
            for k in changed
        )
        lines.append(f"- Differ from configs/default.py: {shown}.")
    return lines
