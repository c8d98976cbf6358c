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
from conftest import TEST_XLA_FLAGS

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


_MULTI = (
    "import sys, jax\n"
    "jax.config.update('jax_platforms', 'cpu')\n"
    "pid, port, d = int(sys.argv[1]), sys.argv[2], sys.argv[3]\n"
    "jax.distributed.initialize(f'127.0.0.1:{port}', num_processes=2, process_id=pid)\n"
    "from vkd_jax import errors, rundir\n"
    "try:\n"
    "    with rundir.hold(d):\n"
    "        print('HELD', jax.process_index(), flush=True)\n"
    "except errors.WorkdirBusyError as e:\n"
    "    print('BUSY', jax.process_index(), e, flush=True)\n"
)


def _two_processes(workdir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    env = dict(_env(), XLA_FLAGS=TEST_XLA_FLAGS)  # One device per process.
    procs = [
        subprocess.Popen([sys.executable, "-c", _MULTI, str(i), port, str(workdir)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         cwd=ROOT)  # fmt: skip
        for i in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    # Only our lines (the collectives' library prints its own).
    return [next(ln for ln in o[0].splitlines() if ln.startswith(("HELD", "BUSY"))) for o in outs]


def test_a_multi_process_job_shares_one_lock_and_stops_together(tmp_path):
    """Process 0 holds the lock for the job; when it cannot, every process stops."""
    assert _two_processes(tmp_path) == ["HELD 0", "HELD 1"]
    assert not os.path.exists(rundir.lock_path(str(tmp_path)))  # Released at the end.
    with open(rundir.lock_path(str(tmp_path)), "w") as f:
        json.dump({"host": "elsewhere", "pid": 1, "started": time.time()}, f)
    out = _two_processes(tmp_path)
    assert out[0].startswith("BUSY 0 ") and "host elsewhere" in out[0], out
    assert out[1].startswith("BUSY 1 ") and "process 0 could not take" in out[1], out


def test_a_stage_held_by_another_process_is_refused_and_holding_is_reentrant(tmp_path):
    from vkd_jax import config_lib, stages, train

    config = config_lib.default_config()
    stage_dir = tmp_path / "stage"
    stage_dir.mkdir()
    proc = _holder(stage_dir)  # E.g. a second screen shard training the same stage.
    try:
        stage = train.Stage("s", str(stage_dir), config.student,
                            stages.supervised_loss(config.loss), 1)  # fmt: skip
        with pytest.raises(errors.WorkdirBusyError, match=f"pid {proc.pid}"):
            train.run(config, stage)
        assert not (stage_dir / rundir.CONFIG_FILE).exists()  # Refused before anything.
    finally:
        proc.kill()
        proc.wait()
    # The run's own workdir may be a stage's folder (mode=train): held twice, no conflict.
    with rundir.hold(str(tmp_path)), rundir.hold(str(tmp_path)):
        assert os.path.exists(rundir.lock_path(str(tmp_path)))
    assert not os.path.exists(rundir.lock_path(str(tmp_path)))
