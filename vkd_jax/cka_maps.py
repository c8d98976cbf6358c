"""Layer-by-layer CKA maps of a finished experiment's models (``mode=cka``, end of ``experiment``).

Self maps of each teacher and student (block structure = redundant layers, as
read in the ensemble-distillation study's Fig. 1) and cross maps of each
student against each teacher, computed with the streaming unbiased minibatch
CKA of :mod:`vkd_jax.cka` on the eval split (first temporal view of each video).
Writes ``<workdir>/cka/self_maps.png``, ``cross_maps.png`` and ``cka.json``.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
from absl import logging

from vkd_jax import checkpoint, cka, sharding, storage
from vkd_jax.data import pipeline

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
    layers = {name: cka.default_layers(shapes[name]) for name in modules}
    joint = [f"{name}/{layer}" for name in modules for layer in layers[name]]
    logging.info(
        "CKA maps of %s: %d layers, one pass over the eval split", list(modules), len(joint)
    )
    values = cka.cka_self_map(
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
        cka.plot_cka_maps([(v, r, c, n) for n, (v, r, c) in self_maps.items()], files[-1])
        if cross_maps:
            files.append(os.path.join(outdir, "cross_maps.png"))
            cka.plot_cka_maps([(v, r, c, n) for n, (v, r, c) in cross_maps.items()], files[-1])
        files.append(os.path.join(outdir, "cka.json"))
        cka.save_cka_json(
            files[-1], {**{f"{n} (self)": m for n, m in self_maps.items()}, **cross_maps}
        )
    return {
        "self": {n: v.tolist() for n, (v, _, _) in self_maps.items()},
        # Block structure of each model (vkd_jax.cka.block_structure_score, defaults).
        "block_scores": {n: cka.block_structure_score(v) for n, (v, _, _) in self_maps.items()},
        "cross": {n: v.tolist() for n, (v, _, _) in cross_maps.items()},
        "files": files,
    }
