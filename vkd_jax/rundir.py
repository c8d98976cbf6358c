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


@contextlib.contextmanager
def hold(workdir: str, *, command: Sequence[str] | None = None) -> Iterator[WorkdirLock | None]:
    """Holds ``workdir``'s lock for the block; with several JAX processes, process 0
    holds it for all and every process stops if it could not."""
    import jax

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
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()
