"""Benchmark: vkd_jax's batched minibatch CKA vs a per-pair NumPy loop of the same estimator.

Computes an L x L layer-by-layer CKA map (Nguyen, Raghu, Kornblith 2021, Eq. 2-3: unbiased
HSIC_1 summed over minibatches) of two synthetic models over a few thousand examples, with

- ``jax``: ``vkd_jax.cka.minibatch_cka_update`` (all La x Lb pairs from one contraction of the
  stacked U-centered Grams per minibatch, jitted), compile time reported separately;
- ``numpy-naive``: for each minibatch, for each (i, j) pair, build both Grams and compute
  HSIC_1(K_i, L_j), HSIC_1(K_i, K_i), HSIC_1(L_j, L_j) — the usual per-pair loop;
- ``numpy-cached``: the same loop with each layer's U-centered Gram built once per minibatch
  (a stronger NumPy baseline: only the pair contractions stay in the Python loop).

All three compute the same estimator; the script prints the maximum absolute difference of their
maps, the times and the speedups, with the command and the machine.

Run:
  python tools/benchmark_cka.py --examples 2048 --layers 16 --batch 256 --dim 512
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import jax
import numpy as np

from vkd_jax import cka


def layer_widths(num_layers: int, dim: int) -> list[int]:
    """Widths that vary per layer between dim/2 and 3*dim/2 (mean ~dim), like a real network."""
    return [dim // 2 + (i * dim) // max(num_layers - 1, 1) for i in range(num_layers)]


def make_features(rng, z, widths, noise=4.0):
    """Per-layer (n, d) float32 features of a shared latent z (n, r), so the map is not trivial."""
    n, latent = z.shape
    feats = []
    for i, d in enumerate(widths):
        proj = rng.normal(size=(latent, d)).astype(np.float32)
        eps = rng.normal(size=(n, d)).astype(np.float32)
        feats.append(z @ proj + noise * (1 + i / len(widths)) * eps)
    return feats


# -------------------------------------------------------------------------- NumPy baselines


def np_u_center(k: np.ndarray) -> np.ndarray:
    """U-centering (Szekely & Rizzo 2014; Kornblith's center_gram(unbiased=True))."""
    n = k.shape[0]
    k = k.copy()
    np.fill_diagonal(k, 0)
    means = k.sum(0) / (n - 2)
    means -= means.sum() / (2 * (n - 1))
    k -= means[:, None]
    k -= means[None, :]
    np.fill_diagonal(k, 0)
    return k


def np_hsic1(k: np.ndarray, lm: np.ndarray) -> float:
    """Unbiased HSIC_1 (Song et al. 2012) as <U(K), U(L)> / (n (n - 3))."""
    n = k.shape[0]
    return float(np.vdot(np_u_center(k), np_u_center(lm))) / (n * (n - 3))


def numpy_naive(feats_a, feats_b, batch):
    la, lb = len(feats_a), len(feats_b)
    sxy, sxx, syy = np.zeros((la, lb)), np.zeros((la, lb)), np.zeros((la, lb))
    for start in range(0, feats_a[0].shape[0], batch):
        sl = slice(start, start + batch)
        for i in range(la):
            for j in range(lb):
                x, y = feats_a[i][sl], feats_b[j][sl]
                k, lm = x @ x.T, y @ y.T
                sxy[i, j] += np_hsic1(k, lm)
                sxx[i, j] += np_hsic1(k, k)
                syy[i, j] += np_hsic1(lm, lm)
    return sxy / np.sqrt(sxx * syy)


def numpy_cached(feats_a, feats_b, batch):
    la, lb = len(feats_a), len(feats_b)
    sxy, sxx, syy = np.zeros((la, lb)), np.zeros(la), np.zeros(lb)
    for start in range(0, feats_a[0].shape[0], batch):
        sl = slice(start, start + batch)
        ka = [np_u_center(f[sl] @ f[sl].T) for f in feats_a]
        kb = [np_u_center(f[sl] @ f[sl].T) for f in feats_b]
        n = ka[0].shape[0]
        scale = 1.0 / (n * (n - 3))
        for i in range(la):
            sxx[i] += np.vdot(ka[i], ka[i]) * scale
            for j in range(lb):
                sxy[i, j] += np.vdot(ka[i], kb[j]) * scale
        for j in range(lb):
            syy[j] += np.vdot(kb[j], kb[j]) * scale
    return sxy / np.sqrt(sxx[:, None] * syy[None, :])


# ----------------------------------------------------------------------------------- vkd_jax


def jax_minibatch(feats_a, feats_b, batch):
    state = cka.minibatch_cka_init(len(feats_a), len(feats_b))
    for start in range(0, feats_a[0].shape[0], batch):
        sl = slice(start, start + batch)
        # Host -> device transfer included: the NumPy baselines start from host arrays too.
        state = cka.minibatch_cka_update(state, [f[sl] for f in feats_a], [f[sl] for f in feats_b])
    return np.asarray(cka.minibatch_cka_result(state))


def timed(fn, *args):
    """(result, wall seconds, process CPU seconds over all threads; less sensitive to load)."""
    start, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - start, time.process_time() - cpu


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=2048, help="Examples in the dataset.")
    parser.add_argument("--layers", type=int, default=16, help="Layers per model (L x L map).")
    parser.add_argument("--batch", type=int, default=256, help="Minibatch size n.")
    parser.add_argument("--dim", type=int, default=512, help="Mean feature width per layer.")
    parser.add_argument(
        "--baseline", choices=("naive", "cached", "both"), default="both", help="NumPy baselines."
    )
    parser.add_argument("--repeats", type=int, default=3, help="Timed repeats of the JAX path.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.examples % args.batch:
        parser.error("--examples must be a multiple of --batch (full minibatches).")

    print(
        "command: python tools/benchmark_cka.py " + " ".join(sys.argv[1:] if argv is None else argv)
    )
    print(
        f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"os.cpu_count()={os.cpu_count()}, "
        f"usable cpus={len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'}, "
        f"loadavg={os.getloadavg() if hasattr(os, 'getloadavg') else '?'}"
    )
    print(
        f"jax {jax.__version__} backend={jax.default_backend()} devices={jax.devices()}; "
        f"numpy {np.__version__}"
    )
    widths = layer_widths(args.layers, args.dim)
    rng = np.random.default_rng(args.seed)
    z = rng.normal(size=(args.examples, 32)).astype(np.float32)  # Shared by both models.
    feats_a = make_features(rng, z, widths)
    feats_b = make_features(rng, z, widths[::-1])
    print(
        f"map {args.layers} x {args.layers}, {args.examples} examples, minibatch {args.batch} "
        f"({args.examples // args.batch} minibatches), widths {widths[0]}..{widths[-1]}, float32"
    )

    # Compile once on one minibatch (same shapes as every later call).
    _, compile_s, _ = timed(
        jax_minibatch,
        [f[: args.batch] for f in feats_a],
        [f[: args.batch] for f in feats_b],
        args.batch,
    )
    runs = [timed(jax_minibatch, feats_a, feats_b, args.batch) for _ in range(args.repeats)]
    jax_map, jax_s, jax_cpu = min(runs, key=lambda r: r[1])
    print(
        f"{'vkd_jax batched':29s}: {jax_s:8.3f} s wall, {jax_cpu:8.3f} s cpu  (best of "
        f"{args.repeats}; first call incl. compile {compile_s:.2f} s)"
    )

    results = {}
    if args.baseline in ("cached", "both"):
        results["numpy per-pair, cached grams"] = timed(numpy_cached, feats_a, feats_b, args.batch)
    if args.baseline in ("naive", "both"):
        results["numpy per-pair, naive"] = timed(numpy_naive, feats_a, feats_b, args.batch)
    for name, (np_map, np_s, np_cpu) in results.items():
        diff = float(np.max(np.abs(np_map - jax_map)))
        print(
            f"{name:29s}: {np_s:8.3f} s wall, {np_cpu:8.3f} s cpu  speedup of vkd_jax "
            f"x{np_s / jax_s:.1f} wall, x{np_cpu / jax_cpu:.1f} cpu; max |map diff| {diff:.2e}"
        )
    print(f"map range: [{jax_map.min():.3f}, {jax_map.max():.3f}], mean {jax_map.mean():.3f}")


if __name__ == "__main__":
    main()
