"""R(2+1)D model tests: shapes, parameter counts, batch norm, dtypes, jit and grad."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import model_testing
import numpy as np
import pytest
import torch_compat

from vkd_jax import evaluation, models
from vkd_jax.models import r2plus1d

NUM_CLASSES = 5


@pytest.fixture(scope="module")
def tiny():
    model = models.get_model("r2plus1d", variant="tiny", num_classes=NUM_CLASSES)
    video = jax.random.normal(jax.random.key(1), (2, 8, 32, 32, 3))
    variables = model_testing.random_cnn_variables(model, video)
    # mutable in eval too, to show the statistics come back unchanged.
    eval_out, eval_state = jax.jit(
        lambda v, x: model.apply(v, x, train=False, mutable=["batch_stats"])
    )(variables, video)
    train_out = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables, video
    )
    return model, variables, video, {False: eval_out, True: train_out, "eval": eval_state}


def test_init_matches_torchvision_scheme():
    # Kaiming-normal fan_out convolutions, N(0, 0.01) classifier, BN (1, 0), stats (0, 1).
    model = models.get_model("r2plus1d", variant="tiny", num_classes=NUM_CLASSES)
    video = jnp.zeros((1, 8, 32, 32, 3))
    # An RBG key: the same initializers, but far cheaper to compile on CPU than threefry.
    variables = jax.jit(model.init)(jax.random.key(0, impl="rbg"), video)
    params, stats = variables["params"], variables["batch_stats"]
    kernel = params["layer4_0"]["conv1"]["conv_s"]["kernel"]  # (1, 3, 3, in, mid)
    fan_out = 9 * kernel.shape[-1]
    assert abs(float(kernel.std()) / np.sqrt(2.0 / fan_out) - 1.0) < 0.05
    assert abs(float(params["fc"]["kernel"].std()) / 0.01 - 1.0) < 0.3
    np.testing.assert_array_equal(params["fc"]["bias"], 0.0)
    np.testing.assert_array_equal(params["stem"]["bn_s"]["scale"], 1.0)
    np.testing.assert_array_equal(stats["stem"]["bn_s"]["var"], 1.0)
    assert evaluation.count_params(params) == evaluation.count_params(
        model_testing.random_cnn_variables(model, video)["params"]
    )


@pytest.mark.parametrize("train", [False, True])
def test_tiny_logits_and_feature_shapes(tiny, train):
    out = tiny[3][train]
    logits, feats = out[0] if train else out
    w = r2plus1d.VARIANTS["tiny"]["widths"]
    assert logits.shape == (2, NUM_CLASSES) and logits.dtype == jnp.float32
    assert set(feats) == {"stem", "stage1", "stage2", "stage3", "stage4", "pre_logits"}
    assert feats["stem"].shape == (2, 8, 16, 16, w[0])
    assert feats["stage1"].shape == (2, 8, 16, 16, w[0])
    assert feats["stage2"].shape == (2, 4, 8, 8, w[1])
    assert feats["stage3"].shape == (2, 2, 4, 4, w[2])
    assert feats["stage4"].shape == (2, 1, 2, 2, w[3])
    assert feats["pre_logits"].shape == (2, w[3])
    np.testing.assert_allclose(feats["pre_logits"], feats["stage4"].mean(axis=(1, 2, 3)), rtol=1e-6)
    assert np.all(np.isfinite(logits))


def test_tiny_is_small(tiny):
    variables = tiny[1]
    assert 20_000 < evaluation.count_params(variables["params"]) < 100_000


def test_full_size_parameter_counts():
    counts = {}
    for variant in ("18", "34"):
        model = models.get_model("r2plus1d", variant=variant, num_classes=400)
        t, h, w = models.standard_input("r2plus1d", variant)
        shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, t, h, w, 3)))
        counts[variant] = evaluation.count_params(shapes["params"])
    # torchvision r2plus1d_18 has 31,505,325 parameters; the module docstring lists both.
    assert counts == {"18": 31_505_325, "34": 61_831_661}


def test_parameter_count_matches_torchvision():
    tv = torch_compat.import_torchvision()
    import torch
    from torchvision.models.video import resnet

    for variant, layers in (("18", [2, 2, 2, 2]), ("34", [3, 4, 6, 3])):
        # Meta tensors: the structure without allocating or initializing 60M weights.
        with torch.device("meta"):
            ref = resnet.VideoResNet(
                resnet.BasicBlock, [resnet.Conv2Plus1D] * 4, layers, resnet.R2Plus1dStem, 400
            )
            if variant == "18":
                tv_count = sum(p.numel() for p in tv.models.video.r2plus1d_18().parameters())
                assert tv_count == sum(p.numel() for p in ref.parameters())
        model = models.get_model("r2plus1d", variant=variant, num_classes=400)
        shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4, 32, 32, 3)))
        assert evaluation.count_params(shapes["params"]) == sum(p.numel() for p in ref.parameters())
        n_stats = sum(b.numel() for n, b in ref.named_buffers() if "running" in n)
        assert evaluation.count_params(shapes["batch_stats"]) == n_stats


def test_batch_stats_update_only_in_train(tiny):
    model, variables, video, outs = tiny
    _, updated = outs[True]
    before = jax.tree_util.tree_leaves(variables["batch_stats"])
    after = jax.tree_util.tree_leaves(updated["batch_stats"])
    assert all(not np.allclose(a, b) for a, b in zip(before, after))
    # In eval mode the running statistics are used and nothing is mutable.
    for a, b in zip(before, jax.tree_util.tree_leaves(outs["eval"]["batch_stats"])):
        np.testing.assert_array_equal(a, b)
    # PyTorch momentum 0.1: new running mean = 0.9 * old + 0.1 * batch mean.
    stem_mean = updated["batch_stats"]["stem"]["bn_s"]["mean"]
    old = variables["batch_stats"]["stem"]["bn_s"]["mean"]
    conv_out = jax.lax.conv_general_dilated(
        video,
        variables["params"]["stem"]["conv_s"]["kernel"],
        (1, 2, 2),
        ((0, 0), (3, 3), (3, 3)),
        dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
    )
    np.testing.assert_allclose(
        stem_mean, 0.9 * old + 0.1 * conv_out.mean(axis=(0, 1, 2, 3)), rtol=1e-4, atol=1e-6
    )


def test_train_and_eval_differ(tiny):
    outs = tiny[3]
    train_logits, eval_logits = outs[True][0][0], outs[False][0]
    assert not np.allclose(train_logits, eval_logits)


def test_bfloat16_forward_close_to_float32(tiny):
    _, variables, video, outs = tiny
    model16 = models.get_model(
        "r2plus1d", variant="tiny", num_classes=NUM_CLASSES, dtype=jnp.bfloat16
    )
    logits16, feats16 = jax.jit(model16.apply)(variables, video)
    logits32 = outs[False][0]
    assert feats16["stage4"].dtype == jnp.bfloat16
    assert logits16.dtype == jnp.float32 and np.all(np.isfinite(logits16))
    # The parameters stay float32 under a bfloat16 compute dtype.
    params16 = jax.eval_shape(model16.init, jax.random.key(0), video)["params"]
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(params16))
    scale = float(np.abs(logits32).max())
    np.testing.assert_allclose(logits16, logits32, atol=0.05 * scale + 1e-3)



def test_midplanes_preserve_parameter_budget():
    # Paper Eq. 5: the (2+1)D factorization keeps roughly a full 3x3x3 conv's parameters.
    for n_in, n_out in ((64, 64), (64, 128), (256, 512)):
        m = r2plus1d.midplanes(n_in, n_out)
        factorized = 9 * n_in * m + 3 * m * n_out
        assert factorized <= 27 * n_in * n_out < factorized + 9 * n_in + 3 * n_out
    assert r2plus1d.midplanes(64, 64) == 144


def test_unknown_variant():
    with pytest.raises(ValueError, match="known variants"):
        models.get_model("r2plus1d", variant="50", num_classes=3)
