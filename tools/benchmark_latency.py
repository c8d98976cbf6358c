"""CPU latency of the deployed student, and the dual-teacher paper's efficiency comparison.

Run (minutes on a 2-core CPU, most of it MViTv2-S; docs/benchmarks.md has a measured
run and its tables):
  python tools/benchmark_latency.py [--threads N] [--iters 20] [--out latency.md]

Two tables, batch 1, float32, median and p90 of ``--iters`` timed calls after
``--warmup`` untimed ones, all with the same thread count:

1. **Runtimes**: the full-size X3D-S student (13x160x160, 400 classes, seeded random
   weights) in Flax (jit; XLA's CPU backend), LiteRT and onnxruntime (the artifacts
   ``vkd_jax.export`` writes from the same weights, checked against Flax) and PyTorch
   eager (pytorchvideo's X3D-S, its own random weights; same input). ``--skip`` drops
   any of them.
2. **Comparison** (``--no-compare`` skips it): the student X3D-S against the CNN
   teacher X3D-M and the ViT teacher MViTv2-S, each at its standard input: parameters,
   GMACs (fvcore convention) and Flax latency, with the student's reductions.

The CPU wheel of torchvision does not import beside the CPU torch build on some
machines (``operator torchvision::nms does not exist``), and pytorchvideo imports
torchvision. ``--torchvision-workaround`` then registers an empty
``torchvision._meta_registrations`` module first (the meta kernels only serve
torch.compile's fake tensors; eager inference does not use them); without it the
PyTorch row says why it is missing.

``--threads`` sets LiteRT's, onnxruntime's and PyTorch's threads; XLA's CPU backend
always uses every core, so the default (the core count) is the one setting at which
all four runtimes use the same number of threads.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vkd_jax import evaluation, export, models, runtime  # noqa: E402

STUDENT = ("x3d", "s")
TEACHERS = {"CNN teacher": ("x3d", "m"), "ViT teacher": ("mvit", "v2_s")}
NUM_CLASSES = 400


def timed(fn: Callable[[], object], *, iters: int, warmup: int) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": float(np.median(times)), "p90_ms": float(np.percentile(times, 90))}


def _flax(name, variant, *, seed=0):
    shape = models.standard_input(name, variant)
    model = models.get_model(name, variant=variant, num_classes=NUM_CLASSES)
    video = np.random.default_rng(seed).uniform(0, 255, (1, *shape, 3)).astype(np.float32)
    variables = jax.jit(lambda x: model.init(jax.random.key(seed), x, train=False))(video)
    return model, variables, video


def runtimes(args) -> list[tuple[str, dict[str, float] | str]]:
    model, variables, pixels = _flax(*STUDENT)
    meta = {
        "name": STUDENT[0],
        "variant": STUDENT[1],
        "num_classes": NUM_CLASSES,
        "num_frames": pixels.shape[1],
        "crop_size": pixels.shape[2],
    }
    prep = runtime.preprocessing(meta)
    fn = jax.jit(runtime.logits_fn(model, variables, prep))
    rows: list[tuple[str, dict[str, float] | str]] = []
    iters, warmup = args.iters, args.warmup
    if "flax" not in args.skip:
        rows.append(
            (
                "Flax (jit, XLA CPU)",
                timed(
                    lambda: fn(variables, pixels).block_until_ready(), iters=iters, warmup=warmup
                ),
            )
        )
    wanted = [f for f in ("tflite", "onnx") if f not in args.skip]
    if wanted:
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "export")
            export.export(
                model,
                variables,
                meta,
                out,
                formats=wanted,
                prep=prep,
                check_pixels=pixels,
                log=lambda m: print(m, file=sys.stderr),
            )
            for fmt, title in (("tflite", "LiteRT (float32, XNNPACK)"), ("onnx", "onnxruntime")):
                if fmt in wanted:
                    run = runtime.load_runner(
                        os.path.join(out, runtime.FILES[fmt]), num_threads=args.threads
                    )
                    rows.append(
                        (title, timed(lambda run=run: run(pixels), iters=iters, warmup=warmup))
                    )
    if "torch" not in args.skip:
        rows.append(("PyTorch eager (pytorchvideo)", _torch(pixels, args)))
    return rows


def _torch(pixels: np.ndarray, args) -> dict[str, float] | str:
    try:
        import torch
    except ImportError:
        return "not installed (pip install '.[torch]')"
    if args.torchvision_workaround:
        import types

        sys.modules.setdefault(
            "torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations")
        )
    try:
        from pytorchvideo.models.x3d import create_x3d
    except (ImportError, RuntimeError) as e:
        return f"unavailable: {type(e).__name__}: {e} (see --torchvision-workaround)"
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t, s = pixels.shape[1], pixels.shape[2]
    net = create_x3d(
        input_clip_length=t, input_crop_size=s, depth_factor=2.2, model_num_class=NUM_CLASSES
    ).eval()
    mean = torch.tensor([0.45] * 3).view(1, 3, 1, 1, 1)
    std = torch.tensor([0.225] * 3).view(1, 3, 1, 1, 1)
    x = torch.from_numpy(pixels).permute(0, 4, 1, 2, 3).contiguous()

    def call():
        with torch.inference_mode():
            return net((x / 255.0 - mean) / std)

    return timed(call, iters=args.iters, warmup=args.warmup)


def comparison(args) -> list[dict]:
    rows = []
    for role, (name, variant) in [("Student", STUDENT), *TEACHERS.items()]:
        print(f"timing {name}/{variant} ...", file=sys.stderr)
        model, variables, pixels = _flax(name, variant)
        shape = pixels.shape[1:4]
        rows.append(
            {
                "role": role,
                "model": f"{name}/{variant}",
                "input": "x".join(map(str, shape)),
                "params": evaluation.count_params(variables["params"]),
                "gmacs": evaluation.count_macs(model, variables, shape) / 1e9,
                "latency": evaluation.measure_latency(
                    model, variables, shape, batch_size=1, iters=args.compare_iters, warmup=2
                ),
            }
        )
        del variables
    return rows


def render(rt, comp, args) -> str:
    threads = args.threads
    if threads != os.cpu_count():  # XLA's CPU backend takes every core regardless.
        threads = f"{threads} (Flax: {os.cpu_count()})"
    lines = [
        f"CPU: {os.cpu_count()} cores, {threads} threads per runtime; batch 1; "
        f"float32; {args.iters} timed calls after {args.warmup} warm-up ones.",
        "",
    ]
    if rt:
        lines += [
            f"X3D-S student, {'x'.join(map(str, models.standard_input(*STUDENT)))}:",
            "",
            "| runtime | median ms | p90 ms |",
            "|---|---|---|",
        ]
        for title, r in rt:
            if isinstance(r, str):
                lines.append(f"| {title} | {r} | |")
            else:
                lines.append(f"| {title} | {r['median_ms']:.1f} | {r['p90_ms']:.1f} |")
    if comp:
        s = comp[0]
        lines += [
            "",
            "The dual-teacher paper's comparison (Flax, jit; the student's reduction in % "
            "against each teacher):",
            "",
            "| role | model | input | params (M) | GMACs | latency ms (median / p90) | "
            "reduction: params / GMACs / latency |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in comp:
            red = "-"
            if r is not s:
                red = " / ".join(
                    f"{100 * (1 - a / b):.1f}%"
                    for a, b in (
                        (s["params"], r["params"]),
                        (s["gmacs"], r["gmacs"]),
                        (s["latency"]["median_ms"], r["latency"]["median_ms"]),
                    )
                )
            lines.append(
                f"| {r['role']} | {r['model']} | {r['input']} | {r['params'] / 1e6:.2f} | "
                f"{r['gmacs']:.2f} | {r['latency']['median_ms']:.0f} / "
                f"{r['latency']['p90_ms']:.0f} | {red} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--compare-iters",
        type=int,
        default=5,
        help="timed calls per model of the comparison (MViTv2-S is slow)",
    )
    parser.add_argument("--skip", default="", help="comma list of flax,tflite,onnx,torch")
    parser.add_argument("--no-compare", action="store_true")
    parser.add_argument("--torchvision-workaround", action="store_true")
    parser.add_argument("--out", default="", help="also write the tables to this file")
    args = parser.parse_args()
    args.skip = set(filter(None, args.skip.split(",")))
    rt = runtimes(args)
    comp = [] if args.no_compare else comparison(args)
    text = render(rt, comp, args)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
