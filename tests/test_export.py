"""Export (SavedModel, LiteRT float32/int8, ONNX) with parity; vkd_jax.predict on videos."""

from __future__ import annotations

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import init_variables, tiny_config
from video_fixtures import pattern_frames, write_corrupt, write_video

from vkd_jax import export, models
from vkd_jax.models import layers

pytest.importorskip("tf2onnx", reason="export extra not installed (pip install '.[export]')")
pytest.importorskip("onnxruntime", reason="export extra not installed (pip install '.[export]')")
pytest.importorskip("ai_edge_litert", reason="export extra not installed (pip install '.[export]')")

CLIP = (4, 16, 16)


def test_every_format_matches_the_flax_model(trained):
    """The CLI's artifacts (the `trained` fixture: x3d/mini after 40 steps, so BatchNorm's
    statistics are not the initial ones), each reloaded on its own, against the Flax
    model on random pixels. One export serves this test and the CLI's: a full export of
    every format costs minutes on a small CPU."""
    from vkd_jax import checkpoint

    root, report, _ = trained
    out = root / "export"
    model, variables, _ = checkpoint.load_model(str(root / "train" / "model"))
    assert set(report["formats"]) == set(export.FORMATS)
    assert json.loads((out / export.EXPORT_FILE).read_text())["formats"] == report["formats"]
    assert not os.path.exists(str(out) + ".tmp")
    pixels = np.random.default_rng(1).uniform(0, 255, (4, *CLIP, 3)).astype(np.float32)
    prep = report["preprocessing"]
    mean, std = np.asarray(prep["mean"]), np.asarray(prep["std"])
    expected, _ = model.apply(variables, (pixels / 255.0 - mean) / std, train=False)
    expected = np.asarray(expected)
    for fmt in export.FORMATS:  # Reload each artifact independently of export()'s checks.
        run = export.load_runner(str(out / export.FILES[fmt]))
        got = export.run_batched(run, pixels)
        tol = 1e-4 if fmt != "tflite_int8" else 0.05
        np.testing.assert_allclose(got, expected, atol=tol, err_msg=fmt)
    # The SavedModel also serves uint8 frames and names the classes.
    import tensorflow as tf

    loaded = tf.saved_model.load(str(out / "saved_model"))
    frames = np.round(pixels).astype(np.uint8)
    res = loaded.signatures["serving_uint8"](frames=tf.constant(frames))
    ref, _ = model.apply(variables, (frames / 255.0 - mean) / std, train=False)
    np.testing.assert_allclose(res["logits"].numpy(), ref, atol=1e-4)
    np.testing.assert_allclose(res["probabilities"].numpy().sum(-1), 1.0, atol=1e-5)
    names = [n.decode() for n in res["class_names"].numpy()]
    assert names == prep["class_names"] and len(names) == expected.shape[-1]


# The families whose layers have a portable form for LiteRT (GELU, 3D max pool, MViT's
# relative-position bias, ShuffleNet's depthwise convs); X3D is tested above.
@pytest.mark.parametrize("name,variant", [("mvit", "tiny"), ("shufflenet3d", "tiny")])
def test_zoo_families_export_to_litert_and_onnx(tmp_path, name, variant):
    clip = CLIP
    model = models.get_model(name, variant=variant, num_classes=5, input_size=clip)
    variables = init_variables(model, 0, jnp.zeros((1, *clip, 3)))
    meta = {
        "name": name,
        "variant": variant,
        "num_classes": 5,
        "num_frames": clip[0],
        "crop_size": clip[1],
    }
    report = export.export(model, variables, meta, str(tmp_path / "e"), formats=("tflite", "onnx"))
    for fmt in ("tflite", "onnx"):
        assert report["formats"][fmt]["max_abs_diff"] <= 1e-4, fmt
    assert not (tmp_path / "e" / "saved_model").exists()


def test_portable_layers_compute_the_same_function():
    x = jax.random.normal(jax.random.key(0), (2, 5, 6, 7, 3)) * 4
    exact = layers.gelu(x)
    with layers.portable_convolutions():
        portable = layers.gelu(x)
        pooled = layers.max_pool3d(x, (3, 3, 3), (2, 2, 2), (1, 1, 1))
    np.testing.assert_allclose(portable, exact, atol=2e-6)
    np.testing.assert_allclose(pooled, nn.max_pool(x, (3, 3, 3), (2, 2, 2), padding=[(1, 1)] * 3))
    # A depthwise strided conv: portable (shift-and-multiply) equals XLA's grouped conv.
    k = jax.random.normal(jax.random.key(1), (3, 3, 3, 1, 3))
    native = layers.conv3d_apply(x, k, (1, 2, 2), (1, 1, 1), 3, cpu_friendly=False)
    with layers.portable_convolutions():
        np.testing.assert_allclose(
            layers.conv3d_apply(x, k, (1, 2, 2), (1, 1, 1), 3), native, atol=1e-5
        )


class _Grouped(nn.Module):
    """A grouped (not depthwise) 3D convolution: LiteRT has no such op."""

    @nn.compact
    def __call__(self, x, train=False):
        x = nn.Conv(4, (1, 3, 3), feature_group_count=2, name="grouped")(
            jnp.concatenate([x, x[..., :1]], -1)
        )
        return nn.Dense(3, name="head")(x.mean((1, 2, 3))), {}


def _custom(model, variant):
    """Variables and metadata of a 3-class custom module on CLIP."""
    variables = model.init(jax.random.key(0), jnp.zeros((1, *CLIP, 3)))
    meta = {
        "name": "custom",
        "variant": variant,
        "num_classes": 3,
        "num_frames": CLIP[0],
        "crop_size": CLIP[1],
    }
    return variables, meta


def test_an_op_litert_cannot_express_is_named_with_its_layer(tmp_path):
    model = _Grouped()
    variables, meta = _custom(model, "grouped")
    with pytest.raises(export.ExportError, match=r"tf\.Conv3D.*grouped") as e:
        export.export(model, variables, meta, str(tmp_path / "e"), formats=("tflite",))
    assert "LiteRT" in str(e.value)
    assert not (tmp_path / "e").exists()  # Nothing half-written under the final name.


def test_converter_failure_names_ops_and_layers():
    message = (
        'loc(callsite("jit(fn)/X3D/blocks_1/se/fc1/dot_general"(callsite("a"("b.py":1:2)))))\n'
        "b.py:1:2: error: 'tfl.batch_matmul' op found invalid output rank\n"
        "<unknown>:0: note: see current operation\n"
    )
    assert export.converter_failure(message) == (
        "'tfl.batch_matmul' op found invalid output rank (layer X3D/blocks_1/se/fc1 (dot_general))"
    )


class _Linear(nn.Module):
    """The cheapest model to convert: a classifier on the clip's mean colour."""

    @nn.compact
    def __call__(self, x, train=False):
        return nn.Dense(3, name="head")(x.mean((1, 2, 3))), {}


def test_mismatched_artifact_fails_the_check(tmp_path, monkeypatch):
    model = _Linear()
    variables, meta = _custom(model, "linear")
    real = export.tflite_runner

    def off_by_one(path, **kw):
        run = real(path, **kw)
        wrapped = lambda pixels: run(pixels) + 1.0
        wrapped.batch_size = run.batch_size
        return wrapped

    monkeypatch.setattr(export, "tflite_runner", off_by_one)
    with pytest.raises(export.ExportError, match=r"tflite export .* differs .* by 1"):
        export.export(model, variables, meta, str(tmp_path / "e"), formats=("tflite",))


# ------------------------------------------------------------------ CLI: export, predict


@pytest.fixture(scope="module")
def trained(tiny_data_dir, tmp_path_factory):
    """x3d/mini trained on the tiny data, then exported by mode=export (CLI path)."""
    from vkd_jax import modes

    root = tmp_path_factory.mktemp("trained")
    c = tiny_config(tiny_data_dir)
    c.mode = "train"
    c.train.num_steps = 40
    c.train.checkpoint_every = 40
    modes.run(c, str(root / "train"))
    c.mode = "export"
    c.export.model = str(root / "train" / "model")
    report = modes.run(c, str(root))
    return root, report, c


def test_export_mode_reports_top1_of_every_artifact(trained):
    root, report, c = trained
    top1 = report["eval"]["top1"]
    assert report["eval"]["videos"] > 0
    assert set(top1) == {"flax", *export.FORMATS}
    for fmt in ("saved_model", "tflite", "onnx"):
        assert top1[fmt] == pytest.approx(top1["flax"], abs=1e-9), fmt
    # The stated tolerance of dynamic-range int8 (docs/deploy.md): within 5 points.
    assert abs(top1["tflite_int8"] - top1["tflite"]) <= 0.05
    assert report["preprocessing"]["class_names"][0]  # From the dataset's metadata.
    on_disk = json.loads((root / "export" / export.EXPORT_FILE).read_text())
    assert on_disk["eval"] == report["eval"]


def _videos(tmp_path):
    good = [str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4")]
    write_video(good[0], pattern_frames(20, 24, 32, 0))
    write_video(good[1], pattern_frames(6, 20, 20, 1))  # Shorter than a clip: loops.
    bad = str(tmp_path / "corrupt.mp4")
    write_corrupt(bad)
    return good, bad


def test_predict_labels_videos_with_every_kind_of_model(trained, tmp_path, capsys):
    from vkd_jax import predict

    root, report, _ = trained
    good, bad = _videos(tmp_path)
    sources = [
        root / "train" / "model",
        root / "export",
        *(root / "export" / export.FILES[f] for f in export.FORMATS),
    ]
    probs = {}
    for src in sources:
        predictor = predict.Predictor(str(src))
        probs[str(src)] = [predictor.probabilities(v) for v in good]
        top = predictor.top(good[0], 5)
        assert len(top) == 5 and top[0][0] in report["preprocessing"]["class_names"]
        assert sum(p for _, p in predictor.top(good[0], 99)) == pytest.approx(1.0, abs=1e-5)
    reference = probs[str(root / "train" / "model")]
    for src, p in probs.items():
        atol = 0.02 if src.endswith("int8.tflite") else 1e-5
        np.testing.assert_allclose(p, reference, atol=atol, err_msg=src)

    code = predict.main(
        ["--model", str(root / "export"), "--format", "onnx", "--json", good[0], bad, good[1]]
    )
    out, err = capsys.readouterr()
    assert code == 1
    assert f"vkd_jax.predict: error: {bad}:" in err and len(err.strip().splitlines()) == 1
    result = json.loads(out)
    files = [r["file"] for r in result["predictions"]]
    assert files == [good[0], bad, good[1]]
    assert "error" in result["predictions"][1]
    assert len(result["predictions"][2]["top"]) == 5


def test_predict_names_a_model_it_cannot_use(tmp_path, capsys):
    from vkd_jax import predict

    (tmp_path / "empty").mkdir()
    assert predict.main(["--model", str(tmp_path / "empty"), "x.mp4"]) == 2
    assert "not a vkd_jax model directory" in capsys.readouterr().err


def test_efficiency_table_reports_the_students_reductions():
    from vkd_jax import experiment

    def summary(model, params, gmacs, ms):
        return {"model": model, "params": params, "gmacs": gmacs, "latency": {"median_ms": ms}}

    eff = experiment.efficiency(
        summary("x3d/s", 3_794_274, 1.96, 30.0),
        {
            "cnn": summary("x3d/m", 3_794_274, 4.73, 60.0),
            "vit": summary("mvit/v2_s", 34_537_744, 64.22, 600.0),
        },
        batch_size=1,
    )
    vit = eff["teachers"]["vit"]["reduction_pct"]
    assert vit["params"] == pytest.approx(100 * (1 - 3_794_274 / 34_537_744))  # ~89%
    assert vit["gmacs"] == pytest.approx(100 * (1 - 1.96 / 64.22))  # ~97%
    assert vit["latency_ms"] == pytest.approx(95.0)
    assert eff["teachers"]["cnn"]["reduction_pct"]["params"] == pytest.approx(0.0)
    table = "\n".join(experiment.efficiency_markdown(eff))
    assert (
        "| Teacher `vit` | mvit/v2_s | 34,537,744 | 64.2200 | 600.00 | 89% / 97% / 95% |" in table
    )
