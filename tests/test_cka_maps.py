"""CKA maps of an experiment workdir (vkd_jax/cka_maps.py): one joint pass over the eval split
gives the same self and cross maps as computing each map on its own."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
from conftest import tiny_config

from vkd_jax import checkpoint, cka, cka_maps, sharding
from vkd_jax.data import pipeline
from vkd_jax.models import get_model

# Stage directory -> (family, variant): a transformer teacher and a CNN student.
MODELS = {
    "teacher_vit": ("mvit", "tiny"),
    "student_scratch": ("x3d", "tiny"),
}


@pytest.fixture(scope="module")
def workdir(tiny_data_dir, tmp_path_factory):
    config = tiny_config(tiny_data_dir)
    info = pipeline.dataset_info(config.data)
    t, s = config.data.num_frames, config.data.crop_size
    root = tmp_path_factory.mktemp("experiment")
    for seed, (stage, (name, variant)) in enumerate(MODELS.items()):
        model = get_model(name, variant=variant, num_classes=info.num_classes, input_size=(t, s, s))
        variables = model.init(jax.random.key(seed), np.zeros((1, t, s, s, 3)), train=False)
        metadata = {"name": name, "variant": variant, "num_classes": info.num_classes}
        metadata.update(num_frames=t, crop_size=s)
        checkpoint.save_model(str(root / stage / "model"), variables, metadata)
    (root / "not_a_stage").mkdir()  # Ignored: no model directory.
    return config, str(root)


def test_joint_pass_equals_separate_maps(workdir):
    config, root = workdir
    result = cka_maps.experiment_maps(config, root, None)
    assert list(result["self"]) == list(MODELS)  # Shown in _ORDER: teachers, then students.
    assert list(result["cross"]) == ["student_scratch vs teacher_vit"]
    for name in ("self_maps.png", "cross_maps.png", "cka.json"):
        assert os.path.getsize(os.path.join(root, "cka", name)) > 0

    # Each map on its own, with the same estimator on the same batches.
    mesh = sharding.make_mesh(config.mesh.data)
    models = {
        stage: checkpoint.load_model(os.path.join(root, stage, "model"))[:2] for stage in MODELS
    }

    def apply(stage):
        module, variables = models[stage]
        return jax.jit(lambda x: module.apply(variables, x, train=False)[1])

    def batches():
        local = sharding.local_batch_size(config.cka.batch_size)
        for b in pipeline.eval_dataset(config.data, batch_size=local).as_numpy_iterator():
            yield sharding.to_global({"video": b["video"][:, 0], "mask": b["mask"]}, mesh)

    kw = dict(unbiased=True, num_examples=config.cka.num_examples)
    for stage in MODELS:
        alone = cka.cka_self_map(apply(stage), batches(), **kw)
        np.testing.assert_allclose(result["self"][stage], alone, atol=1e-5)
        # Every layer against itself: CKA 1 (unbiased estimator, up to float error).
        assert np.allclose(np.diag(alone), 1.0, atol=1e-5)
        assert result["block_scores"][stage] == cka.block_structure_score(result["self"][stage])
    alone = cka.cka_map(apply("student_scratch"), apply("teacher_vit"), batches(), **kw)
    got = np.asarray(result["cross"]["student_scratch vs teacher_vit"])
    assert got.shape == alone.shape
    np.testing.assert_allclose(got, alone, atol=1e-5)

    with open(os.path.join(root, "cka", "cka.json")) as f:
        saved = json.load(f)
    assert set(saved) == {
        "teacher_vit (self)",
        "student_scratch (self)",
        "student_scratch vs teacher_vit",
    }


def test_empty_workdir_is_refused(tiny_data_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="No finished model"):
        cka_maps.experiment_maps(tiny_config(tiny_data_dir), str(tmp_path), None)
