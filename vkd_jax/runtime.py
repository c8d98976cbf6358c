"""Running exported models: the artifacts' files, their preprocessing and their runners.

What :mod:`vkd_jax.export` writes (TF SavedModel, LiteRT, ONNX) and what
:mod:`vkd_jax.predict` and the export's checks run: :func:`load_runner` gives
``pixels (B, T, S, S, 3) float32 in [0, 255] -> logits`` for any artifact, and
:func:`logits_fn` the same function of the Flax model. ``vkd_export.json``
(:data:`EXPORT_FILE`) beside the artifacts records :func:`preprocessing`: how a video
becomes the model's clips.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from vkd_jax import errors

FORMATS = ("saved_model", "tflite", "tflite_int8", "onnx")
FILES = {
    "saved_model": "saved_model",
    "tflite": "model.tflite",
    "tflite_int8": "model_int8.tflite",
    "onnx": "model.onnx",
}
EXPORT_FILE = "vkd_export.json"


# Defined in the leaf module vkd_jax.errors; kept importable from here and from export.
ExportError = errors.ExportError


def preprocessing(
    meta: Mapping[str, Any], *, class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """How a video becomes the model's clips: the model directory's metadata plus the
    evaluation's sampling.

    Fields: num_frames, crop_size, frame_stride, num_clips, num_crops (the evaluation's
    views), short_side and fps (decoding; 0 = keep), mean, std, class_names.
    """
    num_classes = int(meta["num_classes"])
    names = list(class_names or meta.get("class_names") or [])
    if not names:
        names = [f"class_{i}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise ExportError(f"{len(names)} class names for a model of {num_classes} classes")
    return {
        "num_frames": int(meta.get("num_frames", 8)),
        "crop_size": int(meta.get("crop_size", 32)),
        "frame_stride": int(meta.get("frame_stride", 2)),
        "num_clips": int(meta.get("eval_num_clips", 2)),
        "num_crops": int(meta.get("eval_num_crops", 1)),
        "short_side": int(meta.get("short_side", 0)),
        "fps": float(meta.get("fps", 0.0)),
        "mean": [float(v) for v in meta.get("mean", (0.45, 0.45, 0.45))],
        "std": [float(v) for v in meta.get("std", (0.225, 0.225, 0.225))],
        "class_names": names,
    }


def logits_fn(module: Any, variables: Any, prep: Mapping[str, Any]) -> Callable:
    """``pixels (B, T, S, S, 3) float32 in [0, 255] -> logits (B, C)``, as deployed."""
    mean = jnp.asarray(prep["mean"], jnp.float32)
    std = jnp.asarray(prep["std"], jnp.float32)

    def fn(variables, pixels):
        video = (pixels.astype(jnp.float32) / 255.0 - mean) / std
        logits, _ = module.apply(variables, video, train=False)
        return logits.astype(jnp.float32)

    return fn


def require(module: str, purpose: str) -> Any:
    """Imports a package of the ``export`` extra, or says how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ExportError(
            f"{purpose} needs {module.split('.')[0]} (pip install 'vkd_jax[export]')"
        ) from e


def tf_and_jax2tf():
    try:
        import tensorflow as tf
        from jax.experimental import jax2tf
    except ImportError as e:  # pragma: no cover - TensorFlow is a core dependency.
        raise ExportError(f"export needs TensorFlow ({e})") from e
    return tf, jax2tf


def saved_model_runner(path: str) -> Callable:
    """``pixels (B, T, S, S, 3) -> logits`` through a SavedModel written by :func:`export`."""
    tf, _ = tf_and_jax2tf()
    serve = tf.saved_model.load(path).signatures["serving_default"]

    def run(pixels: np.ndarray) -> np.ndarray:
        return serve(pixels=tf.constant(pixels, tf.float32))["logits"].numpy()

    run.batch_size = None
    return run


def tflite_runner(path: str, *, num_threads: int | None = None) -> Callable:
    """``pixels (B, T, S, S, 3) -> logits`` through the LiteRT interpreter (fixed batch)."""
    litert = require("ai_edge_litert.interpreter", "running LiteRT models")
    interpreter = litert.Interpreter(model_path=path, num_threads=num_threads)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]

    def run(pixels: np.ndarray) -> np.ndarray:
        pixels = np.asarray(pixels, np.float32)
        if tuple(pixels.shape) != tuple(inp["shape"]):
            raise ValueError(f"{path} takes {tuple(inp['shape'])}, got {pixels.shape}")
        interpreter.set_tensor(inp["index"], pixels)
        interpreter.invoke()
        return interpreter.get_tensor(out["index"]).copy()

    run.batch_size = int(inp["shape"][0])
    return run


def onnx_runner(path: str, *, num_threads: int | None = None) -> Callable:
    """``pixels (B, T, S, S, 3) -> logits`` through onnxruntime (fixed batch)."""
    ort = require("onnxruntime", "running ONNX models")
    options = ort.SessionOptions()
    if num_threads:
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]

    def run(pixels: np.ndarray) -> np.ndarray:
        return session.run(None, {inp.name: np.asarray(pixels, np.float32)})[0]

    run.batch_size = int(inp.shape[0]) if isinstance(inp.shape[0], int) else None
    return run


def load_runner(path: str, *, num_threads: int | None = None) -> Callable:
    """The runner of an artifact, by its kind: a SavedModel folder, ``.tflite`` or ``.onnx``.

    The runner maps pixels ``(B, T, S, S, 3)`` to logits; ``runner.batch_size`` is its
    fixed batch (None: any).
    """
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "saved_model.pb")):
        return saved_model_runner(path)
    if path.endswith(".tflite"):
        return tflite_runner(path, num_threads=num_threads)
    if path.endswith(".onnx"):
        return onnx_runner(path, num_threads=num_threads)
    raise ExportError(
        f"{path!r} is not an exported model (a SavedModel folder, .tflite or .onnx file)"
    )


def run_batched(run: Callable, pixels: np.ndarray) -> np.ndarray:
    """Runs ``pixels`` through a runner of fixed batch, padding the last chunk."""
    b = getattr(run, "batch_size", None)
    if not b:
        return np.asarray(run(pixels))
    outs = []
    for i in range(0, len(pixels), b):
        chunk = pixels[i : i + b]
        n = len(chunk)
        if n < b:
            chunk = np.concatenate([chunk, np.zeros((b - n, *chunk.shape[1:]), chunk.dtype)])
        outs.append(np.asarray(run(chunk))[:n])
    return np.concatenate(outs)
