"""Command-line entry point: ``python -m vkd_jax.main --config configs/<x>.py --workdir DIR``.

Intentionally short: flags, config checks, then dispatch on ``config.mode``.
All logic lives in importable, tested modules.
"""

from __future__ import annotations

import logging as std_logging
import os
import sys

# TensorFlow is used only for tf.data on the host: keep it off accelerators and quiet.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Path to a config file (configs/*.py).", lock_config=True
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
flags.mark_flags_as_required(["config", "workdir"])


class _OwnInfoOnly(std_logging.Filter):
    """Keeps libraries' INFO chatter (orbax logs every file it writes) out of the run log."""

    _NOISY = ("orbax", "tensorflow_datasets", "etils", "jax/_src", "clu/")

    def filter(self, record: std_logging.LogRecord) -> bool:
        if record.levelno >= std_logging.WARNING:
            return True
        return not any(part in record.pathname for part in self._NOISY)


def _exit_user_error(message) -> None:
    """A user's mistake ends in one line on stderr and exit code 2, without a traceback
    (VKD_TRACEBACK=1 keeps it); internal errors keep theirs."""
    print(f"vkd_jax: error: {message}", file=sys.stderr)
    sys.exit(2)


def _parse_flags(argv):
    """absl's parser, plus one line for an override of a key no config declares
    (ml_collections raises a bare AttributeError while parsing)."""
    try:
        return app.parse_flags_with_usage(argv)
    except (AttributeError, KeyError) as e:
        from vkd_jax import config_lib

        unknown = config_lib.unknown_override_keys(argv)
        if not unknown:
            raise
        del e
        _exit_user_error(
            f"unknown config key {', '.join(unknown)} (not declared in configs/default.py); "
            "check its spelling"
        )


def enable_compilation_cache(path: str) -> str:
    """Points JAX's persistent compilation cache at ``path`` (``VKD_COMPILATION_CACHE``
    overrides it; "" turns it off); returns the directory used, or ""."""
    import jax

    path = os.environ.get("VKD_COMPILATION_CACHE", path)
    if not path:
        return ""
    from vkd_jax import storage

    path = storage.resolve(path)  # JAX reads and writes a gs:// cache itself.
    storage.makedirs(path)
    jax.config.update("jax_compilation_cache_dir", path)
    return path


def fast_compile_settings() -> None:
    """JAX settings that shorten compiles and change no number.

    Random initializers dominate the compile of a model's ``init`` (the forward pass
    is dropped as unused): the jitted init of X3D-M or MViTv2-S holds no convolution,
    only threefry for each of their hundreds of parameters, and still takes seconds to
    compile (measured: docs/benchmarks.md, "The train step"). On GPUs JAX can lower threefry to one
    kernel instead of unrolling it into every program: the same bits, a faster
    compile. No effect on CPUs and TPUs.
    """
    import jax

    jax.config.update("jax_threefry_gpu_kernel_lowering", True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.get_absl_handler().addFilter(_OwnInfoOnly())
    import jax

    from vkd_jax import _deps, config_lib, cpu_memory, errors, storage

    config = FLAGS.config
    try:
        # Before TensorFlow's import (seconds): a config error is reported at once.
        config_lib.validate(config)
        with _deps.extra("train", "python -m vkd_jax.main"):
            import tensorflow as tf
        tf.config.set_visible_devices([], "GPU")  # tf.data only; the accelerators are JAX's.
        enable_compilation_cache(config.compilation_cache)
        fast_compile_settings()
        cpu_memory.synchronous_cpu_dispatch()  # Before the backends start.
        if os.environ.get("VKD_DISTRIBUTED"):  # Multi-host (TPU pods): one process per host.
            jax.distributed.initialize()
        cpu_memory.keep_host_memory()  # Steps reuse their temporaries' pages (CPU only).
        workdir = config_lib.check_workdir(FLAGS.workdir)
        storage.makedirs(workdir)
        from vkd_jax import modes, rundir

        # One run per workdir: a second launch stops here, before any compute.
        with rundir.hold(workdir):
            devices = jax.devices()
            logging.info("vkd_jax mode=%s workdir=%s devices=%s", config.mode, workdir, devices)
            modes.run(config, workdir)
    except errors.USER_ERRORS as e:
        if os.environ.get("VKD_TRACEBACK"):
            raise
        _exit_user_error(e)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
