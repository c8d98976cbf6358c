"""Command-line entry point: ``python -m vkd_jax.main --config configs/<x>.py --workdir DIR``.

Intentionally short: flags, config checks, then dispatch on ``config.mode``.
All logic lives in importable, tested modules.
"""

from __future__ import annotations

import logging as std_logging
import os

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


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.get_absl_handler().addFilter(_OwnInfoOnly())
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")  # tf.data only; the accelerators are JAX's.

    import jax

    from vkd_jax import config_lib

    config = FLAGS.config
    config_lib.validate(config)
    if os.environ.get("VKD_DISTRIBUTED"):  # Multi-host (e.g. TPU pods): one process per host.
        jax.distributed.initialize()
    workdir = os.path.abspath(FLAGS.workdir)
    os.makedirs(workdir, exist_ok=True)
    logging.info("vkd_jax mode=%s workdir=%s devices=%s", config.mode, workdir, jax.devices())

    from vkd_jax import modes

    modes.run(config, workdir)


if __name__ == "__main__":
    app.run(main)
