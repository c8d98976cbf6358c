"""Parity of converted X3D checkpoints with pytorchvideo's reference implementation.

The references are pytorchvideo's own models (``pytorchvideo.models.hub.x3d_*`` and
``create_x3d``) with random weights and random, non-trivial batch-norm statistics;
the PySlowFast layout is produced from them by a key map written independently
here. Small clips keep this on a CPU: pytorchvideo's head pools with a fixed
``AvgPool3d`` sized for the standard input, so we swap in ``AdaptiveAvgPool3d(1)``,
which is the same operation at the standard input size and lets a small clip
through (our model always pools globally).
"""

from __future__ import annotations

import functools
import re

import jax
import numpy as np
import pytest
import torch_compat

from vkd_jax import convert
from vkd_jax.convert import common
from vkd_jax.convert import x3d as convert_x3d
from vkd_jax.models import x3d

CLIP = (2, 4, 40, 40)  # B, T, H, W: 40 px exercises odd sizes (5 -> 3 -> 2) in late stages.


def _randomize(torch, model, seed: int):
    # pytorchvideo's std 0.01 would make logits ~1e-2: too small to test anything.
    return torch_compat.randomize_batch_norm(torch, model, seed, linear_std=0.05)


def _adaptive_head(torch, model):
    # Equal to the fixed AvgPool3d at the standard input; works at any input size.
    model.blocks[5].pool.pool = torch.nn.AdaptiveAvgPool3d(1)
    return model


def _hub_x3d(torch, hub, name: str, seed: int = 0):
    torch.manual_seed(seed)
    model = getattr(hub, name)(pretrained=False, head_activation=None)
    return _randomize(torch, _adaptive_head(torch, model), seed).eval()


def _torch_run(torch, model, clip: np.ndarray):
    """Logits and the features our model names, from forward hooks on the torch blocks."""
    feats = {}

    def hook(name):
        def fn(_module, _inputs, output):
            feats[name] = output.detach().numpy().copy()

        return fn

    names = ["stem", "stage1", "stage2", "stage3", "stage4"]
    handles = [model.blocks[i].register_forward_hook(hook(n)) for i, n in enumerate(names)]
    handles.append(model.blocks[5].pool.pre_act.register_forward_hook(hook("head_conv")))
    handles.append(model.blocks[5].pool.post_act.register_forward_hook(hook("pre_logits")))
    x = torch.from_numpy(np.ascontiguousarray(clip.transpose(0, 4, 1, 2, 3)))
    with torch.no_grad():
        logits = model(x).numpy()
    for h in handles:
        h.remove()
    out = {}
    for k, v in feats.items():
        out[k] = v.reshape(v.shape[0], -1) if k == "pre_logits" else v.transpose(0, 2, 3, 4, 1)
    return logits, out


@functools.partial(jax.jit, static_argnums=0)
def _apply(module, variables, clip):
    # One compiled function per (hashable) module: X3D-XS/S/M share it.
    return module.apply(variables, clip, train=False)


def _clip(seed: int = 0, shape=CLIP) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((*shape, 3)).astype(np.float32)


def _state_dict(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _assert_parity(torch, model, module, variables, clip):
    ref_logits, ref_feats = _torch_run(torch, model, clip)
    logits, feats = _apply(module, variables, clip)
    assert np.abs(ref_logits).max() > 0.1  # Logits large enough for 1e-4 to mean something.
    np.testing.assert_allclose(np.asarray(logits), ref_logits, rtol=0, atol=1e-4)
    assert set(ref_feats) <= set(feats)
    for name, ref in ref_feats.items():
        ours = np.asarray(feats[name])
        assert ours.shape == ref.shape, name
        scale = float(np.abs(ref).max())
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5 * max(scale, 1.0), err_msg=name)


# ----------------------------------------------------------------- pytorchvideo layout


@pytest.mark.parametrize("arch", ["x3d_xs", "x3d_s", "x3d_m", "x3d_l"])
def test_pytorchvideo_parity(torch, hub, arch):
    model = _hub_x3d(torch, hub, arch, seed=1)
    module, variables = convert.from_torch(arch, _state_dict(model))
    assert module.num_classes == 400
    n_params = sum(p.size for p in jax.tree.leaves(variables["params"]))
    assert n_params == sum(p.numel() for p in model.parameters())
    _assert_parity(torch, model, module, variables, _clip(seed=2))


def test_train_mode_parity_and_running_stats(torch, hub):
    """train=True: batch statistics normalize and running estimates move as in PyTorch."""
    del hub  # Only imported for its torchvision workaround.
    from pytorchvideo.models.x3d import create_x3d

    hp = x3d.VARIANTS["tiny_m"]
    torch.manual_seed(3)
    model = create_x3d(
        input_clip_length=8,
        input_crop_size=32,
        model_num_class=7,
        dropout_rate=0.0,
        width_factor=hp["width_factor"],
        depth_factor=hp["depth_factor"],
        head_dim_out=hp["head_dim_out"],
        head_activation=None,
    )
    model = _randomize(torch, _adaptive_head(torch, model), seed=3).train()
    module, variables = convert_x3d.convert("tiny_m", _state_dict(model))
    module = module.clone(dropout_rate=0.0)
    clip = _clip(seed=4, shape=(2, 8, 32, 32))
    ref_logits, _ = _torch_run(torch, model, clip)
    train_apply = jax.jit(lambda v, x: module.apply(v, x, train=True, mutable=["batch_stats"]))
    (logits, _), updated = train_apply(variables, clip)
    np.testing.assert_allclose(np.asarray(logits), ref_logits, rtol=0, atol=1e-4)
    _, after = convert_x3d.convert("tiny_m", _state_dict(model))
    for ours, ref in zip(
        jax.tree.leaves(updated["batch_stats"]), jax.tree.leaves(after["batch_stats"])
    ):
        np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------- PySlowFast layout

# pytorchvideo key -> PySlowFast key, written from PySlowFast's module names
# (video_model_builder.X3D, stem_helper.X3DStem, resnet_helper.X3DTransform,
# operators.SE, head_helper.X3DHead). Applied in order.
_TO_PYSLOWFAST = [
    (r"^blocks\.0\.conv\.conv_t\.", "s1.pathway0_stem.conv_xy."),  # the spatial conv
    (r"^blocks\.0\.conv\.conv_xy\.", "s1.pathway0_stem.conv."),  # the temporal conv
    (r"^blocks\.0\.norm\.", "s1.pathway0_stem.bn."),
    (r"^blocks\.([1-4])\.res_blocks\.(\d+)\.", lambda m: f"s{int(m[1]) + 1}.pathway0_res{m[2]}."),
    (r"\.branch1_conv\.", ".branch1."),
    (r"\.branch1_norm\.", ".branch1_bn."),
    (r"\.branch2\.conv_([abc])\.", r".branch2.\1."),
    (r"\.branch2\.norm_([ac])\.", r".branch2.\1_bn."),
    (r"\.branch2\.norm_b\.0\.", ".branch2.b_bn."),
    (r"\.branch2\.norm_b\.1\.block\.0\.", ".branch2.se.fc1."),
    (r"\.branch2\.norm_b\.1\.block\.2\.", ".branch2.se.fc2."),
    (r"^blocks\.5\.pool\.pre_conv\.", "head.conv_5."),
    (r"^blocks\.5\.pool\.pre_norm\.", "head.conv_5_bn."),
    (r"^blocks\.5\.pool\.post_conv\.", "head.lin_5."),
    (r"^blocks\.5\.proj\.", "head.projection."),
]


def _to_pyslowfast(sd):
    prefixes = ("s1.", "s2.", "s3.", "s4.", "s5.", "head.")
    return torch_compat.rename_keys(sd, _TO_PYSLOWFAST, prefixes)


def test_pyslowfast_parity_with_stage1_shortcut_bn(torch, hub):
    """A real PySlowFast X3D normalizes stage 1's strided shortcut (branch1_bn)."""
    model = _hub_x3d(torch, hub, "x3d_xs", seed=5)
    block = model.blocks[1].res_blocks[0]
    assert block.branch1_conv is not None and block.branch1_norm is None
    block.branch1_norm = torch.nn.BatchNorm3d(block.branch1_conv.out_channels)
    model = _randomize(torch, model, seed=5).eval()
    sd = _to_pyslowfast(_state_dict(model))
    assert "s2.pathway0_res0.branch1_bn.running_var" in sd
    assert "s3.pathway0_res1.branch2.se.fc1.weight" not in sd  # SE on alternate blocks.
    module, variables = convert.from_torch("x3d_xs", sd, num_classes=400)
    assert module.shortcut_norm_always
    _assert_parity(torch, model, module, variables, _clip(seed=6))


def test_pyslowfast_layout_without_stage1_shortcut_bn(torch, hub):
    model = _hub_x3d(torch, hub, "x3d_xs", seed=7)
    module, variables = convert.from_torch("x3d_xs", _to_pyslowfast(_state_dict(model)))
    assert not module.shortcut_norm_always
    _assert_parity(torch, model, module, variables, _clip(seed=8))


# ----------------------------------------------------------------------------- errors


@pytest.fixture(scope="module")
def xs_state_dict(torch, hub):
    return _state_dict(_hub_x3d(torch, hub, "x3d_xs", seed=9))


def test_wrappers_accepted(torch, xs_state_dict):
    _, direct = convert.from_torch("x3d_xs", xs_state_dict)
    wrapped = {
        "model_state": {"module." + k: torch.from_numpy(v) for k, v in xs_state_dict.items()},
        "epoch": 7,
    }
    _, via_wrapper = convert.from_torch("x3d_xs", wrapped)
    jax.tree.map(np.testing.assert_array_equal, direct, via_wrapper)


@pytest.mark.parametrize(
    "key",
    [
        "blocks.3.res_blocks.4.branch2.norm_b.0.running_var",
        "blocks.2.res_blocks.0.branch2.norm_b.1.block.2.bias",
        "blocks.0.conv.conv_xy.weight",
    ],
)
def test_dropped_key_is_named(xs_state_dict, key):
    sd = {k: v for k, v in xs_state_dict.items() if k != key}
    assert len(sd) == len(xs_state_dict) - 1
    with pytest.raises(common.ConversionError, match=re.escape(key)):
        convert.from_torch("x3d_xs", sd)


def test_unexpected_key_is_named(xs_state_dict):
    sd = dict(xs_state_dict, **{"blocks.4.res_blocks.7.branch2.conv_a.weight": np.zeros(3)})
    with pytest.raises(common.ConversionError, match=r"blocks\.4\.res_blocks\.7"):
        convert.from_torch("x3d_xs", sd)


def test_wrong_shape_names_parameter_and_shapes(xs_state_dict):
    key = "blocks.2.res_blocks.1.branch2.conv_a.weight"
    good = xs_state_dict[key].shape
    assert good == (108, 48, 1, 1, 1)
    sd = dict(xs_state_dict, **{key: np.zeros((108, 40, 1, 1, 1), np.float32)})
    with pytest.raises(common.ConversionError) as err:
        convert.from_torch("x3d_xs", sd)
    msg = str(err.value)
    assert key in msg and "(108, 40, 1, 1, 1)" in msg and str(good) in msg


def test_num_classes_mismatch_names_both(xs_state_dict):
    with pytest.raises(common.ConversionError, match=r"num_classes=10.*400"):
        convert.from_torch("x3d_xs", xs_state_dict, num_classes=10)


def test_wrong_depth_fails(xs_state_dict):
    # X3D-L has more blocks per stage: an XS checkpoint is missing keys for it.
    with pytest.raises(common.ConversionError, match="Missing key"):
        convert.from_torch("x3d_l", xs_state_dict)


def test_not_x3d():
    with pytest.raises(common.ConversionError, match="Not an X3D checkpoint"):
        convert.from_torch("x3d_s", {"conv1.weight": np.zeros((4, 3, 3, 3), np.float32)})
