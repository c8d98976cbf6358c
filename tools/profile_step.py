"""Where a model's training forward and backward spend their time, by XLA op kind.

    python tools/profile_step.py --model x3d --variant s --frames 16 --size 224 --batch 2

Times the jitted train-mode forward and ``jax.grad`` of one model (random weights and
clips, summed logits as the loss) with their page faults and kernel time per call, the
host memory kept between calls as the trainer keeps it (``vkd_jax.cpu_memory``;
``--allocated-memory`` leaves it as XLA allocates it). Then it records a JAX profile of
two gradient calls and prints the time per step of each kind of XLA op (fusion names
without their numbers, e.g. ``pad_slice_fusion``; on a GPU, kernel names), largest
first. The trace stays in ``--trace-dir`` for TensorBoard or Perfetto.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from vkd_jax import cpu_memory, models  # noqa: E402
from vkd_jax.models import layers  # noqa: E402

_RUNTIME = ("ThunkExecutor", "$", "Slinky", "PjitFunction", "CommonPjRt")


def op_kinds(trace_dir: str, calls: int) -> list[tuple[str, float, int]]:
    """(op kind, ms per call, ops per call) from the newest trace under ``trace_dir``."""
    files = sorted(glob.glob(os.path.join(trace_dir, "plugins/profile/*/*.trace.json.gz")))
    if not files:
        raise FileNotFoundError(f"no trace written under {trace_dir}")
    with gzip.open(files[-1]) as f:
        events = json.load(f)["traceEvents"]
    total, count = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("ph") != "X" or e["name"].startswith(_RUNTIME):
            continue
        kind = re.sub(r"\.\d+$", "", e["name"])
        total[kind] += e["dur"]
        count[kind] += 1
    return [(k, v / 1000 / calls, count[k] // calls) for k, v in total.most_common()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="x3d")
    parser.add_argument("--variant", default="s")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--convolutions", default="auto", choices=layers.CONVOLUTION_MODES)
    parser.add_argument("--top", type=int, default=12, help="op kinds to list")
    parser.add_argument(
        "--rounds", type=int, default=7, help="alternating forward and grad calls timed"
    )
    parser.add_argument("--trace-dir", default="/tmp/vkd_profile")
    parser.add_argument(
        "--allocated-memory",
        action="store_true",
        help="leave the host memory as XLA allocates it (by default, as the trainer does, "
        "each call reuses its temporaries' pages: vkd_jax.cpu_memory)",
    )
    args = parser.parse_args()
    kept = not args.allocated_memory and cpu_memory.reuse_host_memory()

    t, s = args.frames, args.size
    model = models.get_model(args.model, variant=args.variant, num_classes=12, input_size=(t, s, s))
    video = jnp.asarray(np.random.default_rng(0).standard_normal((args.batch, t, s, s, 3)))
    variables = jax.jit(lambda r: model.init(r, video[:1], train=False))(jax.random.key(0))
    params, rest = variables["params"], {k: v for k, v in variables.items() if k != "params"}

    def loss(p):
        rngs = {"dropout": jax.random.key(1)}
        v = {"params": p, **rest}
        out, _ = model.apply(v, video, train=True, mutable=list(rest), rngs=rngs)
        return out[0].sum()

    with layers.convolutions(args.convolutions):  # Traced (and so compiled) in this mode.
        forward = jax.jit(loss).lower(params).compile()
        grad = jax.jit(jax.grad(loss)).lower(params).compile()

    def call(fn):
        """Wall ms, page faults and kernel ms of one call."""
        before = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        jax.block_until_ready(fn(params))
        wall = 1000 * (time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_SELF)
        return wall, after.ru_minflt - before.ru_minflt, 1000 * (after.ru_stime - before.ru_stime)

    memory = "kept between calls" if kept else "as allocated"
    print(f"{args.model}/{args.variant}, clip {t}x{s}x{s}, batch {args.batch}, "
          f"{args.convolutions} convolutions, {jax.devices()[0].device_kind}, "
          f"host memory {memory} (vkd_jax.cpu_memory)")  # fmt: skip
    jax.block_until_ready((forward(params), grad(params)))
    # Forward and grad alternate, so a machine whose speed drifts (shared hosts do,
    # by 10-15% within minutes) slows both alike; the ratio is taken per round.
    rounds = [(call(forward), call(grad)) for _ in range(args.rounds)]
    f_ms, g_ms = (float(np.median([r[i][0] for r in rounds])) for i in (0, 1))
    ratios = [g[0] / f[0] for f, g in rounds]

    def system(i):
        faults, kernel = (np.median([r[i][j] for r in rounds]) for j in (1, 2))
        return f"{faults / 1000:.1f}k page faults, {kernel:.0f} ms in the kernel"

    print(
        f"train-mode forward: {f_ms:.1f} ms ({system(0)}); forward + backward (grad): "
        f"{g_ms:.1f} ms ({system(1)}); medians of {args.rounds} alternating rounds"
    )
    print(
        f"grad / forward: {float(np.median(ratios)):.2f}x (median of the rounds' ratios; "
        f"range {min(ratios):.2f}-{max(ratios):.2f}x)"
    )
    jax.profiler.start_trace(args.trace_dir)
    for _ in range(2):
        jax.block_until_ready(grad(params))
    jax.profiler.stop_trace()
    kinds = op_kinds(args.trace_dir, calls=2)
    total = sum(ms_ for _, ms_, _ in kinds)
    # Summed over the threads that run them: more than the wall time where ops overlap.
    print(f"\nXLA ops of the grad, {total:.1f} ms per call summed over threads:")
    print("| op kind | ms per call | share | ops per call |")
    print("|---|---|---|---|")
    for kind, ms_, n in kinds[: args.top]:
        print(f"| {kind} | {ms_:.1f} | {100 * ms_ / total:.1f}% | {n} |")


if __name__ == "__main__":
    main()
