"""Compile time of a model's jitted ``init`` per way of initializing, and whether the values
equal the default's (the options ``vkd_jax.startup`` chose between).

    python tools/init_options.py --model x3d --variant mini --frames 8 --size 32

Options, each compiled in this process from the same lowered program where it can be:
``threefry`` (JAX's default key, XLA's default backend level 3: what a plain
``jax.jit(model.init)`` does), ``threefry O1`` / ``O2`` / ``O0`` (the same program at
XLA's backend optimization levels 1, 2, 0), ``rbg`` and ``unsafe_rbg`` (other PRNG
implementations: other values for a seed). Run it without the persistent compilation
cache (it sets none); the first compile of a process also pays one-time set-up, so the
default level is compiled first and a second level-1 compile shows the in-memory cache.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from vkd_jax import models  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="x3d")
    parser.add_argument("--variant", default="mini")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    clip = (args.frames, args.size, args.size)
    model = models.get_model(args.model, variant=args.variant, num_classes=400, input_size=clip)
    video = jnp.zeros((1, *clip, 3))
    init = jax.jit(lambda r: model.init(r, video, train=False))
    rows, ref = [], None
    key = jax.random.key(args.seed)
    lowered = init.lower(key)
    trials = [("threefry (default)", key, lowered, {})]
    for level in (1, 2, 0):
        opts = {"xla_backend_optimization_level": level}
        trials.append((f"threefry O{level}", key, lowered, opts))
    for impl in ("rbg", "unsafe_rbg"):
        k = jax.random.key(args.seed, impl=impl)
        trials.append((impl, k, init.lower(k), {}))
    for name, k, low, opts in trials:
        t0 = time.perf_counter()
        compiled = low.compile(compiler_options=opts) if opts else low.compile()
        seconds = time.perf_counter() - t0
        leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(compiled(k))]
        ref = leaves if ref is None else ref
        same = sum(np.array_equal(a, b) for a, b in zip(ref, leaves, strict=True))
        rows.append((name, seconds, f"{same}/{len(leaves)}"))
    print(
        f"\n{args.model}/{args.variant} init, clip {clip}, seed {args.seed}; jax {jax.__version__}"
    )
    print(f"on {jax.devices()[0].device_kind}, {os.cpu_count()} CPUs\n")
    print("| init | compile s | arrays equal to the default's |\n|---|---|---|")
    for name, seconds, same in rows:
        print(f"| {name} | {seconds:.2f} | {same} |")


if __name__ == "__main__":
    main()
