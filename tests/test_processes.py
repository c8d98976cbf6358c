"""Runs in fresh processes: SIGKILL + resume, two-process training, locked-config errors."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import TEST_XLA_FLAGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env():
    env = dict(os.environ)
    # One device per process (the test is about processes), at the tests' compiler level.
    env["XLA_FLAGS"] = TEST_XLA_FLAGS
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _main_args(data_dir, workdir, *extra):
    return [
        sys.executable, "-m", "vkd_jax.main", "--config", os.path.join(ROOT, "configs/default.py"),
        "--workdir", str(workdir), "--config.mode=train",
        "--config.data.builder_config=tiny", f"--config.data.data_dir={data_dir}",
        "--config.data.num_frames=4", "--config.data.crop_size=16",
        "--config.data.eval_num_clips=1", "--config.data.shuffle_buffer=64",
        "--config.train.batch_size=8", "--config.train.num_steps=6",
        "--config.train.checkpoint_every=2", "--config.train.log_every=1",
        "--config.train.max_to_keep=5", "--config.eval.latency_iters=1",
        *extra,
    ]  # fmt: skip


def _load_params(workdir):
    from vkd_jax import checkpoint

    _, variables, _ = checkpoint.load_model(os.path.join(workdir, "model"))
    return variables


def test_sigkill_then_resume_matches_uninterrupted_run(tiny_data_dir, tmp_path):
    ref = tmp_path / "ref"
    subprocess.run(_main_args(tiny_data_dir, ref), check=True, env=_env(), cwd=ROOT,
                   capture_output=True)  # fmt: skip

    run = tmp_path / "killed"
    proc = subprocess.Popen(_main_args(tiny_data_dir, run), env=_env(), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 300
    while not (run / "checkpoints" / "2").is_dir():
        assert proc.poll() is None, "the run ended before its first checkpoint"
        assert time.time() < deadline, "no checkpoint within 300 s"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "model").exists(), "killed too late: the run had already finished"
    resumed = subprocess.run(_main_args(tiny_data_dir, run), env=_env(), cwd=ROOT,
                             capture_output=True, text=True)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from checkpoint" in resumed.stderr

    import jax

    a, b = _load_params(ref), _load_params(run)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


def test_misspelled_override_fails_naming_the_key(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "vkd_jax.main", "--config", os.path.join(ROOT, "configs/default.py"),
         "--workdir", str(tmp_path), "--config.loss.kd_wieght=2"],
        env=_env(), cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode != 0
    assert "kd_wieght" in out.stderr


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("mode", ["train", "pretrain"])
def test_two_processes_train_to_identical_parameters(tiny_data_dir, tmp_path, mode):
    port = _free_port()
    worker = os.path.join(ROOT, "tests", "multiprocess_worker.py")
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                worker,
                str(i),
                str(port),
                str(tiny_data_dir),
                str(tmp_path / "w"),
                str(tmp_path / f"p{i}.npz"),
                mode,
            ],
            env=_env(),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    for p, log in zip(procs, logs, strict=True):
        if p.returncode != 0:
            pytest.fail(f"worker failed:\n{log[-4000:]}")
    p0, p1 = np.load(tmp_path / "p0.npz"), np.load(tmp_path / "p1.npz")
    assert str(p0["digest"]) == str(p1["digest"])
    assert float(p0["top1"]) == float(p1["top1"])
