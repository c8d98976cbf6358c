"""A workdir belongs to one run at a time (vkd_jax/rundir.py): real processes hold,
race for and leave behind the lock."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from vkd_jax import errors, rundir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_HOLD = (
    "import sys, time\n"
    "from vkd_jax import rundir\n"
    "lock = rundir.acquire(sys.argv[1], command=['holder'])\n"
    "print('HELD', flush=True)\n"
    "time.sleep(600)\n"
)


def _env():
    return {**os.environ, "PYTHONPATH": ROOT}


def _holder(workdir):
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(workdir)],
        stdout=subprocess.PIPE, text=True, env=_env(), cwd=ROOT,
    )  # fmt: skip
    assert proc.stdout.readline().strip() == "HELD"
    return proc


def test_a_live_holder_refuses_a_second_process_naming_it(tmp_path):
    proc = _holder(tmp_path)
    try:
        with pytest.raises(errors.WorkdirBusyError) as e:
            rundir.acquire(str(tmp_path))
        message = str(e.value)
        assert f"pid {proc.pid}" in message and socket.gethostname() in message, message
        assert "started 20" in message and "\n" not in message
    finally:
        proc.kill()
        proc.wait()


def test_a_killed_holder_is_taken_over_with_a_warning(tmp_path, caplog):
    proc = _holder(tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert os.path.exists(rundir.lock_path(str(tmp_path)))  # SIGKILL left it behind.
    with caplog.at_level("WARNING"):
        lock = rundir.acquire(str(tmp_path))
    assert f"pid {proc.pid}" in caplog.text and "Taking over" in caplog.text
    with open(rundir.lock_path(str(tmp_path))) as f:
        assert json.load(f)["pid"] == os.getpid()
    lock.release()
    assert not os.path.exists(rundir.lock_path(str(tmp_path)))
    rundir.acquire(str(tmp_path)).release()  # Free again after a release.


def test_a_lock_from_another_host_is_not_taken_over(tmp_path):
    with open(rundir.lock_path(str(tmp_path)), "w") as f:
        json.dump({"host": "elsewhere", "pid": 1, "started": time.time()}, f)
    with pytest.raises(errors.WorkdirBusyError, match="host elsewhere, pid 1.*delete that file"):
        rundir.acquire(str(tmp_path))


def test_the_cli_is_refused_on_a_busy_workdir_before_any_compute(tmp_path):
    """Two processes on one workdir: the second (the real CLI) stops with one line
    naming the first and writes nothing there."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    proc = _holder(workdir)
    try:
        out = subprocess.run(
            [sys.executable, "-m", "vkd_jax.main", "--config",
             os.path.join(ROOT, "configs/default.py"), "--workdir", str(workdir),
             "--config.mode=train", "--config.train.num_steps=2"],
            env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    finally:
        proc.kill()
        proc.wait()
    assert out.returncode == 2, out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("vkd_jax: error: workdir in use") and f"pid {proc.pid}" in last, last
    assert sorted(os.listdir(workdir)) == [rundir.LOCK_FILE]  # Nothing of the second run.
