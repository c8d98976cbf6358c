"""3D-ShuffleNet v1/v2 model tests: shapes, parameter counts, shuffle, BN, dtypes, grad."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import model_testing
import numpy as np
import pytest

from vkd_jax import evaluation, models
from vkd_jax.models import shufflenet3d

NUM_CLASSES = 5
# (variant, clip): v1's unpadded temporal shortcut pooling needs T a multiple of 16.
TINY = {"tiny": (2, 8, 32, 32, 3), "v1_tiny": (2, 16, 32, 32, 3)}


@pytest.fixture(scope="module", params=sorted(TINY))
def tiny(request):
    variant = request.param
    model = models.get_model("shufflenet3d", variant=variant, num_classes=NUM_CLASSES)
    video = jax.random.normal(jax.random.key(1), TINY[variant])
    variables = model_testing.random_cnn_variables(model, video)
    rngs = {"dropout": jax.random.key(3)}
    # mutable in eval too, to show the statistics come back unchanged.
    eval_out, eval_state = jax.jit(
        lambda v, x: model.apply(v, x, train=False, mutable=["batch_stats"])
    )(variables, video)
    train_out = jax.jit(
        lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"], rngs=rngs)
    )(variables, video)
    return variant, model, variables, video, {False: eval_out, True: train_out, "eval": eval_state}


@pytest.mark.parametrize("train", [False, True])
def test_tiny_logits_and_feature_shapes(tiny, train):
    variant, model, _, video, outs = tiny
    logits, feats = outs[True][0] if train else outs[False]
    b, t, h, w, _ = video.shape
    c = model.channels
    assert logits.shape == (b, NUM_CLASSES) and logits.dtype == jnp.float32
    assert np.all(np.isfinite(logits))
    keys = {"stem", "stage1", "stage2", "stage3", "pre_logits"}
    assert set(feats) == (keys | {"conv_last"} if variant == "tiny" else keys)
    assert feats["stem"].shape == (b, t // 2, h // 4, w // 4, c[0])
    assert feats["stage1"].shape == (b, t // 4, h // 8, w // 8, c[1])
    assert feats["stage2"].shape == (b, max(t // 8, 1), h // 16, w // 16, c[2])
    assert feats["stage3"].shape == (b, max(t // 16, 1), h // 32, w // 32, c[3])
    last = feats["conv_last"] if variant == "tiny" else feats["stage3"]
    assert feats["pre_logits"].shape == (b, last.shape[-1])
    np.testing.assert_allclose(feats["pre_logits"], last.mean(axis=(1, 2, 3)), rtol=1e-5)


def test_full_size_parameter_counts():
    # Equal to the reference PyTorch models' counts (tests/test_convert_shufflenet3d.py
    # checks that against the port of the reference code).
    want = {
        "v1_0.25": 219_486,
        "v1_0.5": 545_772,
        "v1_1.0": 1_521_504,
        "v1_1.5": 2_924_916,
        "v1_2.0": 4_758_888,
        "v2_0.25": 829_656,
        "v2_0.5": 976_664,
        "v2_1.0": 1_914_180,
        "v2_1.5": 3_161_880,
        "v2_2.0": 6_639_816,
    }
    got = {}
    for variant in want:
        model = models.get_model("shufflenet3d", variant=variant, num_classes=600)
        t, h, w = models.standard_input("shufflenet3d", variant)
        shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, t, h, w, 3)))
        got[variant] = evaluation.count_params(shapes["params"])
    assert got == want


def test_full_size_standard_input_shapes():
    model = models.get_model("shufflenet3d", variant="v2_1.0", num_classes=600)
    out = jax.eval_shape(
        lambda x: model.init_with_output(jax.random.key(0), x)[0], jnp.zeros((1, 16, 112, 112, 3))
    )
    logits, feats = out
    assert logits.shape == (1, 600)
    assert feats["stage3"].shape == (1, 1, 4, 4, 464)
    assert feats["conv_last"].shape == (1, 1, 4, 4, 1024)


def test_channel_shuffle_permutation():
    # Zhang et al. 2018, Fig. 1: with g groups of n channels, channel (group i, index j)
    # moves to position j * g + i. Spelled out for g = 3, n = 2.
    x = jnp.arange(6.0).reshape(1, 1, 1, 1, 6)
    np.testing.assert_array_equal(
        shufflenet3d.channel_shuffle(x, 3)[0, 0, 0, 0], [0, 2, 4, 1, 3, 5]
    )
    np.testing.assert_array_equal(
        shufflenet3d.channel_shuffle(x, 2)[0, 0, 0, 0], [0, 3, 1, 4, 2, 5]
    )


def test_v1_first_pointwise_grouping_follows_reference():
    # The reference leaves the first 1x1x1 conv ungrouped only for 24 input channels.
    def first_kernel(variant):
        model = models.get_model("shufflenet3d", variant=variant, num_classes=10)
        shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 64, 64, 3)))
        return shapes["params"]["layer1_0"]["conv1"]["conv"]["kernel"].shape

    assert first_kernel("v1_1.0") == (1, 1, 1, 24, 60)  # ungrouped
    assert first_kernel("v1_2.0") == (1, 1, 1, 16, 120)  # 48 inputs in 3 groups


def test_batch_stats_update_only_in_train(tiny):
    _, model, variables, video, outs = tiny
    updated = outs[True][1]["batch_stats"]
    before = jax.tree_util.tree_leaves(variables["batch_stats"])
    after = jax.tree_util.tree_leaves(updated)
    assert len(before) == len(after) > 0
    assert all(not np.allclose(a, b) for a, b in zip(before, after))
    for a, b in zip(before, jax.tree_util.tree_leaves(outs["eval"]["batch_stats"])):
        np.testing.assert_array_equal(a, b)



def test_bfloat16_forward_close_to_float32(tiny):
    variant, _, variables, video, outs = tiny
    model16 = models.get_model(
        "shufflenet3d", variant=variant, num_classes=NUM_CLASSES, dtype=jnp.bfloat16
    )
    logits16, feats16 = jax.jit(model16.apply)(variables, video)
    logits32 = outs[False][0]
    assert feats16["stage3"].dtype == jnp.bfloat16
    assert logits16.dtype == jnp.float32 and np.all(np.isfinite(logits16))
    scale = float(np.abs(logits32).max())
    np.testing.assert_allclose(logits16, logits32, atol=0.05 * scale + 1e-3)



def test_v1_rejects_clip_lengths_its_shortcuts_cannot_pool():
    model = models.get_model("shufflenet3d", variant="v1_tiny", num_classes=3)
    for t in (15, 16, 32):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, t, 32, 32, 3)))
    for t in (8, 12, 17):
        with pytest.raises(ValueError, match=f"got T = {t}"):
            jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, t, 32, 32, 3)))


def test_unknown_variant():
    with pytest.raises(ValueError, match="known variants"):
        models.get_model("shufflenet3d", variant="v3_1.0", num_classes=3)
