"""Input-pipeline throughput: training clips/s from a built video_folder dataset.

Run (writes its own videos; minutes on a 2-core CPU; docs/benchmarks.md, "The input
pipeline", has measured runs):
  python tools/benchmark_input.py [--workdir /tmp/vkd_input] [--frames 16] [--crop 224]
      [--batch 8] [--batches 30] [--step-clips-per-s 85]

Writes ``--videos`` MP4 files (generic layout, 6 classes, ``--length`` frames of
320x256 textured, moving content at 25 fps), builds them once into a
``video_folder`` TFDS dataset (JPEG frames, short side 256, as the real-data
recipes store them), then times the training input pipeline (``pipeline.train_dataset``:
random clip, random-resized crop to ``--crop``, flip, normalize, batch, prefetch;
no cache, so only each clip's JPEG frames are decoded, and of them only the crop
window) for ``--batches`` batches after ``--warmup`` ones. Reports clips/s, clips/s
per host core, and how many cores the step's appetite (``--step-clips-per-s``: e.g.
the dual-teacher step's clips/s on the accelerator) needs at this rate.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

CLASSES = ("jump", "run", "walk", "wave", "throw", "sit")


def write_videos(root: str, count: int, length: int, size=(256, 320), fps: int = 25) -> None:
    """Textured frames (noise plus moving bars) so that JPEG sizes are realistic."""
    import av

    rng = np.random.default_rng(0)
    h, w = size
    for i in range(count):
        cls = CLASSES[i % len(CLASSES)]
        path = os.path.join(root, cls, f"clip_{i:03d}.mp4")
        if os.path.exists(path):
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        base = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        with av.open(path, "w") as out:
            stream = out.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            for t in range(length):
                frame = np.roll(base, 3 * t, axis=1)
                frame[:, (5 * t + 40 * i) % w : (5 * t + 40 * i) % w + 20] = 255
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="/tmp/vkd_input_benchmark")
    parser.add_argument("--videos", type=int, default=48)
    parser.add_argument("--length", type=int, default=96, help="frames per video")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--stride", type=int, default=2)
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--step-clips-per-s", type=float, default=0.0)
    args = parser.parse_args()

    from vkd_jax import config_lib
    from vkd_jax.data import pipeline

    root = os.path.join(args.workdir, "videos")
    start = time.perf_counter()
    write_videos(root, args.videos, args.length)
    c = config_lib.default_config()
    d = c.data
    d.name, d.builder_config = "video_folder", ""
    d.data_dir = os.path.join(args.workdir, "tfds")
    d.folder.root, d.folder.layout, d.folder.short_side = root, "generic", 256
    d.folder.num_workers = os.cpu_count() or 1
    d.num_frames, d.frame_stride, d.crop_size = args.frames, args.stride, args.crop
    d.train_scale, d.random_flip, d.cache = (0.25, 1.0), True, False
    pipeline.load_builder(d)
    print(f"videos written and built in {time.perf_counter() - start:.0f} s", file=sys.stderr)

    it = pipeline.train_dataset(d, batch_size=args.batch, seed=0).as_numpy_iterator()
    for _ in range(args.warmup):
        next(it)
    start = time.perf_counter()
    for _ in range(args.batches):
        batch = next(it)
    seconds = time.perf_counter() - start
    clips = args.batches * args.batch
    rate = clips / seconds
    cores = os.cpu_count() or 1
    shape = "x".join(map(str, batch["video"].shape[1:]))
    print(f"host cores: {cores}; clips {shape} {batch['video'].dtype}, batch {args.batch}")
    print(f"input pipeline: {rate:.1f} clips/s ({rate / cores:.1f} per core) over {clips} clips")
    if args.step_clips_per_s:
        need = args.step_clips_per_s / (rate / cores)
        print(
            f"a step consuming {args.step_clips_per_s:.1f} clips/s needs about {need:.1f} "
            f"cores at this rate ({'fed' if rate >= args.step_clips_per_s else 'starved'} "
            f"on this host)"
        )


if __name__ == "__main__":
    main()
