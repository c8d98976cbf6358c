"""One process of the two-process training test (run by tests/test_processes.py).

Usage: python multiprocess_worker.py PROCESS_ID PORT DATA_DIR WORKDIR OUT_NPZ [MODE]

MODE: ``train`` (supervised, the default) or ``pretrain`` (CVRL: a contrastive loss whose
negatives span both processes' halves of the global batch).
"""

from __future__ import annotations

import os
import sys

# One device per process; the flags the test gave (its compiler level) are kept.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=1"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))


def main():
    process_id, port, data_dir, workdir, out = sys.argv[1:6]
    mode = sys.argv[6] if len(sys.argv) > 6 else "train"
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=int(process_id)
    )
    assert jax.process_count() == 2 and jax.device_count() == 2, jax.devices()
    from conftest import tiny_config

    from vkd_jax import pretrain, stages, train

    config = tiny_config(data_dir)
    config.train.num_steps = 3
    config.train.checkpoint_every = 3
    if mode == "pretrain":
        config.pretext.task = "cvrl"
        config.pretext.cvrl.hidden_dim = 16
        config.train.eval_batch_size = 16
        summary = pretrain.run(config, workdir)
        np.savez(out, top1=summary["pretext_accuracy"], digest=summary["params_sha256"])
        jax.distributed.shutdown()
        return
    summary = train.run(
        config,
        train.Stage("two_process", workdir, config.student, stages.supervised_loss(config.loss), 3),
    )
    # Each process's own in-memory copy of the final parameters, fingerprinted.
    np.savez(out, top1=summary["top1"], digest=summary["params_sha256"])
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
