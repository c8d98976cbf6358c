"""Tests of vkd_jax.evaluation: MAC convention, multi-view accuracy, evaluate, plots."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vkd_jax import evaluation


class TinyVideoNet(nn.Module):
    """Conv3D -> global mean -> Dense; returns (logits, features) like the zoo."""

    num_classes: int = 5
    features: int = 8
    padding: str = "SAME"
    use_bias: bool = True

    @nn.compact
    def __call__(self, video, train: bool = False):
        x = nn.Conv(self.features, (3, 3, 3), padding=self.padding, use_bias=self.use_bias)(video)
        stage1 = x
        pooled = jnp.mean(x, axis=(1, 2, 3))
        logits = nn.Dense(self.num_classes, use_bias=self.use_bias)(pooled)
        return logits, {"stage1": stage1, "pre_logits": pooled}


def _init(model, shape=(1, 4, 8, 8, 3), seed=0):
    # Jitted: one compilation instead of one per op, which matters on a loaded CPU.
    init = jax.jit(lambda key, x: model.init(key, x, train=False))
    return init(jax.random.key(seed), jnp.zeros(shape, jnp.float32))


def _np_softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# ------------------------------------------------------------------------------- params/MACs


def test_count_params_by_hand():
    model = TinyVideoNet()
    variables = _init(model)
    # conv kernel 3*3*3*3*8 + bias 8, dense 8*5 + 5.
    assert evaluation.count_params(variables["params"]) == 648 + 8 + 40 + 5
    # Works on abstract shapes too (no allocation).
    abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4, 8, 8, 3)))
    assert evaluation.count_params(abstract["params"]) == 701


def test_count_macs_conv_and_dense_by_hand():
    model = TinyVideoNet()
    variables = _init(model)
    # SAME conv: every one of the 4*8*8*8 outputs does 3*3*3 taps * 3 input channels (fvcore
    # counts padded taps too); Dense: 8 * 5.
    expected = 4 * 8 * 8 * 8 * 27 * 3 + 8 * 5
    assert evaluation.count_macs(model, variables, (4, 8, 8)) == expected
    # Per clip: independent of the traced batch size.
    assert evaluation.count_macs(model, variables, (4, 8, 8), batch_size=3) == expected


def test_count_macs_grouped_strided_conv_and_attention_by_hand():
    class Block(nn.Module):
        @nn.compact
        def __call__(self, video, train: bool = False):
            # Strided grouped conv 3 -> 6 channels in 3 groups: out (2, 4, 4, 6), 3*3*3 taps,
            # 1 input channel per group.
            x = nn.Conv(6, (3, 3, 3), strides=(2, 2, 2), feature_group_count=3)(video)
            tokens = x.reshape(x.shape[0], -1, 6)  # (B, N=32, 6)
            q = nn.Dense(6, use_bias=False)(tokens)
            # Attention-like matmuls: (N x 6) @ (6 x N) then (N x N) @ (N x 6).
            attn = jax.nn.softmax(jnp.einsum("bnd,bmd->bnm", q, tokens), axis=-1)
            out = jnp.einsum("bnm,bmd->bnd", attn, tokens)
            return out.mean(axis=1), {}

    model = Block()
    variables = _init(model)
    n = 2 * 4 * 4
    expected = n * 6 * 27 * 1 + n * 6 * 6 + n * n * 6 + n * n * 6
    assert evaluation.count_macs(model, variables, (4, 8, 8)) == expected


def test_count_macs_ignores_features_the_logits_do_not_use():
    class WithSideFeature(nn.Module):
        @nn.compact
        def __call__(self, video, train: bool = False):
            pooled = video.mean(axis=(1, 2, 3))  # (B, 3)
            side = nn.Dense(100, name="side")(pooled)  # Only returned as a feature.
            return nn.Dense(4, name="head")(pooled), {"side": side}

    model = WithSideFeature()
    assert evaluation.count_macs(model, _init(model), (4, 8, 8)) == 3 * 4


def test_count_macs_fails_loudly_without_jax_dead_code_elimination(monkeypatch):
    # A future JAX without the private pass must not silently count unused ops.
    monkeypatch.setattr(evaluation, "_dce_jaxpr", None)
    class Head(nn.Module):
        @nn.compact
        def __call__(self, video, train: bool = False):
            return nn.Dense(4)(video.mean(axis=(1, 2, 3))), {}

    model = Head()
    with pytest.raises(RuntimeError, match="dce_jaxpr.*method='xla'"):
        evaluation.count_macs(model, _init(model), (4, 8, 8))


def test_count_macs_inside_scan_is_multiplied_by_length():
    class Repeated(nn.Module):
        @nn.compact
        def __call__(self, video, train: bool = False):
            x = video.mean(axis=(1, 2, 3))

            def body(carry, _):
                return carry @ jnp.ones((3, 3)), None

            x, _ = jax.lax.scan(body, x, None, length=4)
            return x, {}

    model = Repeated()
    assert evaluation.count_macs(model, {}, (2, 4, 4)) == 4 * 3 * 3


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU cost-model specifics")
def test_count_macs_xla_method_convention():
    # VALID padding and no bias: XLA's 2 flops per multiply-add gives exactly fvcore's MACs
    # plus the mean reduction (1 flop per reduced element, i.e. 0.5 "MAC").
    model = TinyVideoNet(padding="VALID", use_bias=False)
    variables = _init(model)
    conv = 2 * 6 * 6 * 8 * 27 * 3
    dense = 8 * 5
    xla = evaluation.count_macs(model, variables, (4, 8, 8), method="xla")
    assert evaluation.count_macs(model, variables, (4, 8, 8)) == conv + dense
    assert xla >= conv + dense
    # Elementwise extras are the pooling's adds/divides: well under 1% here.
    assert (xla - conv - dense) / (conv + dense) < 0.01

    # SAME padding: XLA:CPU counts only the taps that land inside the input, per axis
    # 3n - 2 of the 3n (output, tap) pairs: T 10/12, H 22/24, W 22/24 (70% of fvcore).
    model = TinyVideoNet(padding="SAME", use_bias=False)
    variables = _init(model)
    xla = evaluation.count_macs(model, variables, (4, 8, 8), method="xla")
    valid_taps = 10 * 22 * 22 * 3 * 8
    assert valid_taps + dense <= xla < (valid_taps + dense) * 1.01


def test_count_macs_rejects_unknown_method():
    model = TinyVideoNet()
    with pytest.raises(ValueError, match="method"):
        evaluation.count_macs(model, _init(model), (4, 8, 8), method="fvcore")


def test_measure_latency_reports_ordered_positive_times():
    model = TinyVideoNet()
    stats = evaluation.measure_latency(model, _init(model), (4, 8, 8), iters=5, warmup=1)
    assert set(stats) == {"median_ms", "p90_ms", "mean_ms"}
    assert 0 < stats["median_ms"] <= stats["p90_ms"]


# ----------------------------------------------------------------------------------- accuracy


def test_multiview_predictions_average_softmax_not_logits():
    logits = np.array([[[10.0, 0.0], [0.0, 1.0]]])  # One video, two views.
    expected = (_np_softmax(logits[0, 0]) + _np_softmax(logits[0, 1])) / 2
    np.testing.assert_allclose(evaluation.multiview_predictions(logits)[0], expected, rtol=1e-6)
    # Averaging logits would give softmax([5, 0.5]), a different (more confident) answer.
    assert not np.allclose(expected, _np_softmax(np.array([5.0, 0.5])))


def test_topk_correct_by_hand():
    probs = np.array([[0.1, 0.5, 0.4], [0.7, 0.2, 0.1], [0.3, 0.3, 0.4]])
    labels = np.array([2, 0, 1])
    np.testing.assert_array_equal(evaluation.topk_correct(probs, labels, 1), [False, True, False])
    # Row 3 ties classes 0 and 1 at 0.3: the top-2 is {2, 0}, so label 1 is out.
    np.testing.assert_array_equal(evaluation.topk_correct(probs, labels, 2), [True, True, False])
    # k clipped to the number of classes.
    np.testing.assert_array_equal(evaluation.topk_correct(probs, labels, 5), [True, True, True])
    # Ties resolve to the lower index, like argmax: a constant output is right for class 0 only.
    flat = np.full((2, 3), 1 / 3)
    np.testing.assert_array_equal(evaluation.topk_correct(flat, np.array([0, 2]), 1), [True, False])


def test_accuracy_summary_by_hand():
    probs = np.array(
        [
            [0.8, 0.1, 0.1],  # true 0, pred 0
            [0.2, 0.7, 0.1],  # true 0, pred 1 (top-2 correct)
            [0.1, 0.2, 0.7],  # true 2, pred 2
            [0.6, 0.1, 0.3],  # true 2, pred 0 (top-2 correct)
        ]
    )
    labels = np.array([0, 0, 2, 2])
    s = evaluation.accuracy_summary(probs, labels, 3, ["a", "b", "c"])
    assert s["top1"] == pytest.approx(0.5)
    assert s["top5"] == pytest.approx(1.0)  # k = min(5, 3).
    assert s["per_class_accuracy"] == {"a": 0.5, "b": None, "c": 0.5}
    assert s["mean_class_accuracy"] == pytest.approx(0.5)
    assert s["confusion"] == [[1, 1, 0], [0, 0, 0], [1, 0, 1]]
    with pytest.raises(ValueError, match="class names"):
        evaluation.accuracy_summary(probs, labels, 3, ["a", "b"])


def test_make_eval_step_folds_views_into_batch():
    model = TinyVideoNet()
    variables = _init(model)
    videos = jax.random.normal(jax.random.key(1), (2, 3, 4, 8, 8, 3))
    logits = evaluation.make_eval_step(model)(variables, videos)
    apply = jax.jit(model.apply)  # One view at a time, compiled once.
    assert logits.shape == (2, 3, 5)
    for b in range(2):
        for v in range(3):
            expected, _ = apply(variables, videos[b, v][None])
            np.testing.assert_allclose(logits[b, v], expected[0], rtol=1e-5, atol=1e-5)


def test_evaluate_matches_per_view_reference_and_respects_mask():
    model = TinyVideoNet(num_classes=3)
    variables = _init(model)
    rng = np.random.default_rng(0)
    videos = rng.normal(size=(6, 2, 4, 8, 8, 3)).astype(np.float32)
    labels = rng.integers(0, 3, size=6)
    mask = np.array([True, True, True, True, False, False])

    # Independent reference: apply each view separately, NumPy softmax, average, argmax.
    apply = jax.jit(model.apply)
    ref_probs = np.stack(
        [
            np.mean(
                [
                    _np_softmax(np.asarray(apply(variables, videos[i, v][None])[0][0]))
                    for v in range(2)
                ],
                axis=0,
            )
            for i in range(4)
        ]
    )
    ref_top1 = np.mean(ref_probs.argmax(-1) == labels[:4])

    batches = [
        {"video": videos[:4], "label": labels[:4], "mask": mask[:4]},
        # A padded final batch: its masked examples must not count, whatever their labels.
        {"video": jnp.asarray(videos[4:]), "label": jnp.asarray(labels[4:]), "mask": mask[4:]},
    ]
    s = evaluation.evaluate(model, variables, batches, num_classes=3, class_names=["x", "y", "z"])
    assert s["num_examples"] == 4
    assert s["top1"] == pytest.approx(ref_top1)
    assert s["top5"] == 1.0
    assert np.sum(s["confusion"]) == 4
    np.testing.assert_array_equal(np.sum(s["confusion"], axis=1), np.bincount(labels[:4], None, 3))

    # Without a mask key every example counts.
    s = evaluation.evaluate(
        model, variables, [{"video": videos, "label": labels}], num_classes=3, class_names=None
    )
    assert s["num_examples"] == 6


def test_evaluate_on_batches_sharded_over_devices():
    # Run with XLA_FLAGS=--xla_force_host_platform_device_count=N to shard over N devices.
    devices = np.array(jax.devices())
    mesh = jax.sharding.Mesh(devices, ("data",))
    shard = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    model = TinyVideoNet(num_classes=3)
    variables = _init(model)
    b = 2 * len(devices)
    videos = np.random.default_rng(1).normal(size=(b, 2, 4, 8, 8, 3)).astype(np.float32)
    labels = np.arange(b) % 3
    mask = np.arange(b) < b - 1  # The last example is padding.
    local = evaluation.evaluate(
        model, variables, [{"video": videos, "label": labels, "mask": mask}], num_classes=3
    )
    batch = {k: jax.device_put(v, shard) for k, v in
             {"video": videos, "label": labels, "mask": mask}.items()}  # fmt: skip
    sharded = evaluation.evaluate(model, variables, [batch], num_classes=3)
    assert sharded["num_examples"] == local["num_examples"] == b - 1
    assert sharded["confusion"] == local["confusion"]
    assert sharded["top1"] == pytest.approx(local["top1"])


def test_plot_confusion_writes_png(tmp_path):
    path = str(tmp_path / "confusion.png")
    out = evaluation.plot_confusion([[3, 1], [0, 0]], ["walk", "run"], path, title="t")
    assert out == path
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
