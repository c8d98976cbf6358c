"""Shared fixtures: a tiny config on the tiny synthetic dataset, built once per session."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402


def tiny_config(data_dir: str):
    """The default config shrunk to seconds: tiny data, tiny models, a few steps."""
    from vkd_jax import config_lib

    c = config_lib.default_config()
    c.data.builder_config = "tiny"
    c.data.data_dir = str(data_dir)
    c.data.num_frames = 4
    c.data.frame_stride = 2
    c.data.crop_size = 16
    c.data.eval_num_clips = 1
    c.data.shuffle_buffer = 64
    c.train.batch_size = 8
    c.train.num_steps = 4
    c.train.log_every = 2
    c.train.checkpoint_every = 2
    c.train.eval_batch_size = 32
    c.optim.warmup_steps = 1
    c.experiment.teacher_num_steps = 3
    for teacher in c.teachers.values():
        teacher.num_steps = 0  # Use teacher_num_steps.
        teacher.learning_rate = 0.0
    c.experiment.run_cka = False
    c.eval.latency_iters = 2
    c.loss.sdd.grid = (1, 2, 2)
    c.loss.sdd.dim = 16
    c.cka.num_examples = 32
    c.cka.batch_size = 16
    return c


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
    """TFDS data_dir holding synthetic_actions/tiny (built once per test worker)."""
    from vkd_jax.data import pipeline

    data_dir = tmp_path_factory.mktemp("tfds")
    pipeline.load_builder(tiny_config(data_dir).data)
    return data_dir


# PyTorch references of the parity tests (skipped with the reason when absent).
@pytest.fixture(scope="module")
def torch():
    import torch_compat

    return torch_compat.import_torch()


@pytest.fixture(scope="module")
def hub():
    """pytorchvideo's model hub (X3D, SlowFast builders)."""
    import torch_compat

    return torch_compat.import_pytorchvideo_hub()
