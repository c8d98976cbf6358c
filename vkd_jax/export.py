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
import importlib
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
import jax.numpy as jnp
import numpy as np

from vkd_jax import errors, storage
from vkd_jax.models import layers

FORMATS = ("saved_model", "tflite", "tflite_int8", "onnx")
FILES = {
    "saved_model": "saved_model",
    "tflite": "model.tflite",
    "tflite_int8": "model_int8.tflite",
    "onnx": "model.onnx",
}
EXPORT_FILE = "vkd_export.json"
_ONNX_OPSET = 17
# Formats whose outputs must equal the Flax model's within the tolerance (int8 is reported).
_EXACT = ("saved_model", "tflite", "onnx")


# Defined in the leaf module vkd_jax.errors; kept importable from here.
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
    formats = _check_formats(formats)
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
    litert = _require("ai_edge_litert.interpreter", "running LiteRT models")
    details = litert.Interpreter(model_path=path).get_tensor_details()
    int8 = sum(int(np.prod(d["shape"])) for d in details if d["dtype"] == np.int8)
    total = sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(variables.get("params", {})))
    return min(1.0, int8 / total) if total else 0.0


def _check_formats(formats: Sequence[str]) -> tuple[str, ...]:
    formats = tuple(formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ExportError(f"unknown export formats {unknown or '(none)'}; choose from {FORMATS}")
    return formats


def _require(module: str, purpose: str) -> Any:
    """Imports a package of the ``export`` extra, or says how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ExportError(
            f"{purpose} needs {module.split('.')[0]} (pip install 'vkd_jax[export]')"
        ) from e


def _join(problems: list[str]) -> str:
    unique = list(dict.fromkeys(problems))
    more = f" (and {len(unique) - 3} more)" if len(unique) > 3 else ""
    return "; ".join(unique[:3]) + more


def _size(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


# ------------------------------------------------------------------- TensorFlow side


def _tf():
    try:
        import tensorflow as tf
        from jax.experimental import jax2tf
    except ImportError as e:  # pragma: no cover - TensorFlow is a core dependency.
        raise ExportError(f"export needs TensorFlow ({e})") from e
    return tf, jax2tf


def _converted(fn: Callable, *, polymorphic: bool) -> Callable:
    _, jax2tf = _tf()
    shapes = [None, "(b, ...)"] if polymorphic else None
    return jax2tf.convert(fn, with_gradient=False, polymorphic_shapes=shapes)


def _saved_model(fn, variables, prep, path: str) -> None:
    tf, _ = _tf()
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


def saved_model_runner(path: str) -> Callable:
    """``pixels (B, T, S, S, 3) -> logits`` through a SavedModel written by :func:`export`."""
    tf, _ = _tf()
    serve = tf.saved_model.load(path).signatures["serving_default"]

    def run(pixels: np.ndarray) -> np.ndarray:
        return serve(pixels=tf.constant(pixels, tf.float32))["logits"].numpy()

    run.batch_size = None
    return run


def _lite_function(fn, variables, prep, batch_size: int) -> tuple[Any, Any]:
    """The model as a TF concrete function at a fixed batch, with the module that holds
    its variables: what the LiteRT converter reads."""
    tf, _ = _tf()
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
    tf, _ = _tf()
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


def tflite_runner(path: str, *, num_threads: int | None = None) -> Callable:
    """``pixels (B, T, S, S, 3) -> logits`` through the LiteRT interpreter (fixed batch)."""
    litert = _require("ai_edge_litert.interpreter", "running LiteRT models")
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


def _onnx_from_tflite(tflite_path: str, path: str, *, what: str) -> None:
    tf2onnx = _require("tf2onnx", "ONNX export")
    try:
        with _quiet_converter(), warnings.catch_warnings():
            # tf2onnx reads the flatbuffer with TensorFlow's (deprecated) LiteRT interpreter.
            warnings.simplefilter("ignore", UserWarning)
            tf2onnx.convert.from_tflite(tflite_path, opset=_ONNX_OPSET, output_path=path)
    except Exception as e:
        raise ExportError(f"cannot convert {what} to ONNX: {converter_failure(str(e))}") from None


def onnx_runner(path: str, *, num_threads: int | None = None) -> Callable:
    """``pixels (B, T, S, S, 3) -> logits`` through onnxruntime (fixed batch)."""
    ort = _require("onnxruntime", "running ONNX models")
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


# ------------------------------------------------------------------------ mode=export


def run(config: Any, workdir: str) -> dict[str, Any]:
    """``mode=export``: exports ``config.export.model`` and measures every artifact's
    top-1 on ``data.eval_split`` next to the Flax model's."""
    from absl import logging

    from vkd_jax import checkpoint, config_lib

    x = config.export
    path = x.model or os.path.join(workdir, "student_distill", "model")
    if not storage.isdir(path):
        raise checkpoint.CheckpointError(
            f"export.model = {path!r}: no model directory there (set --config.export.model "
            "to a model folder written by a stage or tools/convert_checkpoint.py)"
        )
    formats = _check_formats(x.formats)
    if x.batch_size < 1:
        raise config_lib.ConfigError(f"export.batch_size must be >= 1, got {x.batch_size}")
    module, variables, meta = checkpoint.load_model(path, what="export.model")
    meta = dict(meta, checkpoint=storage.resolve(path))
    class_names = meta.get("class_names")
    info = None
    if x.eval_videos or not class_names:
        from vkd_jax.data import pipeline  # TensorFlow datasets: only with data.

        info = pipeline.dataset_info(config.data)
        if info.num_classes == int(meta["num_classes"]):
            class_names = class_names or info.class_names
        elif x.eval_videos:
            raise config_lib.ConfigError(
                f"export.model has {meta['num_classes']} classes but data "
                f"{config.data.name}/{config.data.builder_config} has {info.num_classes}: "
                "evaluate it on its own dataset or set export.eval_videos=0"
            )
    prep = preprocessing(meta, class_names=class_names)
    if x.eval_videos:
        _check_sampling(config.data, prep)
    outdir = storage.resolve(x.outdir or os.path.join(workdir, "export"))
    # Evaluating the artifacts reads them from a local folder; a bucket gets the result.
    local = outdir
    if storage.is_remote(outdir):
        local = os.path.join(tempfile.mkdtemp(prefix="vkd_export_"), "export")
    report = export(
        module,
        variables,
        meta,
        local,
        formats=formats,
        batch_size=int(x.batch_size),
        tolerance=float(x.tolerance),
        prep=prep,
        log=logging.info,
    )
    if x.eval_videos:
        report["eval"] = evaluate_artifacts(
            config,
            local,
            formats,
            logits_fn(module, variables, prep),
            variables,
            limit=int(x.eval_videos),
        )
        storage.write_json(os.path.join(local, EXPORT_FILE), report, indent=2)
    if local != outdir:
        storage.replace_dir(local, outdir)
    print(summary_table(report))
    print(f"Artifacts and report ({EXPORT_FILE}) in {outdir}")
    return report


def _check_sampling(data_cfg: Any, prep: Mapping[str, Any]) -> None:
    from vkd_jax.config_lib import ConfigError

    for key, field in (("num_frames", "num_frames"), ("crop_size", "crop_size")):
        if int(data_cfg[key]) != int(prep[field]):
            raise ConfigError(
                f"data.{key} = {data_cfg[key]} but the exported model takes {prep[field]}; "
                f"set --config.data.{key}={prep[field]} (or export.eval_videos=0)"
            )


def evaluate_artifacts(
    config: Any,
    outdir: str,
    formats: Sequence[str],
    flax_fn: Callable,
    variables: Any,
    *,
    limit: int = -1,
) -> dict[str, Any]:
    """Multi-view top-1 of the Flax model and of each artifact on ``data.eval_split``.

    The views are the evaluation's (``pipeline.eval_views``); each runner sees the
    same pixels, and a video's prediction averages its views' softmax scores.
    """
    from vkd_jax import evaluation
    from vkd_jax.data import pipeline

    ds = pipeline.eval_dataset(
        config.data,
        batch_size=int(config.train.eval_batch_size),
        process_index=0,
        process_count=1,
        normalized=False,
    )
    runners = {fmt: load_runner(os.path.join(outdir, FILES[fmt])) for fmt in formats}
    forward = jax.jit(flax_fn)
    correct = {name: 0 for name in ("flax", *formats)}
    seen = 0
    for batch in ds.as_numpy_iterator():
        keep = batch["mask"]
        if limit > 0:
            keep = keep & (np.cumsum(keep) + seen <= limit)
        if not keep.any():
            if limit > 0 and seen >= limit:
                break
            continue
        video, label = batch["video"][keep], batch["label"][keep]
        n, v = video.shape[:2]
        views = video.reshape(n * v, *video.shape[2:])
        outs = {"flax": np.asarray(forward(variables, views))}
        for fmt, runner in runners.items():
            outs[fmt] = run_batched(runner, views)
        for name, logits in outs.items():
            probs = np.asarray(evaluation.multiview_predictions(logits.reshape(n, v, -1)))
            correct[name] += int(np.sum(probs.argmax(-1) == label))
        seen += n
    if not seen:
        raise ExportError(f"no videos in {config.data.eval_split!r} to evaluate the export on")
    return {
        "split": config.data.eval_split,
        "videos": seen,
        "views": int(config.data.eval_num_clips * config.data.eval_num_crops),
        "top1": {name: c / seen for name, c in correct.items()},
    }


def summary_table(report: Mapping[str, Any]) -> str:
    """The report as a Markdown table (docs/deploy.md shows one)."""
    top1 = report.get("eval", {}).get("top1", {})
    lines = [
        f"{report['model']}: the artifacts' logits against the Flax model's on check clips, "
        "and multi-view top-1",
        "",
        "| format | file | MB | max abs diff vs Flax | top-1 |",
        "|---|---|---|---|---|",
    ]
    if top1:
        lines.append(f"| Flax (reference) | - | - | - | {100 * top1['flax']:.1f}% |")
    for fmt, e in report["formats"].items():
        acc = f"{100 * top1[fmt]:.1f}%" if fmt in top1 else "-"
        lines.append(
            f"| {fmt} | {e['file']} | {e['bytes'] / 1e6:.2f} | {e['max_abs_diff']:.1e} | {acc} |"
        )
    int8 = report["formats"].get("tflite_int8", {}).get("int8_weight_share")
    if int8 is not None:
        lines.append(
            f"\ntflite_int8 stores {100 * int8:.0f}% of the parameters as int8 (LiteRT's "
            "dynamic-range quantisation leaves CONV_3D weights in float32)."
        )
    if top1:
        ev = report["eval"]
        lines.append(f"\ntop-1 on {ev['videos']} videos of {ev['split']} ({ev['views']} views).")
    return "\n".join(lines)
