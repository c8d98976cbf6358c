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

from vkd_jax import checkpoint, cka, sharding
from vkd_jax.data import pipeline

# Stage directories of an experiment workdir, in the order the maps are shown.
_ORDER = ("teacher_vit", "teacher_cnn", "student_scratch", "student_distill")


def find_models(workdir: str) -> dict[str, str]:
    """Stage name -> model directory for every finished stage under ``workdir``."""
    found = {}
    for name in sorted(os.listdir(workdir)):
        path = os.path.join(workdir, name, "model")
        if os.path.isfile(os.path.join(path, checkpoint.METADATA_FILE)):
            found[name] = path
    return dict(sorted(found.items(), key=lambda kv: (_rank(kv[0]), kv[0])))


def _rank(name: str) -> int:
    return _ORDER.index(name) if name in _ORDER else len(_ORDER)


def experiment_maps(
    config: ml_collections.ConfigDict, workdir: str, teacher_specs: dict[str, Any] | None
) -> dict[str, Any]:
    """Computes and writes the maps; returns ``{"self": {...}, "cross": {...}, "files": [...]}``.

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
    info = pipeline.dataset_info(config.data)
    mesh = sharding.make_mesh(config.mesh.data)
    models = {}
    for name, path in paths.items():
        module, variables, _ = checkpoint.load_model(path, num_classes=info.num_classes, what=name)
        models[name] = jax.jit(lambda v, x, m=module: m.apply(v, x, train=False)[1]), variables

    def batches():
        local = sharding.local_batch_size(config.cka.batch_size)
        for b in pipeline.eval_dataset(config.data, batch_size=local).as_numpy_iterator():
            # First view of each video: CKA compares representations of the same inputs.
            yield sharding.to_global({"video": b["video"][:, 0], "mask": b["mask"]}, mesh)

    def apply(name):
        fn, variables = models[name]
        return lambda video: fn(variables, video)

    kw = dict(
        kernel=config.cka.kernel,
        threshold=config.cka.rbf_threshold,
        unbiased=config.cka.unbiased,
        num_examples=config.cka.num_examples,
    )
    outdir = os.path.join(workdir, "cka")
    os.makedirs(outdir, exist_ok=True)
    t, c = config.data.num_frames, config.data.crop_size
    sample = jax.ShapeDtypeStruct((2, t, c, c, 3), jax.numpy.float32)
    layers = {n: cka.default_layers(jax.eval_shape(apply(n), sample)) for n in models}
    self_maps, cross_maps = {}, {}
    for name in models:
        logging.info("CKA self map of %s", name)
        values = cka.cka_self_map(apply(name), batches(), layers[name], **kw)
        self_maps[name] = (values, layers[name], layers[name])
    students = [n for n in models if n.startswith("student")]
    teachers = [n for n in models if n.startswith("teacher")]
    for s in students:
        for t in teachers:
            logging.info("CKA cross map %s vs %s", s, t)
            values = cka.cka_map(apply(s), apply(t), batches(), layers[s], layers[t], **kw)
            cross_maps[f"{s} vs {t}"] = (values, layers[s], layers[t])
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
        "cross": {n: v.tolist() for n, (v, _, _) in cross_maps.items()},
        "files": files,
    }
