"""CKA maps of an experiment workdir (vkd_jax/cka_maps.py): one joint pass over the eval split
gives the same self and cross maps as computing each map on its own."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import init_variables, tiny_config
from test_cka import np_gram_linear, np_hsic1

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
        variables = init_variables(model, seed, np.zeros((1, t, s, s, 3)))
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
        alone = cka_maps.cka_self_map(apply(stage), batches(), **kw)
        np.testing.assert_allclose(result["self"][stage], alone, atol=1e-5)
        # Every layer against itself: CKA 1 (unbiased estimator, up to float error).
        assert np.allclose(np.diag(alone), 1.0, atol=1e-5)
        assert result["block_scores"][stage] == cka.block_structure_score(result["self"][stage])
    alone = cka_maps.cka_map(apply("student_scratch"), apply("teacher_vit"), batches(), **kw)
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


# ------------------------------------------------------------- maps of toy models, plots


def test_default_layers_order():
    feats = {
        "pre_logits": 0,
        "stage10": 0,
        "stage2": 0,
        "logits_extra": 0,
        "stem": 0,
        "block1": 0,
        "stage1": 0,
    }
    assert cka_maps.default_layers(feats) == ["stem", "block1", "pre_logits"]
    del feats["block1"]
    assert cka_maps.default_layers(feats) == ["stem", "stage1", "stage2", "stage10", "pre_logits"]


def _toy_model(seed):
    w1, w2 = np.random.default_rng(seed).normal(size=(2, 3, 3)).astype(np.float32)

    @jax.jit
    def apply(video):
        stem = jnp.tanh(video @ w1)  # (B, T, H, W, 3)
        stage1 = jnp.tanh(stem @ w2)
        return {
            "stem": stem,
            "stage1": stage1,
            "pre_logits": stage1.mean(axis=(1, 2, 3)),
            "ignored": video,
        }

    return apply


def test_cka_map_on_toy_models():
    rng = np.random.default_rng(9)
    videos = rng.normal(size=(3, 16, 2, 4, 4, 3)).astype(np.float32)
    mask = np.ones((3, 16), bool)
    mask[2, 10:] = False  # A padded last batch.
    batches = [{"video": v, "mask": m} for v, m in zip(videos, mask)]
    apply_a, apply_b = _toy_model(0), _toy_model(1)

    got = cka_maps.cka_map(apply_a, apply_b, batches, kernel="linear", unbiased=True)
    layers = ["stem", "stage1", "pre_logits"]
    assert got.shape == (3, 3)
    # Reference: Eq. 2-3 of Nguyen et al. with NumPy HSIC_1 on the valid examples of each batch.
    sxy, sxx, syy = np.zeros((3, 3)), np.zeros(3), np.zeros(3)
    for batch in batches:
        keep = batch["mask"]
        fa, fb = apply_a(batch["video"]), apply_b(batch["video"])
        ka = [np_gram_linear(np.asarray(fa[k], np.float64)[keep]) for k in layers]
        kb = [np_gram_linear(np.asarray(fb[k], np.float64)[keep]) for k in layers]
        sxy += [[np_hsic1(k, lm) for lm in kb] for k in ka]
        sxx += [np_hsic1(k, k) for k in ka]
        syy += [np_hsic1(lm, lm) for lm in kb]
    np.testing.assert_allclose(got, sxy / np.sqrt(sxx[:, None] * syy[None, :]), atol=2e-4)

    own = cka_maps.cka_self_map(apply_a, batches, ["stage1", "stem"], kernel="rbf")
    assert own.shape == (2, 2)
    np.testing.assert_allclose(np.diag(own), 1.0, atol=1e-5)
    np.testing.assert_allclose(own, own.T, atol=1e-6)
    # num_examples stops early: only the first batch is read.
    first = cka_maps.cka_map(apply_a, apply_b, batches, layers, layers, num_examples=16)
    only = cka_maps.cka_map(apply_a, apply_b, batches[:1], layers, layers)
    np.testing.assert_allclose(first, only, atol=1e-6)


def test_plot_and_json(tmp_path):
    rng = np.random.default_rng(10)
    names = ["stem", "stage1", "stage2", "pre_logits"]
    maps = {
        "teacher_r21d": (rng.uniform(size=(4, 4)), names, names),
        "student": (rng.uniform(size=(4, 3)), names, names[:3]),
    }
    png = tmp_path / "cka.png"
    cka_maps.plot_cka_maps([(v, r, c, t) for t, (v, r, c) in maps.items()], png)
    assert png.stat().st_size > 1000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    path = tmp_path / "cka.json"
    cka_maps.save_cka_json(path, maps)
    data = json.loads(path.read_text())
    assert data["student"]["cols"] == names[:3]
    back = cka_maps.load_cka_json(path)
    np.testing.assert_allclose(back["teacher_r21d"][0], maps["teacher_r21d"][0])
    with pytest.raises(ValueError, match="labels"):
        cka_maps.plot_cka_maps([(np.zeros((2, 2)), names, names, "bad")], tmp_path / "bad.png")
