"""Every shipped config loads and passes validation (or names its required keys)."""

from __future__ import annotations

import glob
import importlib.util
import os
import sys

import pytest

from vkd_jax import config_lib, storage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(
    p for p in glob.glob(os.path.join(ROOT, "configs", "**", "*.py"), recursive=True)
    if not p.endswith("__init__.py") and not p.endswith("common.py")
)  # fmt: skip


def _load(path):
    sys.path.insert(0, ROOT)
    try:
        spec = importlib.util.spec_from_file_location("cfg_under_test", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.get_config()
    finally:
        sys.path.remove(ROOT)


def _with(config, **overrides):
    config = config.copy_and_resolve_references()
    config.update(overrides)
    return config


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_config_validates(path, tmp_path):
    config = _load(path)
    assert config.mode in config_lib.MODES
    if "dual_teacher" in path:
        # The paper recipes need the user's data and teachers: they must say which keys.
        with pytest.raises(ValueError, match="data.folder.root.*teachers.cnn.checkpoint"):
            config_lib.validate(config)
        config.data.data_dir = "/d"
        config.data.folder.root = "/v"
        # Fine-tuning a teacher (mode=train) or evaluating needs no teacher checkpoints...
        for mode in ("data", "train", "evaluate", "cka"):
            config_lib.validate(_with(config, mode=mode))
        # ...distilling does, and says which.
        for mode in config_lib.TEACHER_MODES:
            with pytest.raises(ValueError, match="teachers.cnn.checkpoint, teachers.vit.chec"):
                config_lib.validate(_with(config, mode=mode))
        config.teachers.cnn.checkpoint = str(tmp_path)  # Model directories must exist.
        config.teachers.vit.checkpoint = str(tmp_path)
    config_lib.validate(config)


def test_every_config_file_has_a_run_command():
    for path in CONFIGS:
        with open(path) as f:
            assert "python -m vkd_jax.main --config" in f.read(), path


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("train.batch_size", -3, "train.batch_size = -3: must be >= 1"),
        ("train.num_steps", -1, "train.num_steps = -1: must be >= 0"),
        ("data.crop_size", 0, "data.crop_size = 0: must be >= 1"),
        ("loss.temperature", 0.0, "loss.temperature = 0.0: must be > 0"),
        ("optim.momentum", 1.5, r"optim.momentum = 1.5: must be in \[0, 1\]"),
        ("data.eval_num_crops", 2, "data.eval_num_crops = 2: must be one of 1, 3"),
        ("mesh.data", 0, r"mesh.data = 0: must be -1 \(all devices\) or >= 1"),
        ("data.train_scale", (0.8, 0.5), "data.train_scale = .*low <= high"),
        ("pretext.tdl.queue_size", 0, "pretext.tdl.queue_size = 0: must be >= 1"),
    ],
)
def test_values_out_of_range_fail_before_compute(key, value, message):
    config = config_lib.default_config()
    section, name = key.rsplit(".", 1)
    config_lib._get(config, section)[name] = value
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.validate(config)


def test_teacher_entries_and_model_dirs_are_checked(tmp_path):
    config = config_lib.default_config()
    config.mode = "distill"
    config.teachers.cnn.checkpoint = str(tmp_path)
    config.teachers.vit.checkpoint = str(tmp_path)
    config_lib.validate(config)
    config.teachers.vit.learning_rate = -1.0
    with pytest.raises(config_lib.ConfigError, match="teachers.vit.learning_rate = -1.0"):
        config_lib.validate(config)
    config.teachers.vit.learning_rate = 0.0
    config.teachers.cnn.checkpoint = str(tmp_path / "absent")
    with pytest.raises(config_lib.ConfigError, match="teachers.cnn.checkpoint = .*absent"):
        config_lib.validate(config)
    config.mode = "train"  # Teachers' checkpoints are not read in mode=train.
    config_lib.validate(config)
    config.init_checkpoint = str(tmp_path / "absent")
    with pytest.raises(config_lib.ConfigError, match="init_checkpoint = .*no such model"):
        config_lib.validate(config)


def test_unknown_override_keys():
    argv = ["prog", "--config=x.py", "--config.train.bacth_size=3", "--config.seed=1",
            "--config.teachers.extra.name=x3d", "--workdir=w"]  # fmt: skip
    assert config_lib.unknown_override_keys(argv) == ["train.bacth_size"]


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.mode=bogus", "Unknown mode 'bogus'"),
        ("--config.train.bacth_size=3", "unknown config key train.bacth_size"),
        ("--config.train.batch_size=-3", "train.batch_size = -3: must be >= 1"),
    ],
)
def test_cli_reports_a_user_error_in_one_line(tmp_path, override, message):
    """The last stderr line is the message alone (no traceback) and the exit code is 2."""
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-m", "vkd_jax.main", "--config", os.path.join(ROOT, "configs",
         "default.py"), "--workdir", str(tmp_path / "w"), override],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("vkd_jax: error: ") and message in last, last


def test_compilation_cache_is_on_by_default_configurable_and_fills(tmp_path):
    """The persistent cache is where the config (or VKD_COMPILATION_CACHE) says, "" turns it
    off, and compiled programs land in it (a fresh interpreter, so this process's JAX
    settings stay as they are)."""
    import subprocess

    assert config_lib.default_config().compilation_cache  # On by default.
    cache = tmp_path / "cache"
    code = (
        "import os, sys, jax, jax.numpy as jnp\n"
        "from vkd_jax import main\n"
        "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)\n"
        "assert main.enable_compilation_cache('') == ''\n"
        f"used = main.enable_compilation_cache({str(cache)!r})\n"
        "jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((64, 64))).block_until_ready()\n"
        "print('USED', used, len(os.listdir(used)))\n"
    )
    env = dict(os.environ)
    env.pop("VKD_COMPILATION_CACHE", None)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    used, entries = out.stdout.split("USED ")[1].split()
    assert used == str(cache) and int(entries) >= 1
    env["VKD_COMPILATION_CACHE"] = str(tmp_path / "from_env")
    code = "from vkd_jax import main\nprint('USED', main.enable_compilation_cache('~/x'))\n"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env=env)  # fmt: skip
    assert out.stdout.split("USED ")[1].strip() == str(tmp_path / "from_env")


def test_bucket_paths_are_accepted_without_a_network(fake_gcs):
    """gs:// data_dir, workdir and model directories pass the checks: the data_dir is
    TFDS's to read (not touched here), the workdir is kept as a URL (abspath would fold
    it into "gs:/..."), and a model directory must exist in the (in-memory) bucket."""
    c = config_lib.default_config()
    c.data.data_dir = "gs://bucket/tensorflow_datasets"
    for mode in ("train", "experiment"):
        config_lib.validate(_with(c, mode=mode))
    assert config_lib.check_workdir("gs://bucket/runs/x/") == "gs://bucket/runs/x"
    assert config_lib.check_workdir("runs/x") == os.path.abspath("runs/x")
    with pytest.raises(config_lib.ConfigError, match="workdir is empty"):
        config_lib.check_workdir("")
    storage.makedirs("gs://bucket/teachers/x3d_m")
    for key in ("init_checkpoint", "teachers.cnn.checkpoint"):
        for path, ok in (("gs://bucket/teachers/x3d_m", True), ("gs://bucket/none", False)):
            cfg = _with(c, mode="distill")
            if key == "init_checkpoint":
                cfg.init_checkpoint = path
            else:
                cfg.teachers.cnn.checkpoint = path
            if ok:
                config_lib.validate(cfg)
            else:
                with pytest.raises(config_lib.ConfigError, match=f"{key}.*no such model"):
                    config_lib.validate(cfg)


def test_fast_compile_settings_turn_on_threefry_kernel_lowering_and_change_no_number():
    """main.fast_compile_settings() (run by the CLI and tools/benchmark.py) turns on JAX's
    threefry kernel lowering for GPUs, a compile-time setting: the same random bits."""
    import jax
    import numpy as np

    from vkd_jax import main

    draw = jax.jit(lambda k: jax.random.normal(k, (7,)))
    before = np.asarray(draw(jax.random.key(3)))
    previous = jax.config.jax_threefry_gpu_kernel_lowering
    try:
        main.fast_compile_settings()
        assert jax.config.jax_threefry_gpu_kernel_lowering
        np.testing.assert_array_equal(np.asarray(draw(jax.random.key(3))), before)
    finally:
        jax.config.update("jax_threefry_gpu_kernel_lowering", previous)
