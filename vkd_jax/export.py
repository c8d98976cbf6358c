"""Export a model directory for deployment: TF SavedModel, LiteRT (float32 and int8), ONNX.

Every artifact computes ``logits = model(normalize(pixels))`` for a batch of clips of
float32 pixel values in [0, 255], ``(B, T, S, S, 3)`` RGB, normalization inside; the
SavedModel also takes uint8 clips (signature ``serving_uint8``) and returns the class
names. ``vkd_export.json`` beside them records how a video becomes clips (the
evaluation's sampling: ``vkd_jax.predict`` reads it) and each artifact's check.

The route, and why (measured with the pinned TensorFlow 2.21 and JAX 0.10):

* **SavedModel**: ``jax2tf.convert`` (native serialization: the model is one StableHLO
  module inside an ``XlaCallModule`` op) with the variables as ``tf.Variable``s and a
  polymorphic batch dimension.
* **LiteRT**: TensorFlow's converter, from the same function at a fixed batch; it
  lowers the StableHLO to LiteRT's builtin ops (no Flex/TF ops, so the plain LiteRT
  runtime runs it). ``int8`` is its dynamic-range quantisation: int8 weights, float
  activations, no calibration data needed. LiteRT has no grouped 3D convolution, so the
  export traces depthwise convolutions as shift-and-multiply
  (``layers.portable_convolutions``).
* **ONNX**: ``tf2onnx`` from the LiteRT float32 flatbuffer. tf2onnx cannot read the
  SavedModel (it stops at ``XlaCallModule``), and jax2onnx requires an
  orbax-checkpoint older than the one vkd_jax pins; the LiteRT graph is plain ops that
  tf2onnx converts one to one.

Each artifact is run on a check batch as soon as it is written and compared with the
Flax model (float32 formats must agree within ``tolerance``); a failed check deletes
nothing already written but raises :class:`ExportError` naming the format and the gap.
Everything is written to a temporary folder and renamed when complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from vkd_jax import storage
from vkd_jax.models import layers

# The runtime side (formats, files, preprocessing, runners), importable from here too.
from vkd_jax.runtime import (  # noqa: F401
    EXPORT_FILE,
    FILES,
    FORMATS,
    ExportError,
    load_runner,
    logits_fn,
    onnx_runner,
    preprocessing,
    require,
    run_batched,
    saved_model_runner,
    tf_and_jax2tf,
    tflite_runner,
)

_ONNX_OPSET = 17
# Formats whose outputs must equal the Flax model's within the tolerance (int8 is reported).
_EXACT = ("saved_model", "tflite", "onnx")


def export(
    module: Any,
    variables: Mapping[str, Any],
    meta: Mapping[str, Any],
    outdir: str,
    *,
    formats: Sequence[str] = FORMATS,
    batch_size: int = 1,
    tolerance: float = 1e-4,
    prep: Mapping[str, Any] | None = None,
    check_pixels: np.ndarray | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Writes the artifacts of ``formats`` to ``outdir`` (replaced) and checks each one.

    Args:
      module, variables, meta: a model as ``checkpoint.load_model`` returns it.
      outdir: destination folder.
      formats: a subset of :data:`FORMATS` (``onnx`` needs ``tflite``'s converter, not
        its file: it is written either way and kept only when asked for).
      batch_size: the fixed batch of the LiteRT and ONNX models (the SavedModel takes
        any batch).
      tolerance: largest allowed |logit difference| of the float32 formats.
      prep: :func:`preprocessing` of the model (default: from ``meta``).
      check_pixels: ``(N, T, S, S, 3)`` pixel values the artifacts are checked on
        (default: 4 seeded random clips, rounded up to a multiple of ``batch_size``).
      log: where progress lines go.

    Returns:
      The report written to ``vkd_export.json``: preprocessing, and per format its
      file, size, conversion time, max |difference| from the Flax logits and the share
      of check clips whose top-1 class agrees.
    """
    formats = check_formats(formats)
    prep = dict(prep or preprocessing(meta))
    t, s = prep["num_frames"], prep["crop_size"]
    if check_pixels is None:
        n = batch_size * max(1, -(-4 // batch_size))
        check_pixels = np.random.default_rng(0).uniform(0, 255, (n, t, s, s, 3))
    check_pixels = np.asarray(check_pixels, np.float32)
    if check_pixels.shape[1:] != (t, s, s, 3) or len(check_pixels) % batch_size:
        raise ValueError(
            f"check_pixels {check_pixels.shape} must be (k * {batch_size}, {t}, {s}, {s}, 3)"
        )
    fn = logits_fn(module, variables, prep)
    variables = jax.tree_util.tree_map(np.asarray, jax.device_get(dict(variables)))
    reference = np.asarray(jax.jit(fn)(variables, check_pixels))

    outdir = storage.resolve(outdir)
    # The runners check the files where they are written: a local folder, moved (or,
    # for a bucket, uploaded) to outdir when every check has passed.
    if storage.is_remote(outdir):
        tmp = tempfile.mkdtemp(prefix="vkd_export_")
    else:
        tmp = outdir + ".tmp"
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
        os.makedirs(tmp)
    name = f"{meta['name']}/{meta['variant']}"
    report: dict[str, Any] = {
        "model": name,
        "source": meta.get("checkpoint", ""),
        "input": {
            "shape": ["batch", t, s, s, 3],
            "dtype": "float32",
            "range": [0, 255],
            "layout": "NTHWC RGB; normalized inside with mean and std",
            "fixed_batch": batch_size,
        },
        "preprocessing": prep,
        "tolerance": tolerance,
        "formats": {},
    }
    # ONNX is converted from the float32 LiteRT file, so that one is written either way.
    order = [f for f in FORMATS if f in formats or (f == "tflite" and "onnx" in formats)]
    lite_function = None  # Traced once for the float32 and the int8 LiteRT files.
    for fmt in order:
        start = time.perf_counter()
        path = os.path.join(tmp, FILES[fmt])
        if fmt == "saved_model":
            _saved_model(fn, variables, prep, path)
            run = saved_model_runner(path)
        elif fmt in ("tflite", "tflite_int8"):
            lite_function = lite_function or _lite_function(fn, variables, prep, batch_size)
            data = _tflite(
                lite_function, quantize=fmt == "tflite_int8", what=f"{name} to LiteRT ({fmt})"
            )
            with open(path, "wb") as f:
                f.write(data)
            run = tflite_runner(path)
        else:
            _onnx_from_tflite(os.path.join(tmp, FILES["tflite"]), path, what=name)
            run = onnx_runner(path)
        seconds = time.perf_counter() - start
        out = run_batched(run, check_pixels)
        diff = float(np.max(np.abs(out - reference)))
        agree = float(np.mean(out.argmax(-1) == reference.argmax(-1)))
        entry = {
            "file": FILES[fmt],
            "bytes": _size(path),
            "convert_s": round(seconds, 2),
            "max_abs_diff": diff,
            "top1_agreement": agree,
            "check_clips": len(check_pixels),
        }
        if fmt == "tflite_int8":
            entry["int8_weight_share"] = _int8_share(path, variables)
        if fmt in formats:
            report["formats"][fmt] = entry
        log(
            f"Exported {name} as {fmt}: {FILES[fmt]} ({entry['bytes'] / 1e6:.2f} MB, "
            f"{seconds:.1f} s), max |logit - Flax| {diff:.2e}, top-1 agreement {agree:.0%}"
        )
        if fmt in _EXACT and not diff <= tolerance:
            raise ExportError(
                f"the {fmt} export of {name} differs from the Flax model by {diff:.3g} "
                f"(> tolerance {tolerance:g}) on {len(check_pixels)} check clips; the "
                f"artifacts so far are in {tmp}"
            )
    if "tflite" not in formats and "onnx" in formats:
        os.remove(os.path.join(tmp, FILES["tflite"]))
    with open(os.path.join(tmp, EXPORT_FILE), "w") as f:
        json.dump(report, f, indent=2)
    storage.replace_dir(tmp, outdir)
    return report


def _int8_share(path: str, variables: Any) -> float:
    """Share of the model's parameters stored as int8 in a LiteRT file. Dynamic-range
    quantisation covers fully connected and 2D convolution weights, not CONV_3D's."""
    litert = require("ai_edge_litert.interpreter", "running LiteRT models")
    details = litert.Interpreter(model_path=path).get_tensor_details()
    int8 = sum(int(np.prod(d["shape"])) for d in details if d["dtype"] == np.int8)
    total = sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(variables.get("params", {})))
    return min(1.0, int8 / total) if total else 0.0


def check_formats(formats: Sequence[str]) -> tuple[str, ...]:
    formats = tuple(formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ExportError(f"unknown export formats {unknown or '(none)'}; choose from {FORMATS}")
    return formats


def _join(problems: list[str]) -> str:
    unique = list(dict.fromkeys(problems))
    more = f" (and {len(unique) - 3} more)" if len(unique) > 3 else ""
    return "; ".join(unique[:3]) + more


def _size(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


# ------------------------------------------------------------------- TensorFlow side


def _converted(fn: Callable, *, polymorphic: bool) -> Callable:
    _, jax2tf = tf_and_jax2tf()
    shapes = [None, "(b, ...)"] if polymorphic else None
    return jax2tf.convert(fn, with_gradient=False, polymorphic_shapes=shapes)


def _saved_model(fn, variables, prep, path: str) -> None:
    tf, _ = tf_and_jax2tf()
    t, s = prep["num_frames"], prep["crop_size"]
    module = tf.Module()
    module.variables_tree = tf.nest.map_structure(tf.Variable, variables)
    names = tf.constant(prep["class_names"])
    with layers.portable_convolutions():
        converted = _converted(fn, polymorphic=True)

        def outputs(pixels):
            logits = converted(module.variables_tree, pixels)
            return {
                "logits": logits,
                "probabilities": tf.nn.softmax(logits, axis=-1),
                "class_names": names,
            }

        module.serving_float = tf.function(
            outputs,
            input_signature=[tf.TensorSpec([None, t, s, s, 3], tf.float32, name="pixels")],
            autograph=False,
        )
        module.serving_uint8 = tf.function(
            lambda frames: outputs(tf.cast(frames, tf.float32)),
            input_signature=[tf.TensorSpec([None, t, s, s, 3], tf.uint8, name="frames")],
            autograph=False,
        )
        signatures = {
            "serving_default": module.serving_float.get_concrete_function(),
            "serving_uint8": module.serving_uint8.get_concrete_function(),
        }
    tf.saved_model.save(module, path, signatures=signatures)


def _lite_function(fn, variables, prep, batch_size: int) -> tuple[Any, Any]:
    """The model as a TF concrete function at a fixed batch, with the module that holds
    its variables: what the LiteRT converter reads."""
    tf, _ = tf_and_jax2tf()
    t, s = prep["num_frames"], prep["crop_size"]
    with layers.portable_convolutions():
        converted = _converted(fn, polymorphic=False)
        holder = tf.Module()
        holder.variables_tree = tf.nest.map_structure(tf.Variable, variables)
        function = tf.function(
            lambda pixels: converted(holder.variables_tree, pixels),
            input_signature=[tf.TensorSpec([batch_size, t, s, s, 3], tf.float32, name="pixels")],
            autograph=False,
        )
        return function.get_concrete_function(), holder


def _tflite(lite_function: tuple[Any, Any], *, quantize: bool, what: str) -> bytes:
    tf, _ = tf_and_jax2tf()
    concrete, holder = lite_function
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], holder)
    if quantize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    try:
        with _quiet_converter():
            return converter.convert()
    except Exception as e:  # The converter raises its own ConverterError (and others).
        raise ExportError(f"cannot convert {what}: {_converter_error(e)}") from None


def _converter_error(error: Exception) -> str:
    """What the LiteRT converter could not express: its structured errors carry the op
    and the JAX name stack of the layer it came from; else the message's lines."""
    problems = []
    for err in getattr(error, "errors", None) or []:
        message = err.error_message.strip().splitlines()[0] if err.error_message else ""
        if not message:
            continue
        names = [c.name for c in err.location.call if re.match(r"^p?jit\(", c.name)]
        where = f" (layer {_layer_path(names[0])})" if names else ""
        problems.append(f"{message}{where}")
    return _join(problems) if problems else converter_failure(str(error))


@contextlib.contextmanager
def _quiet_converter():
    """The converter logs every pass at INFO through absl; keep errors only."""
    from absl import logging as absl_logging

    level = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        yield
    finally:
        absl_logging.set_verbosity(level)


_OP = re.compile(r"'([\w.]+)' op\b[^\n]*")
_LOC = re.compile(r'"((?:jit|pjit)\([^"]*)"')


def converter_failure(message: str) -> str:
    """The op(s) a converter could not express and the model layers they came from.

    MLIR prints each error's location (the JAX name stack of the op, e.g.
    ``jit(fn)/X3D/blocks_1/res_blocks_0/branch2/se/fc1/reshape``) on the line before it.
    """
    problems = []
    layer = None
    for line in message.splitlines():
        loc = _LOC.search(line)
        if loc:
            layer = _layer_path(loc.group(1))
        if "error:" not in line:
            continue
        op = _OP.search(line)
        if op:
            where = f" (layer {layer})" if layer else ""
            problems.append(f"{op.group(0).strip()}{where}")
            layer = None
    if not problems:
        tail = [line.strip() for line in message.splitlines() if "error" in line.lower()]
        return (tail[0] if tail else message.strip().splitlines()[-1])[:500]
    return _join(problems)


def _layer_path(name_stack: str) -> str:
    """``jit(fn)/X3D/stage1/block0/conv_b/conv_general_dilated`` -> ``X3D/stage1/block0/conv_b
    (conv_general_dilated)``: the module path without the jit wrappers, then the primitive."""
    parts = [p for p in name_stack.split("/") if not re.match(r"^p?jit\(", p)]
    if len(parts) > 1:
        return f"{'/'.join(parts[:-1])} ({parts[-1]})"
    return "/".join(parts) or name_stack


def _onnx_from_tflite(tflite_path: str, path: str, *, what: str) -> None:
    tf2onnx = require("tf2onnx", "ONNX export")
    try:
        with _quiet_converter(), warnings.catch_warnings():
            # tf2onnx reads the flatbuffer with TensorFlow's (deprecated) LiteRT interpreter.
            warnings.simplefilter("ignore", UserWarning)
            tf2onnx.convert.from_tflite(tflite_path, opset=_ONNX_OPSET, output_path=path)
    except Exception as e:
        raise ExportError(f"cannot convert {what} to ONNX: {converter_failure(str(e))}") from None
