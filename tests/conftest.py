"""Shared fixtures: a tiny config on the tiny synthetic dataset, built once per session."""

from __future__ import annotations

import functools
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

# One persistent XLA compilation cache for the whole test session: the pytest-xdist
# workers and the CLI runs they start (which read VKD_COMPILATION_CACHE, see
# vkd_jax.main.enable_compilation_cache) compile the same tiny steps, evaluations and
# initializations many times over; a cache hit skips XLA's backend compile and changes
# no number. The controller makes the folder before the workers start (they inherit
# its environment) and removes it at the end; the user's own cache is never touched.
# Hits still pass through JAX's "Finished XLA compilation" log and backend_compile
# event, so the tests that count compiles count the same.
_MIN_COMPILE_SECONDS = 0.2  # Eager single-op programs below this are not worth a file.


# Tests compile cheaply on the CPU. Compiling, not running, is most of the suite's time
# (tiny models, a few steps each), so two XLA flags trade run time for compile time:
# LLVM's lowest optimization level, and XLA's older (elemental) emitter for fused
# elementwise code instead of its MLIR fusion emitters. Together they compile the tiny
# X3D training step in about a third of the default's time and run it 2-5x slower
# (docs/benchmarks.md, "Test-suite time"). What a program computes does not depend on
# them; its float rounding may (the tests compare with tolerances, or two programs
# compiled alike). The tests that are about the default compiler name its options in
# `compiler_options`, which override these flags; users' runs, the benchmarks and CI's
# core-install check keep XLA's defaults. Both flags are known to the pinned jaxlib
# (constraints.txt); XLA aborts at start on a flag it does not know.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
# XLA's default CPU options, for the tests about the default compiler: as
# `compiler_options`, they override the flags above for one program.
DEFAULT_XLA_OPTIONS = {"xla_backend_optimization_level": 3, "xla_cpu_use_fusion_emitters": True}


def pytest_configure(config):
    # The controller (or a run without xdist) sets the environment before any backend
    # starts; the xdist workers and the CLI runs inherit it.
    if not hasattr(config, "workerinput"):
        flags = os.environ.get("XLA_FLAGS", "")
        missing = [f for f in TEST_XLA_FLAGS.split() if f not in flags.split()]
        os.environ["XLA_FLAGS"] = " ".join([flags, *missing]).strip()
        if "VKD_COMPILATION_CACHE" not in os.environ:
            import tempfile

            path = tempfile.mkdtemp(prefix="vkd_jax_test_xla_cache_")
            os.environ["VKD_COMPILATION_CACHE"] = path
            config._vkd_owned_cache = path
    path = os.environ.get("VKD_COMPILATION_CACHE")
    if path:
        import jax

        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", _MIN_COMPILE_SECONDS)


def pytest_unconfigure(config):
    path = getattr(config, "_vkd_owned_cache", None)
    if path:
        import shutil

        shutil.rmtree(path, ignore_errors=True)


def tiny_config(data_dir: str):
    """The default config shrunk to seconds: tiny data, tiny models, a few steps."""
    from configs import default
    from vkd_jax import config_lib

    c = config_lib.default_config()
    # The paper's whole objective (DATW + SDD + RKD), so that the tests that distil go
    # through every term; configs/default.py leaves the components off.
    default.paper_objective(c.loss)
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


def init_variables(model, seed: int, video, **kwargs):
    """``model.init(jax.random.key(seed), video, train=False, **kwargs)``, jitted
    (``startup.jit_init``): an eager init compiles one small program per initializer,
    tens of seconds for a tiny MViT on a 2-core CPU. For tests whose values only need
    to be some model's."""
    import jax

    from vkd_jax import startup

    init = startup.jit_init(lambda r, x: model.init(r, x, train=False, **kwargs))
    return init(jax.random.key(seed), video)


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


@functools.cache
def _fake_gcs_class():
    """One in-memory file system class for every test: epath caches the fsspec
    file system it gets, so each test must see the same class (and store)."""
    from fsspec.implementations.memory import MemoryFileSystem

    class FakeGCS(MemoryFileSystem):
        protocol = ("gs", "gcs")
        store: dict = {}
        pseudo_dirs = [""]

        @classmethod
        def _strip_protocol(cls, path):
            path = str(path)
            for prefix in ("gs://", "gcs://"):
                path = path.removeprefix(prefix)
            return MemoryFileSystem._strip_protocol(path)

    return FakeGCS


@pytest.fixture
def fake_gcs(monkeypatch):
    """``gs://`` URLs served from memory: etils.epath (what vkd_jax.storage and Orbax's
    path handling use) is sent to fsspec, and fsspec's ``gs`` to an in-memory file
    system, so tests exercise bucket paths without a network. Yields the store
    (object path -> file) to inspect."""
    import fsspec
    from etils.epath import gpath

    fake = _fake_gcs_class()
    for name in fake.protocol:
        fsspec.register_implementation(name, fake, clobber=True)
    # With TensorFlow installed epath would send gs:// to TensorFlow's (real) GCS client.
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
    fake.store.clear()
    fake.pseudo_dirs[:] = [""]
    try:
        yield fake.store
    finally:
        fake.store.clear()
        fake.pseudo_dirs[:] = [""]
        registry = sys.modules["fsspec.registry"]._registry  # (fsspec.registry is a mapping)
        for name in fake.protocol:
            registry.pop(name, None)
