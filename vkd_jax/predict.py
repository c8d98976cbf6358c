"""Label video files with a trained or exported model.

  python -m vkd_jax.predict --model DIR_OR_FILE video.mp4 [more videos] [--json]

``--model`` is a model directory (a stage's ``model/`` or a converted checkpoint), an
export folder (``mode=export``; ``--format`` picks its artifact), or one exported
artifact: a SavedModel folder, a ``.tflite`` or an ``.onnx`` file (its
``vkd_export.json`` is read from beside it). Each video is decoded with PyAV and
sampled as evaluation samples a test video (``data.eval_num_clips`` uniformly spaced
clips of ``num_frames`` frames ``frame_stride`` apart, short side resized to the crop,
``eval_num_crops`` crops); the views' softmax scores are averaged and the top classes
printed. A video that cannot be read gets a one-line error naming it, and the other
files still get their predictions (the exit status is then 1).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from vkd_jax import runtime  # noqa: E402

_FORMAT_ORDER = ("saved_model", "tflite", "onnx", "tflite_int8")


class Predictor:
    """A model (Flax or exported) with the sampling it was evaluated with.

    Attributes:
      prep: :func:`vkd_jax.runtime.preprocessing` fields (sampling, class names).
      source: what was loaded, for messages.
    """

    def __init__(self, model: str, *, fmt: str = "", num_threads: int | None = None):
        model = os.path.abspath(model)
        self.source = model
        if os.path.isfile(os.path.join(model, runtime.EXPORT_FILE)) and not os.path.isfile(
            os.path.join(model, "saved_model.pb")
        ):
            report = _read_json(os.path.join(model, runtime.EXPORT_FILE))
            fmt = fmt or next((f for f in _FORMAT_ORDER if f in report["formats"]), "")
            if fmt not in report["formats"]:
                raise runtime.ExportError(
                    f"{model} has no {fmt!r} export; it has {sorted(report['formats'])}"
                )
            self.source = os.path.join(model, runtime.FILES[fmt])
            self._init_artifact(self.source, report, num_threads)
        elif os.path.isfile(os.path.join(model, "vkd_model.json")):
            self._init_flax(model)
        else:
            report = _report_beside(model)
            self._init_artifact(model, report, num_threads)

    def _init_flax(self, path: str) -> None:
        import jax

        from vkd_jax import checkpoint

        module, variables, meta = checkpoint.load_model(path, what="--model")
        self.prep = runtime.preprocessing(meta)
        fn = jax.jit(runtime.logits_fn(module, variables, self.prep))
        self._run = lambda pixels: np.asarray(fn(variables, pixels))
        self._run.batch_size = None

    def _init_artifact(self, path: str, report: dict, num_threads: int | None) -> None:
        self.prep = report["preprocessing"]
        self._run = runtime.load_runner(path, num_threads=num_threads)

    def views(self, path: str) -> np.ndarray:
        """The evaluation views of one video file: float32 pixels ``(V, T, S, S, 3)``."""
        import ml_collections
        import tensorflow as tf

        from vkd_jax.data import decode, pipeline

        p = self.prep
        video = decode.decode_video(path, short_side=int(p["short_side"]), fps=float(p["fps"]))
        cfg = ml_collections.ConfigDict(
            dict(
                num_frames=p["num_frames"],
                frame_stride=p["frame_stride"],
                eval_num_clips=p["num_clips"],
                eval_num_crops=p["num_crops"],
                crop_size=p["crop_size"],
                mean=p["mean"],
                std=p["std"],
            )
        )
        return pipeline.eval_views(tf.constant(video), cfg, normalized=False).numpy()

    def probabilities(self, path: str) -> np.ndarray:
        """Class probabilities of one video file (its views' softmax scores averaged)."""
        from vkd_jax import evaluation

        logits = runtime.run_batched(self._run, self.views(path))
        return np.asarray(evaluation.multiview_predictions(logits[None]))[0]

    def top(self, path: str, k: int = 5) -> list[tuple[str, float]]:
        probs = self.probabilities(path)
        names = self.prep["class_names"]
        order = np.argsort(-probs)[:k]
        return [(names[i], float(probs[i])) for i in order]


def _read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _report_beside(path: str) -> dict:
    """``vkd_export.json`` of an artifact: in its folder (or the SavedModel's parent)."""
    here = path if os.path.isdir(path) else os.path.dirname(path)
    for folder in (here, os.path.dirname(here)):
        candidate = os.path.join(folder, runtime.EXPORT_FILE)
        if os.path.isfile(candidate):
            return _read_json(candidate)
    if not os.path.exists(path):
        raise FileNotFoundError(f"--model {path}: no such file or folder")
    raise runtime.ExportError(
        f"--model {path}: not a vkd_jax model directory (vkd_model.json) and no "
        f"{runtime.EXPORT_FILE} beside it (export with mode=export, which writes one)"
    )


def _video_errors() -> tuple[type[BaseException], ...]:
    import av

    from vkd_jax.data.decode import VideoDecodeError

    return (av.FFmpegError, VideoDecodeError, OSError, ValueError, IndexError)


def predict_files(
    predictor: Predictor,
    paths: Sequence[str],
    *,
    k: int = 5,
    on_error: Callable[[str, str], None] | None = None,
) -> list[dict[str, Any]]:
    """Top-k of every file; a file that fails gets ``{"file", "error"}`` and the rest go on."""
    results = []
    for path in paths:
        try:
            top = predictor.top(path, k)
        except _video_errors() as e:
            message = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            results.append({"file": path, "error": message})
            if on_error:
                on_error(path, message)
            continue
        results.append({"file": path, "top": [{"class": n, "probability": p} for n, p in top]})
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vkd_jax.predict", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("videos", nargs="+", help="video files (anything FFmpeg decodes)")
    parser.add_argument(
        "--model",
        required=True,
        help="model directory, export folder, SavedModel folder, .tflite or .onnx file",
    )
    parser.add_argument(
        "--format",
        default="",
        choices=("", *runtime.FORMATS),
        help="artifact of an export folder (default: saved_model)",
    )
    parser.add_argument("--top", type=int, default=5, help="classes printed per video")
    parser.add_argument("--threads", type=int, default=None, help="LiteRT/ONNX threads")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    try:
        predictor = Predictor(args.model, fmt=args.format, num_threads=args.threads)
    except (runtime.ExportError, FileNotFoundError, ValueError) as e:
        print(f"vkd_jax.predict: error: {e}", file=sys.stderr)
        return 2

    def report_error(path: str, message: str) -> None:
        print(f"vkd_jax.predict: error: {path}: {message}", file=sys.stderr)

    results = predict_files(predictor, args.videos, k=args.top, on_error=report_error)
    if args.json:
        print(json.dumps({"model": predictor.source, "predictions": results}, indent=2))
    else:
        for r in results:
            if "top" in r:
                print(r["file"])
                for t in r["top"]:
                    print(f"  {t['probability']:6.3f}  {t['class']}")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
