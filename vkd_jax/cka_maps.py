"""CKA maps over models: running them on batches of video, drawing and storing them.

The maths (kernels, HSIC, streaming minibatch CKA, the block-structure score) is
:mod:`vkd_jax.cka`. Here: :func:`cka_map` / :func:`cka_self_map` of models' feature
functions over batches, figures (:func:`plot_cka_maps`, :func:`plot_cka_grid`) and
JSON (:func:`save_cka_json`, :func:`load_cka_json`), and the maps of a finished
experiment's models (``mode=cka``, end of ``experiment``):

Self maps of each teacher and student (block structure = redundant layers, as
read in the ensemble-distillation study's Fig. 1) and cross maps of each
student against each teacher, computed with the streaming unbiased minibatch
CKA of :mod:`vkd_jax.cka` on the eval split (first temporal view of each video).
Writes ``<workdir>/cka/self_maps.png``, ``cross_maps.png`` and ``cka.json``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from vkd_jax import _deps, checkpoint, cka, sharding, storage
from vkd_jax.data import pipeline

# ------------------------------------------------------------------------------------ maps

_LAYER_GROUPS = (
    re.compile(r"^stem$"),
    re.compile(r"^stage\d+$"),
    re.compile(r"^block\d+$"),
    re.compile(r"^pre_logits$"),
)


def default_layers(features: Mapping[str, Any]) -> list[str]:
    """Layers of a model's features dict for a CKA map: stem, stage* or block*, pre_logits.

    Transformers return ``block<i>`` and ``stage<k>`` (an alias of the last block
    of each stage); their maps use the blocks only.

    Args:
      features: the features dict a model returns (docs/design.md, "Contracts").

    Returns:
      The matching keys in network order (stages and blocks in numeric order).
    """

    def number(key: str) -> int:
        digits = re.findall(r"\d+", key)
        return int(digits[0]) if digits else 0

    layers = []
    has_blocks = any(_LAYER_GROUPS[2].match(k) for k in features)
    for pattern in _LAYER_GROUPS:
        if has_blocks and pattern is _LAYER_GROUPS[1]:
            continue  # Transformers' stage<k> are aliases of block outputs: list each layer once.
        layers += sorted((k for k in features if pattern.match(k)), key=number)
    return layers


def _run_map(
    apply_a: Callable[[jax.Array], Mapping[str, jax.Array]],
    apply_b: Callable[[jax.Array], Mapping[str, jax.Array]] | None,
    batches: Iterable[Mapping[str, Any]],
    layers_a: Sequence[str] | None,
    layers_b: Sequence[str] | None,
    kernel: str,
    threshold: float,
    unbiased: bool,
    num_examples: int | None,
) -> tuple[np.ndarray, list[str], list[str]]:
    if kernel not in cka.KERNELS:
        raise ValueError(f"Unknown CKA kernel {kernel!r}; expected one of {cka.KERNELS}.")
    state, seen = None, 0
    for batch in batches:
        if num_examples is not None and seen >= num_examples:
            break
        video = batch["video"]
        seen += video.shape[0]
        fa = apply_a(video)
        layers_a = list(default_layers(fa) if layers_a is None else layers_a)
        if apply_b is None:
            fb_list, layers_b = None, layers_a
        else:
            fb = apply_b(video)
            layers_b = list(default_layers(fb) if layers_b is None else layers_b)
            fb_list = [fb[k] for k in layers_b]
        if state is None:
            state = cka.minibatch_cka_init(len(layers_a), len(layers_b))
        state = cka.minibatch_cka_update(
            state,
            [fa[k] for k in layers_a],
            fb_list,
            kernel=kernel,
            threshold=threshold,
            unbiased=unbiased,
            mask=batch.get("mask"),
        )
    if state is None:
        raise ValueError("cka_map got no batches.")
    # The only device-to-host transfer: the finished (La, Lb) map.
    return np.asarray(cka.minibatch_cka_result(state)), layers_a, layers_b


def cka_map(
    apply_a: Callable[[jax.Array], Mapping[str, jax.Array]],
    apply_b: Callable[[jax.Array], Mapping[str, jax.Array]],
    batches: Iterable[Mapping[str, Any]],
    layers_a: Sequence[str] | None = None,
    layers_b: Sequence[str] | None = None,
    *,
    kernel: str = "linear",
    threshold: float = 1.0,
    unbiased: bool = True,
    num_examples: int | None = None,
) -> np.ndarray:
    """Layer-by-layer minibatch CKA map between two models (Nguyen et al. 2021, Fig. 1).

    Args:
      apply_a: ``video -> features dict`` of model a (e.g. a jitted
        ``lambda v: model.apply(variables, v, train=False)[1]``); features stay on device.
      apply_b: the same for model b.
      batches: iterable of dicts with "video" (B, T, H, W, C) and optionally "mask" (B,); entries
        with mask 0 (padding of the last batch) drop out of the estimate exactly.
      layers_a: feature keys of model a (rows); None = default_layers of its features.
      layers_b: feature keys of model b (columns); None = default_layers.
      kernel: "linear" or "rbf".
      threshold: RBF bandwidth as a fraction of the median distance.
      unbiased: minibatch ``HSIC_1`` (the published estimator) or the biased ``HSIC_0``.
      num_examples: stop once this many examples (padding included) were read; None = all.

    Returns:
      (La, Lb) float array of CKA values.
    """
    return _run_map(
        apply_a, apply_b, batches, layers_a, layers_b, kernel, threshold, unbiased, num_examples
    )[0]


def cka_self_map(
    apply: Callable[[jax.Array], Mapping[str, jax.Array]],
    batches: Iterable[Mapping[str, Any]],
    layers: Sequence[str] | None = None,
    *,
    kernel: str = "linear",
    threshold: float = 1.0,
    unbiased: bool = True,
    num_examples: int | None = None,
) -> np.ndarray:
    """CKA map of a model's layers against themselves (block structure = redundant layers).

    Args and returns as in cka_map with model b = model a; the forward pass and the Grams are
    computed once per minibatch.
    """
    return _run_map(apply, None, batches, layers, None, kernel, threshold, unbiased, num_examples)[
        0
    ]


# --------------------------------------------------------------------------- plots and JSON


def plot_cka_maps(
    maps: Sequence[tuple[np.ndarray, Sequence[str], Sequence[str], str]],
    path: str | os.PathLike,
    *,
    cmap: str = "magma",
) -> None:
    """Writes CKA maps side by side as one PNG (as in Fig. 1 of the ensemble-distillation study).

    Args:
      maps: (map (La, Lb), row layer names (La), column layer names (Lb), title) per panel; the
        first layer is at the bottom left, as in Kornblith et al. and Nguyen et al.
      path: output PNG path.
      cmap: matplotlib colormap; the color scale is [0, 1] on every panel.
    """
    plot_cka_grid([maps], path, cmap=cmap)


def plot_cka_grid(
    grid: Sequence[Sequence[tuple[np.ndarray, Sequence[str], Sequence[str], str]]],
    path: str | os.PathLike,
    *,
    cmap: str = "magma",
) -> None:
    """Writes rows of CKA map panels as one PNG (one row per ensemble, say).

    Args:
      grid: rows of panels, each panel as in :func:`plot_cka_maps`; rows may differ in length.
      path: output PNG path.
      cmap: matplotlib colormap; the color scale is [0, 1] on every panel.
    """
    with _deps.extra("train", __name__):  # Figures need the train extra.
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

    if not grid or not all(grid):
        raise ValueError("plot_cka_maps needs at least one map in every row.")
    cols = max(len(r) for r in grid)
    fig, axes = plt.subplots(
        len(grid),
        cols,
        figsize=(4.4 * cols + 0.8, 4.6 * len(grid)),
        squeeze=False,
        layout="constrained",
    )
    image = None
    for ax_row, maps in zip(axes, grid):
        for ax in ax_row[len(maps) :]:
            ax.axis("off")
        for ax, (values, rows, cols_, title) in zip(ax_row, maps):
            values = np.asarray(values, dtype=np.float64)
            if values.shape != (len(rows), len(cols_)):
                raise ValueError(
                    f"Map {title!r} is {values.shape}; labels give {len(rows)}x{len(cols_)}."
                )
            image = ax.imshow(values, origin="lower", vmin=0.0, vmax=1.0, cmap=cmap, aspect="auto")
            ax.set_title(title, fontsize=9 if len(title) > 40 else 11)
            ax.set_xticks(range(len(cols_)), cols_, rotation=90, fontsize=7)
            ax.set_yticks(range(len(rows)), rows, fontsize=7)
    fig.colorbar(image, ax=axes.ravel().tolist(), label="CKA", shrink=0.9)
    storage.savefig(fig, path, dpi=100 if len(grid) > 2 else 120)
    plt.close(fig)


def save_cka_json(
    path: str | os.PathLike,
    maps: Mapping[str, tuple[np.ndarray, Sequence[str], Sequence[str]]],
) -> None:
    """Writes CKA maps as JSON: ``{name: {"rows": [...], "cols": [...], "cka": [[...]]}}``.

    Args:
      path: output JSON path.
      maps: name -> (map (La, Lb), row layer names, column layer names).
    """
    out = {}
    for name, (values, rows, cols) in maps.items():
        values = np.asarray(values, dtype=np.float64)
        out[name] = {"rows": list(rows), "cols": list(cols), "cka": values.tolist()}
    storage.write_json(path, out, indent=1)


def load_cka_json(path: str | os.PathLike) -> dict[str, tuple[np.ndarray, list[str], list[str]]]:
    """Reads maps written by save_cka_json: name -> (map, row names, column names)."""
    data = storage.read_json(path)
    return {k: (np.asarray(v["cka"]), v["rows"], v["cols"]) for k, v in data.items()}


# ------------------------------------------------------------------- experiment maps

# Stage directories of an experiment workdir, in the order the maps are shown.
_ORDER = ("teacher_vit", "teacher_cnn", "student_scratch", "student_distill")


def find_models(workdir: str) -> dict[str, str]:
    """Stage name -> model directory for every finished stage under ``workdir``."""
    found = {}
    for name in storage.listdir(workdir):
        path = os.path.join(workdir, name, "model")
        if storage.isfile(os.path.join(path, checkpoint.METADATA_FILE)):
            found[name] = path
    return dict(sorted(found.items(), key=lambda kv: (_rank(kv[0]), kv[0])))


def _rank(name: str) -> int:
    return _ORDER.index(name) if name in _ORDER else len(_ORDER)


class JointMaps(dict):
    """Model name -> ``(self map, layers, layers)``, plus the cross maps between models.

    All maps are blocks of one joint self map of every model's layers, so a cross map
    costs nothing more.
    """

    def __init__(self, values, layers: dict[str, list[str]]):
        start, self._blocks = 0, {}
        for name, names in layers.items():
            self._blocks[name] = slice(start, start + len(names))
            start += len(names)
        self._values, self._layers = values, layers
        super().__init__({n: self.cross(n, n) for n in layers})

    def cross(self, a: str, b: str):
        """``(map of a's layers (rows) against b's (columns), a's layers, b's layers)``."""
        return (
            self._values[self._blocks[a], self._blocks[b]],
            self._layers[a],
            self._layers[b],
        )


def model_self_maps(config: ml_collections.ConfigDict, paths: dict[str, str]) -> JointMaps:
    """Layer-by-layer CKA maps of the models in ``paths`` (name -> model directory).

    One pass over ``config.data.eval_split`` (first temporal view of each video, at most
    ``config.cka.num_examples``): a self map of all models' layers together holds every
    self and cross map as a block (the streaming estimate of each pair does not depend on
    the others), and each model's forward runs once per batch.
    """
    info = pipeline.dataset_info(config.data)
    mesh = sharding.make_mesh(config.mesh.data)
    modules, all_variables = {}, {}
    for name, path in paths.items():
        modules[name], all_variables[name], _ = checkpoint.load_model(
            path, num_classes=info.num_classes, what=name
        )

    @jax.jit
    def features(all_variables, video):
        """Every model's features dict of one batch, keyed by model name."""
        return {
            name: module.apply(all_variables[name], video, train=False)[1]
            for name, module in modules.items()
        }

    def joint_features(video):
        """The same, flattened to "<model>/<layer>" keys for one joint map."""
        out = features(all_variables, video)
        return {f"{name}/{k}": v for name, feats in out.items() for k, v in feats.items()}

    def batches():
        local = sharding.local_batch_size(config.cka.batch_size)
        for b in pipeline.eval_dataset(config.data, batch_size=local).as_numpy_iterator():
            # First view of each video: CKA compares representations of the same inputs.
            yield sharding.to_global({"video": b["video"][:, 0], "mask": b["mask"]}, mesh)

    t, c = config.data.num_frames, config.data.crop_size
    sample = jax.ShapeDtypeStruct((2, t, c, c, 3), jax.numpy.float32)
    shapes = jax.eval_shape(features, all_variables, sample)
    layers = {name: default_layers(shapes[name]) for name in modules}
    joint = [f"{name}/{layer}" for name in modules for layer in layers[name]]
    logging.info(
        "CKA maps of %s: %d layers, one pass over the eval split", list(modules), len(joint)
    )
    values = cka_self_map(
        joint_features,
        batches(),
        joint,
        kernel=config.cka.kernel,
        threshold=config.cka.rbf_threshold,
        unbiased=config.cka.unbiased,
        num_examples=config.cka.num_examples,
    )
    return JointMaps(values, layers)


def experiment_maps(
    config: ml_collections.ConfigDict, workdir: str, teacher_specs: dict[str, Any] | None
) -> dict[str, Any]:
    """Computes and writes the maps; returns ``{"self", "cross", "block_scores", "files"}``.

    Args:
      config: the experiment config (data, ``cka`` section).
      workdir: the experiment workdir holding finished stages.
      teacher_specs: teachers given by checkpoint (not trained in the workdir), or None.
    """
    paths = find_models(workdir)
    for name, spec in (teacher_specs or {}).items():
        paths.setdefault(f"teacher_{name}", spec.checkpoint)
    if not paths:
        raise FileNotFoundError(f"No finished model under {workdir!r} to compute CKA maps of")
    outdir = os.path.join(workdir, "cka")
    storage.makedirs(outdir)
    self_maps = model_self_maps(config, paths)
    students = [n for n in self_maps if n.startswith("student")]
    teachers = [n for n in self_maps if n.startswith("teacher")]
    cross_maps = {f"{s} vs {t}": self_maps.cross(s, t) for s in students for t in teachers}
    files = []
    if jax.process_index() == 0:
        files.append(os.path.join(outdir, "self_maps.png"))
        plot_cka_maps([(v, r, c, n) for n, (v, r, c) in self_maps.items()], files[-1])
        if cross_maps:
            files.append(os.path.join(outdir, "cross_maps.png"))
            plot_cka_maps([(v, r, c, n) for n, (v, r, c) in cross_maps.items()], files[-1])
        files.append(os.path.join(outdir, "cka.json"))
        save_cka_json(
            files[-1], {**{f"{n} (self)": m for n, m in self_maps.items()}, **cross_maps}
        )
    return {
        "self": {n: v.tolist() for n, (v, _, _) in self_maps.items()},
        # Block structure of each model (vkd_jax.cka.block_structure_score, defaults).
        "block_scores": {n: cka.block_structure_score(v) for n, (v, _, _) in self_maps.items()},
        "cross": {n: v.tolist() for n, (v, _, _) in cross_maps.items()},
        "files": files,
    }
