"""Every shipped config loads and passes validation (or names its required keys)."""

from __future__ import annotations

import glob
import importlib.util
import os
import sys

import pytest

from vkd_jax import config_lib

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
def test_config_validates(path):
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
        config.teachers.cnn.checkpoint = "/c"
        config.teachers.vit.checkpoint = "/v2"
    config_lib.validate(config)


def test_every_config_file_has_a_run_command():
    for path in CONFIGS:
        with open(path) as f:
            assert "python -m vkd_jax.main --config" in f.read(), path
