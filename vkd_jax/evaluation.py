"""Evaluation: accuracy with multi-view testing, parameters, MACs and latency.

Multi-view testing follows the standard video protocol (e.g. X3D, Feichtenhofer, CVPR 2020,
Sec. 4; MViTv2, Li et al., CVPR 2022): every test video is sampled as ``V`` views (temporal
clips x spatial crops), each view is classified independently, and the video's prediction is
the average of the views' softmax scores.

Compute cost is reported in multiply-accumulates (MACs) following fvcore's ``flop_count``
convention, which is what the X3D / MViT / SlowFast papers call "GFLOPs": one MAC per
multiply-add of a convolution, linear layer or matrix product, and nothing for elementwise
ops, normalization, pooling or softmax. :func:`count_macs` reads these from the model's traced
jaxpr (no compute runs); ``method="xla"`` instead reads the compiled forward's XLA cost
analysis, which differs in two documented ways (see :func:`count_macs`).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.extend as jex
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from vkd_jax import _deps, sharding, storage
from vkd_jax.models import layers

try:  # Private JAX (no public dead-code elimination); _dead_code_eliminated says why.
    from jax._src.interpreters.partial_eval import dce_jaxpr as _dce_jaxpr
except ImportError:  # pragma: no cover (depends on the JAX version)
    _dce_jaxpr = None

# ----------------------------------------------------------------------------- size and cost


def count_params(params: Any) -> int:
    """Number of scalars in a parameter pytree.

    Args:
      params: a pytree of arrays or ``jax.ShapeDtypeStruct`` (e.g. from ``jax.eval_shape``), so
        full-size models can be counted without allocating them.

    Returns:
      The total number of elements over all leaves.
    """
    return int(sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params)))


def _abstract(tree: Any) -> Any:
    """Replaces array leaves by ``ShapeDtypeStruct`` so tracing never touches real buffers."""
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def _eqn_macs(eqn: Any) -> float:
    """fvcore-convention MACs of one jaxpr equation (0 for anything but conv/dot)."""
    name = eqn.primitive.name
    if name == "conv_general_dilated":
        # fvcore: out_numel * (C_in / groups) * prod(kernel) = out_numel * (kernel size / C_out).
        # Padded taps count as full multiply-adds, as in fvcore (XLA's cost analysis skips them).
        rhs = eqn.invars[1].aval
        out = eqn.outvars[0].aval
        out_features = rhs.shape[eqn.params["dimension_numbers"].rhs_spec[0]]
        return math.prod(out.shape) * math.prod(rhs.shape) / out_features
    if name == "dot_general":
        # Each output element is a dot product over the contracting dimensions.
        (lhs_contract, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval
        out = eqn.outvars[0].aval
        return math.prod(out.shape) * math.prod(lhs.shape[d] for d in lhs_contract)
    return 0.0


def _jaxpr_macs(jaxpr: Any) -> float:
    """Sums :func:`_eqn_macs` over a jaxpr, descending into nested jaxprs (jit, remat, ...)."""
    total = 0.0
    for eqn in jaxpr.eqns:
        total += _eqn_macs(eqn)
        subs = [_jaxpr_macs(sub) for sub in jex.core.jaxprs_in_params(eqn.params)]
        if not subs:
            continue
        name = eqn.primitive.name
        if name == "cond":
            total += max(subs)  # Only one branch runs; take the most expensive.
        elif name == "scan":
            total += eqn.params["length"] * sum(subs)  # e.g. nn.scan over repeated blocks.
        else:
            # Includes while loops, whose trip count is unknown statically: counted once.
            total += sum(subs)
    return total


def count_macs(
    model: Any,
    variables: Any,
    input_shape: tuple[int, int, int],
    *,
    batch_size: int = 1,
    method: str = "jaxpr",
) -> float:
    """Multiply-accumulates of one inference forward pass of one clip.

    Nothing is computed: the forward is traced (and for ``method="xla"`` compiled) on
    abstract inputs of shape ``(batch_size, T, H, W, 3)``.

    Two methods:

    - ``"jaxpr"`` (default): fvcore's ``flop_count`` convention, the one behind the
      published X3D / MViT "GFLOPs": ``conv_general_dilated`` counts ``out_numel *
      C_in/groups * prod(kernel)`` and ``dot_general`` counts ``out_numel * contracted size``
      (linear layers, attention matmuls, einsums); everything else counts 0. Ops that do not
      feed the logits are dropped first.
    - ``"xla"``: ``flops / 2`` from ``jax.jit(f).lower(...).compile().cost_analysis()``.
      XLA counts 2 flops per multiply-add, but also (a) 1 flop per element of elementwise
      ops (bias add, activations, normalization, residual adds), which raises the figure,
      and (b) skips kernel taps that fall on zero padding, which lowers it (a 3x3x3 'SAME'
      conv on a 4x8x8 map counts (10*22*22)/(12*24*24) = 70% of fvcore's MACs). Backend
      dependent; useful as a cross-check, not for comparison with papers (docs/models.md's
      model card lists both counts per model: on small maps the padding dominates).

    Args:
      model: a flax module whose ``apply(variables, video, train=False)`` returns
        ``(logits, features)``.
      variables: the model's variables, real arrays or ``ShapeDtypeStruct`` leaves.
      input_shape: ``(T, H, W)`` of one clip.
      batch_size: clips traced at once; the result is divided by it.
      method: ``"jaxpr"`` or ``"xla"``.

    Returns:
      MACs per clip (divide by 1e9 for the papers' "GFLOPs").
    """
    video = jax.ShapeDtypeStruct((batch_size, *input_shape, 3), jnp.float32)
    abstract_variables = _abstract(variables)

    def forward(v, x):
        # Count the convolutions themselves, not the CPU formulation of them (see layers.Conv3d).
        with layers.native_convolutions():
            logits, _ = model.apply(v, x, train=False)
        return logits  # Features are dead code unless the logits need them, as in deployment.

    if method == "jaxpr":
        jaxpr = jax.make_jaxpr(forward)(abstract_variables, video).jaxpr
        return _jaxpr_macs(_dead_code_eliminated(jaxpr)) / batch_size
    if method == "xla":
        cost = jax.jit(forward).lower(abstract_variables, video).compile().cost_analysis()
        # jax 0.10 returns a dict; older versions returned a list with one dict per program.
        if isinstance(cost, (list, tuple)):
            cost = cost[0]
        return float(cost["flops"]) / 2 / batch_size
    raise ValueError(f"Unknown method {method!r}; expected 'jaxpr' or 'xla'.")


def _dead_code_eliminated(jaxpr):
    """``jaxpr`` without the ops whose results nothing uses.

    Tracing keeps such ops (e.g. a feature computed only for distillation); XLA and a
    deployed model drop them, so counting them would overstate the GMACs. JAX has no
    public API for this, so a JAX that moved the private one is an error here, not a
    silently higher count.
    """
    if _dce_jaxpr is None:
        raise RuntimeError(
            "count_macs(method='jaxpr') needs jax._src.interpreters.partial_eval.dce_jaxpr, "
            f"which JAX {jax.__version__} does not have; without it unused ops would be "
            "counted. Use method='xla', or a JAX version this package supports."
        )
    return _dce_jaxpr(jaxpr, [True] * len(jaxpr.outvars))[0]


def measure_latency(
    model: Any,
    variables: Any,
    input_shape: tuple[int, int, int],
    *,
    batch_size: int = 1,
    iters: int = 20,
    warmup: int = 3,
) -> dict[str, float]:
    """Wall-clock latency of the jitted inference forward on the default device.

    Args:
      model: a flax module returning ``(logits, features)``.
      variables: the model's (real) variables.
      input_shape: ``(T, H, W)`` of one clip.
      batch_size: clips per call.
      iters: timed calls.
      warmup: untimed calls first (the first one compiles).

    Returns:
      ``{"median_ms", "p90_ms", "mean_ms"}`` per call of ``batch_size`` clips.
    """
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False)[0])
    video = jnp.zeros((batch_size, *input_shape, 3), jnp.float32)
    for _ in range(warmup):
        forward(variables, video).block_until_ready()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        forward(variables, video).block_until_ready()
        times.append((time.perf_counter() - start) * 1e3)
    times = np.asarray(times)
    return {
        "median_ms": float(np.median(times)),
        "p90_ms": float(np.percentile(times, 90)),
        "mean_ms": float(np.mean(times)),
    }


# ------------------------------------------------------------------------------- accuracy


def multiview_predictions(logits_views: jax.Array | np.ndarray) -> jax.Array:
    """Averages the softmax scores of a video's views.

    Args:
      logits_views: ``(N, V, C)`` logits of ``V`` views (clips x crops) of ``N`` videos.

    Returns:
      ``(N, C)`` class probabilities, the mean over views of each view's softmax.
    """
    return jnp.mean(jax.nn.softmax(jnp.asarray(logits_views, jnp.float32), axis=-1), axis=1)


def topk_correct(probs: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Whether each label is among the ``k`` highest-scoring classes.

    Ties are broken towards the lower class index (as ``argmax`` does), so a constant
    prediction is not counted correct for every class.

    Args:
      probs: ``(N, C)`` scores.
      labels: ``(N,)`` integer labels.
      k: number of top classes; clipped to ``C``.

    Returns:
      ``(N,)`` bool.
    """
    probs = np.asarray(probs)
    labels = np.asarray(labels)
    k = min(k, probs.shape[-1])
    topk = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    return np.any(topk == labels[:, None], axis=-1)


def accuracy_summary(
    probs: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Top-1/top-5, per-class accuracy and the confusion matrix of a set of predictions.

    Args:
      probs: ``(N, C)`` scores (``C == num_classes``).
      labels: ``(N,)`` integer labels in ``[0, num_classes)``.
      num_classes: number of classes.
      class_names: names of the classes; ``str(i)`` where missing.

    Returns:
      A dict with ``top1``, ``top5`` (k clipped to ``num_classes``), ``mean_class_accuracy``
      (mean over classes that have examples, the EPIC-KITCHENS convention),
      ``per_class_accuracy`` (name -> top-1 accuracy, ``None`` for classes without examples)
      and ``confusion`` (``num_classes`` lists of ``num_classes`` ints; row = true class,
      column = top-1 prediction). Accuracies are fractions in [0, 1]; NaN when ``N == 0``.
    """
    probs = np.asarray(probs, np.float32).reshape(-1, num_classes)
    labels = np.asarray(labels, np.int64).reshape(-1)
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for {num_classes} classes.")
    predicted = np.argmax(probs, axis=-1) if len(labels) else np.zeros(0, np.int64)
    confusion = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    per_class_total = confusion.sum(axis=1)
    per_class = {
        name: (float(confusion[i, i] / per_class_total[i]) if per_class_total[i] else None)
        for i, name in enumerate(names)
    }
    present = [acc for acc in per_class.values() if acc is not None]

    def mean(x: np.ndarray) -> float:
        return float(np.mean(x)) if len(x) else float("nan")

    return {
        "top1": mean(topk_correct(probs, labels, 1)),
        "top5": mean(topk_correct(probs, labels, 5)),
        "mean_class_accuracy": mean(np.asarray(present)),
        "per_class_accuracy": per_class,
        "confusion": confusion.tolist(),
    }


def make_eval_step(model: Any):
    """A jitted multi-view inference step.

    Args:
      model: a flax module returning ``(logits, features)``.

    Returns:
      ``step(variables, videos) -> logits``: ``videos`` ``(b, V, T, H, W, 3)`` is run as one
      batch of ``b * V`` clips with ``train=False``; ``logits`` is ``(b, V, C)``.
    """

    @jax.jit
    def step(variables: Any, videos: jax.Array) -> jax.Array:
        b, v = videos.shape[:2]
        logits, _ = model.apply(variables, videos.reshape((b * v, *videos.shape[2:])), train=False)
        return logits.reshape((b, v, logits.shape[-1]))

    return step


def evaluate(
    model: Any,
    variables: Any,
    batches: Iterable[Mapping[str, Any]],
    *,
    num_classes: int,
    class_names: Sequence[str] | None = None,
    step: Any = None,
) -> dict[str, Any]:
    """Multi-view accuracy of a model over an evaluation set.

    Args:
      model: a flax module returning ``(logits, features)``.
      variables: its variables (``params`` and, for BN models, ``batch_stats``).
      batches: dicts with ``video`` ``(b, V, T, H, W, 3)``, ``label`` ``(b,)`` and optionally
        ``mask`` ``(b,)`` bool (False marks padding examples that fill the last batch).
        NumPy or jax arrays; global arrays sharded over processes are gathered, so every
        process returns the summary of the whole set.
      num_classes: number of classes.
      class_names: names of the classes.
      step: ``make_eval_step(model)``, made here if None (pass one to reuse its
        compilation across evaluations).

    Returns:
      :func:`accuracy_summary` of the unmasked examples plus ``num_examples``.
    """
    step = step or make_eval_step(model)
    all_probs, all_labels = [], []
    for batch in batches:
        logits = step(variables, batch["video"])
        probs = sharding.to_host(multiview_predictions(logits))
        labels = sharding.to_host(batch["label"])
        mask = batch.get("mask")
        keep = np.ones(len(labels), bool) if mask is None else sharding.to_host(mask).astype(bool)
        all_probs.append(probs[keep])
        all_labels.append(labels[keep])
    probs = np.concatenate(all_probs) if all_probs else np.zeros((0, num_classes), np.float32)
    labels = np.concatenate(all_labels) if all_labels else np.zeros((0,), np.int64)
    summary = accuracy_summary(probs, labels, num_classes, class_names)
    summary["num_examples"] = int(len(labels))
    return summary


# ------------------------------------------------------------------------------- plotting


def plot_confusion(
    confusion: Sequence[Sequence[int]] | np.ndarray,
    class_names: Sequence[str],
    path: str,
    *,
    title: str = "Confusion matrix",
) -> str:
    """Writes a row-normalized confusion matrix as a PNG.

    Args:
      confusion: ``(C, C)`` counts, row = true class, column = predicted class.
      class_names: ``C`` names for the axes.
      path: output PNG file.
      title: figure title.

    Returns:
      ``path``.
    """
    with _deps.extra("train", __name__):  # Figures need the train extra.
        import matplotlib

        matplotlib.use("Agg")  # Headless: evaluation runs on servers without a display.
        import matplotlib.pyplot as plt

    counts = np.asarray(confusion, np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    # Rows of classes without examples stay 0 instead of dividing by zero.
    normalized = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    n = len(class_names)
    size = min(max(4.0, 0.35 * n + 2.0), 30.0)
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(normalized, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), labels=list(class_names), rotation=90)
    ax.set_yticks(range(n), labels=list(class_names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if n <= 20:  # Cell values are readable only for few classes.
        for i in range(n):
            for j in range(n):
                color = "white" if normalized[i, j] > 0.5 else "black"
                ax.text(j, i, f"{normalized[i, j]:.2f}", ha="center", va="center", color=color)
    fig.tight_layout()
    storage.savefig(fig, path, dpi=100)
    plt.close(fig)
    return path


# ------------------------------------------------------------ a model on a dataset

EVAL_FILE = "eval.json"
# Evaluations of a finished model on other splits or views than its first, one folder
# each (<outdir>/evaluations/<split and views>/eval.json).
OTHER_EVALUATIONS = "evaluations"


def eval_setting(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """What a summary's accuracy depends on besides the model: the split and the views.

    Stored in every summary (``summary["eval"]``), so a stored result is never returned
    for another split (data.eval_split does not shape the model, so a finished stage
    can be asked for a new one).
    """
    d = config.data
    return {
        "split": str(d.eval_split),
        "num_clips": int(d.eval_num_clips),
        "num_crops": int(d.eval_num_crops),
    }


def stored_evaluation(outdir: str, config: ml_collections.ConfigDict) -> dict[str, Any] | None:
    """The summary stored in ``outdir`` (or its OTHER_EVALUATIONS) for the config's
    evaluation setting; None when there is none (a summary written before the setting
    was recorded counts as none: it is evaluated again rather than trusted)."""
    want = eval_setting(config)
    for path in (
        os.path.join(outdir, EVAL_FILE),
        os.path.join(_other_evaluation_dir(outdir, want), EVAL_FILE),
    ):
        summary = _summary_for(path, want)
        if summary is not None:
            return summary
    return None


def _summary_for(path: str, setting: Mapping[str, Any]) -> dict[str, Any] | None:
    """The summary in ``path`` if it was measured with ``setting``; None otherwise."""
    if storage.isfile(path):
        summary = storage.read_json(path)
        if summary.get("eval") == setting:
            return summary
    return None


def _other_evaluation_dir(outdir: str, setting: Mapping[str, Any]) -> str:
    split = "".join(c if c.isalnum() else "_" for c in setting["split"]).strip("_")
    name = f"{split}_{setting['num_clips']}x{setting['num_crops']}"
    return os.path.join(outdir, OTHER_EVALUATIONS, name)


def evaluate_again(
    config: ml_collections.ConfigDict, outdir: str, model_dir: str, *, what: str
) -> dict[str, Any]:
    """A finished run's summary for the config's evaluation setting.

    The summary in ``outdir/eval.json`` keeps the run's own fields (seconds, DATW
    weights, ...). If it was measured on another split or views, the exported model in
    ``model_dir`` is evaluated on the requested ones (once: the result is stored under
    ``outdir/evaluations/``), and its accuracy replaces the stored one.
    """
    want = eval_setting(config)
    first = storage.read_json(os.path.join(outdir, EVAL_FILE))
    if first.get("eval") == want:
        return first
    other = _other_evaluation_dir(outdir, want)
    again = _summary_for(os.path.join(other, EVAL_FILE), want)
    if again is None:
        logging.info(
            "%s was evaluated on %s; evaluating it on %s", what, first.get("eval", "another split"),
            want,
        )  # fmt: skip
        again = evaluate_checkpoint(config, model_dir, other, what=what)
    merged = dict(first)
    merged.update({k: v for k, v in again.items() if k not in ("checkpoint", "model")})
    return merged


def evaluate_split(
    config: ml_collections.ConfigDict,
    model: Any,
    variables: Mapping[str, Any],
    info: Any,
    *,
    mesh: Any,
    step: Any = None,
) -> dict[str, Any]:
    """:func:`evaluate` on ``config.data.eval_split`` (every clip and crop of each video).

    ``info`` is the dataset's ``pipeline.DatasetInfo``; batches are sharded over ``mesh``;
    ``step`` as in :func:`evaluate`.
    """
    from vkd_jax.data import pipeline  # TensorFlow: only when evaluating on a dataset.

    local_batch = sharding.local_batch_size(config.train.eval_batch_size)
    ds = pipeline.eval_dataset(config.data, batch_size=local_batch)
    batches = (sharding.to_global(b, mesh) for b in ds.as_numpy_iterator())
    return evaluate(
        model,
        variables,
        batches,
        num_classes=info.num_classes,
        class_names=info.class_names,
        step=step,
    )


def evaluate_model(
    config: ml_collections.ConfigDict,
    model: Any,
    variables: Mapping[str, Any],
    info: Any,
    outdir: str,
    *,
    mesh: Any,
) -> dict[str, Any]:
    """Multi-view accuracy on the eval split, plus size and speed of the model.

    ``info`` is the dataset's ``pipeline.DatasetInfo``. Writes ``confusion.png`` to
    ``outdir`` and returns a JSON-able summary.
    """
    summary = evaluate_split(config, model, variables, info, mesh=mesh)
    input_shape = (config.data.num_frames, config.data.crop_size, config.data.crop_size)
    summary["params"] = count_params(variables["params"])
    summary["gmacs"] = count_macs(model, variables, input_shape) / 1e9
    summary["latency"] = measure_latency(
        model,
        variables,
        input_shape,
        batch_size=config.eval.latency_batch_size,
        iters=config.eval.latency_iters,
    )
    summary["input_shape"] = list(input_shape)
    summary["views"] = config.data.eval_num_clips * config.data.eval_num_crops
    summary["eval"] = eval_setting(config)
    if jax.process_index() == 0:
        plot_confusion(
            np.asarray(summary["confusion"]),
            info.class_names,
            os.path.join(outdir, "confusion.png"),
            title=f"{model.__class__.__name__}",
        )
    return summary


def evaluate_checkpoint(
    config: ml_collections.ConfigDict, path: str, outdir: str, *, what: str = "model", **extra
) -> dict[str, Any]:
    """Loads a model directory, evaluates it and writes ``<outdir>/eval.json``.

    Args:
      config: the run's config (data, eval, dtype, mesh sections).
      path: a model directory (from a stage or tools/convert_checkpoint.py).
      outdir: where ``eval.json`` and ``confusion.png`` go.
      what: how error messages name the model (e.g. ``"teacher 'cnn'"``).
      **extra: fields added to the summary (e.g. ``stage``).
    """
    storage.makedirs(outdir)
    from vkd_jax import checkpoint, stages
    from vkd_jax.data import pipeline  # TensorFlow: only when evaluating on a dataset.

    info = pipeline.dataset_info(config.data)
    module, variables, meta = checkpoint.load_model(
        path, num_classes=info.num_classes, dtype=stages.compute_dtype(config), what=what
    )
    summary = evaluate_model(
        config, module, variables, info, outdir, mesh=sharding.make_mesh(config.mesh.data)
    )
    summary.update(model=f"{meta['name']}/{meta['variant']}", checkpoint=path, **extra)
    write_eval(outdir, summary)
    return summary


def write_eval(outdir: str, summary: Mapping[str, Any]) -> None:
    if jax.process_index() == 0:
        storage.write_json(os.path.join(outdir, EVAL_FILE), summary, indent=2)
