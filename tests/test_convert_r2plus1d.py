"""torchvision R(2+1)D -> vkd_jax conversion: numerical parity and strict key checks."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch_compat

from vkd_jax import convert
from vkd_jax.convert import r2plus1d as convert_r2plus1d

torch = torch_compat.import_torch()
tv = torch_compat.import_torchvision()
resnet = tv.models.video.resnet

STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")


@pytest.fixture(scope="module")
def r2plus1d_18():
    torch.manual_seed(0)
    model = tv.models.video.r2plus1d_18(num_classes=400).eval()
    torch_compat.randomize_batch_norm(torch, model, linear_std=0.2)
    return model, {k: v.numpy() for k, v in model.state_dict().items()}


def test_parity_with_torchvision_r2plus1d_18(r2plus1d_18):
    ref, state_dict = r2plus1d_18
    captured = {}
    hooks = [
        getattr(ref, name).register_forward_hook(
            lambda _m, _i, out, name=name: captured.__setitem__(name, out.numpy())
        )
        for name in STAGES
    ]
    clip = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = ref(clip).numpy()
    for h in hooks:
        h.remove()

    module, variables = convert.from_torch("r2plus1d_18", state_dict)
    assert module.num_classes == 400
    video = np.transpose(clip.numpy(), (0, 2, 3, 4, 1))  # (B, C, T, H, W) -> (B, T, H, W, C)
    logits, feats = jax.jit(module.apply)(variables, video)

    assert np.abs(want).max() > 1.0  # A meaningful scale for the absolute tolerance.
    np.testing.assert_allclose(logits, want, atol=1e-4, rtol=0)
    for ours, theirs in zip(("stem", "stage1", "stage2", "stage3", "stage4"), STAGES):
        ref_feat = np.transpose(captured[theirs], (0, 2, 3, 4, 1))
        assert feats[ours].shape == ref_feat.shape, ours
        np.testing.assert_allclose(feats[ours], ref_feat, atol=1e-4, rtol=1e-4, err_msg=ours)
    np.testing.assert_allclose(
        feats["pre_logits"], captured["layer4"].mean(axis=(2, 3, 4)), atol=1e-5, rtol=1e-5
    )


def test_wrapped_checkpoint_and_num_classes(r2plus1d_18):
    _, state_dict = r2plus1d_18
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state_dict.items()}}
    module, variables = convert.from_torch("r2plus1d_18", wrapped, num_classes=400)
    np.testing.assert_array_equal(
        variables["params"]["layer2_0"]["conv1"]["conv_s"]["kernel"],
        np.transpose(state_dict["layer2.0.conv1.0.0.weight"], (2, 3, 4, 1, 0)),
    )
    np.testing.assert_array_equal(
        variables["batch_stats"]["layer4_1"]["bn2"]["var"],
        state_dict["layer4.1.conv2.1.running_var"],
    )
    with pytest.raises(convert.ConversionError, match=r"num_classes=101.*400"):
        convert.from_torch("r2plus1d_18", state_dict, num_classes=101)


def test_head_size_read_from_checkpoint():
    with torch.device("meta"):
        ref = tv.models.video.r2plus1d_18(num_classes=400)
    sd = {k: np.zeros(v.shape, np.float32) for k, v in ref.state_dict().items()}
    sd["fc.weight"] = np.zeros((51, 512), np.float32)
    sd["fc.bias"] = np.zeros((51,), np.float32)
    module, variables = convert.from_torch("r2plus1d_18", sd)
    assert module.num_classes == 51
    assert variables["params"]["fc"]["kernel"].shape == (512, 51)


def test_r2plus1d_34_layout():
    # torchvision has no r2plus1d_34 builder; its VideoResNet with [3, 4, 6, 3] blocks is the
    # layout of R(2+1)D-34 checkpoints. Shapes only: meta tensors hold no data.
    with torch.device("meta"):
        ref = resnet.VideoResNet(
            resnet.BasicBlock, [resnet.Conv2Plus1D] * 4, [3, 4, 6, 3], resnet.R2Plus1dStem, 400
        )
    sd = {k: np.zeros(v.shape, np.float32) for k, v in ref.state_dict().items()}
    module, variables = convert_r2plus1d.ARCHS["r2plus1d_34"](sd, num_classes=None)
    assert tuple(module.layers) == (3, 4, 6, 3)
    n = sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(variables["params"]))
    assert n == sum(v.numel() for v in ref.parameters())
    # An 18-layer checkpoint is not a 34-layer one.
    with pytest.raises(convert.ConversionError, match="layer1.2"):
        convert.from_torch("r2plus1d_34", _zeros_18())


def _zeros_18() -> dict:
    with torch.device("meta"):
        ref = tv.models.video.r2plus1d_18(num_classes=400)
    return {k: np.zeros(v.shape, np.float32) for k, v in ref.state_dict().items()}


def test_missing_key_is_named():
    sd = _zeros_18()
    del sd["layer3.1.conv2.0.1.running_var"]
    with pytest.raises(convert.ConversionError, match=r"layer3\.1\.conv2\.0\.1\.running_var"):
        convert.from_torch("r2plus1d_18", sd)


def test_unexpected_key_is_named():
    sd = _zeros_18()
    sd["layer4.2.conv1.0.0.weight"] = np.zeros((1,), np.float32)
    with pytest.raises(convert.ConversionError, match=r"layer4\.2\.conv1\.0\.0\.weight"):
        convert.from_torch("r2plus1d_18", sd)


def test_wrong_shape_is_named():
    sd = _zeros_18()
    sd["layer2.0.conv1.0.3.weight"] = np.zeros((128, 200, 3, 1, 1), np.float32)
    with pytest.raises(
        convert.ConversionError,
        match=r"layer2\.0\.conv1\.0\.3\.weight.*layer2_0/conv1/conv_t/kernel",
    ):
        convert.from_torch("r2plus1d_18", sd)


def test_registered_architectures():
    assert {"r2plus1d_18", "r2plus1d_34"} <= set(convert.architectures())
