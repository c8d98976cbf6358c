"""SlowFast-R50 (models.slowfast, convert.slowfast): parameter count and parity with
pytorchvideo's reference, in its own and PySlowFast's key layout, and the tiny variant
as student and teacher of the training pipeline.

The references are pytorchvideo's ``slowfast_r50`` (8x8) and ``create_slowfast`` with
alpha 8 (4x16), random weights and random batch-norm statistics; the PySlowFast layout
is produced from them by a key map written independently here. pytorchvideo's head
pools with fixed ``AvgPool3d`` kernels sized for 32x224x224; ``AdaptiveAvgPool3d(1)``
is the same operation there and lets a small clip through (ours pools globally).
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest
import torch_compat
from conftest import tiny_config

from vkd_jax import convert, models
from vkd_jax.models import slowfast

CLIP = (2, 8, 32, 32)  # B, T, H, W


def _reference(torch, hub, alpha: int, seed: int):
    torch.manual_seed(seed)
    if alpha == 4:
        model = hub.slowfast_r50(pretrained=False)
    else:
        from pytorchvideo.models.slowfast import create_slowfast

        model = create_slowfast(model_depth=50, slowfast_fusion_conv_stride=(alpha, 1, 1),
                                slowfast_fusion_conv_kernel_size=(7, 1, 1),
                                head_pool_kernel_sizes=((4, 7, 7), (32, 7, 7)))  # fmt: skip
    model.blocks[5].pool = torch.nn.ModuleList([torch.nn.AdaptiveAvgPool3d(1)] * 2)
    # Small Linear weights keep the deep random net's logits O(10), so 1e-4 means something.
    torch_compat.randomize_batch_norm(torch, model, seed, linear_std=0.005)
    return model.eval()


def _state_dict(model):
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _torch_logits(torch, model, clip, alpha):
    fast = torch.from_numpy(np.ascontiguousarray(clip.transpose(0, 4, 1, 2, 3)))
    t = fast.shape[2]
    # PackPathway (pytorchvideo / PySlowFast data transforms), written here on its own.
    index = torch.linspace(0, t - 1, t // alpha).long()
    slow = torch.index_select(fast, 2, index)
    with torch.no_grad():
        return model([slow, fast]).numpy()


@functools.partial(jax.jit, static_argnums=0)
def _apply(module, variables, clip):
    # One compile per (hashable) module: both layouts' tests share the R50 8x8 one.
    return module.apply(variables, clip, train=False)


def _assert_parity(torch, model, module, variables, alpha, seed):
    clip = np.random.default_rng(seed).standard_normal((*CLIP, 3)).astype(np.float32)
    ref = _torch_logits(torch, model, clip, alpha)
    logits, feats = _apply(module, variables, clip)
    assert np.abs(ref).max() > 0.1
    np.testing.assert_allclose(np.asarray(logits), ref, rtol=0, atol=1e-4)
    assert feats["pre_logits"].shape == (CLIP[0], 2048 + 256)
    assert (
        feats["slow_stage4"].shape[1] == CLIP[1] // alpha
        and feats["fast_stage4"].shape[1] == CLIP[1]
    )


def test_slow_pathway_frames_follow_packpathway(torch):
    for t, alpha in ((32, 4), (32, 8), (8, 4), (12, 4)):
        want = torch.linspace(0, t - 1, t // alpha).long().numpy()
        np.testing.assert_array_equal(slowfast.slow_indices(t, alpha), want)
    with pytest.raises(ValueError, match="multiple of alpha=4"):
        slowfast.slow_indices(10, 4)


@pytest.mark.parametrize("variant, alpha", [("r50_8x8", 4), ("r50_4x16", 8)])
def test_parameter_count_equals_pytorchvideo(torch, hub, variant, alpha):
    model = _reference(torch, hub, alpha, seed=0)
    want = sum(p.numel() for p in model.parameters())
    assert want == 34_566_488  # pytorchvideo's slowfast_r50 (400 classes)
    module = models.get_model("slowfast", variant=variant, num_classes=400)
    clip = jax.ShapeDtypeStruct((1, 32, 64, 64, 3), np.float32)
    shapes = jax.eval_shape(lambda x: module.init(jax.random.key(0), x, train=False), clip)
    assert sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(shapes["params"])) == want


# Written independently of the converter: pytorchvideo name -> PySlowFast name.
_TO_PYSLOWFAST = [
    (r"^blocks\.0\.multipathway_blocks\.(\d)\.conv\.", r"s1.pathway\1_stem.conv."),
    (r"^blocks\.0\.multipathway_blocks\.(\d)\.norm\.", r"s1.pathway\1_stem.bn."),
    (r"^blocks\.(\d)\.multipathway_fusion\.conv_fast_to_slow\.",
     lambda m: f"s{int(m[1]) + 1}_fuse.conv_f2s."),
    (r"^blocks\.(\d)\.multipathway_fusion\.norm\.", lambda m: f"s{int(m[1]) + 1}_fuse.bn."),
    (r"^blocks\.(\d)\.multipathway_blocks\.(\d)\.res_blocks\.(\d+)\.",
     lambda m: f"s{int(m[1]) + 1}.pathway{m[2]}_res{m[3]}."),
    (r"\.branch1_conv\.", ".branch1."),
    (r"\.branch1_norm\.", ".branch1_bn."),
    (r"\.branch2\.conv_([abc])\.", r".branch2.\1."),
    (r"\.branch2\.norm_([abc])\.", r".branch2.\1_bn."),
    (r"^blocks\.6\.proj\.", "head.projection."),
]  # fmt: skip


def _to_pyslowfast(sd):
    return torch_compat.rename_keys(sd, _TO_PYSLOWFAST, ("s1", "s2", "s3", "s4", "s5", "head."))


@pytest.mark.parametrize("layout", ["pytorchvideo", "pyslowfast"])
def test_r50_8x8_parity(torch, hub, layout):
    model = _reference(torch, hub, 4, seed=1)
    sd = _state_dict(model)
    if layout == "pyslowfast":
        sd = _to_pyslowfast(sd)
        assert "s3_fuse.conv_f2s.weight" in sd and "s5.pathway1_res2.branch2.c_bn.weight" in sd
    module, variables = convert.from_torch("slowfast_r50_8x8", sd, num_classes=400)
    _assert_parity(torch, model, module, variables, alpha=4, seed=2)


def test_r50_4x16_parity(torch, hub):
    model = _reference(torch, hub, 8, seed=3)
    module, variables = convert.from_torch("slowfast_r50_4x16", _state_dict(model))
    assert module.alpha == 8
    _assert_parity(torch, model, module, variables, alpha=8, seed=4)


def test_conversion_names_missing_and_misshaped_tensors(torch, hub):
    sd = _state_dict(_reference(torch, hub, 4, seed=5))
    del sd["blocks.2.multipathway_fusion.norm.running_var"]
    with pytest.raises(convert.ConversionError, match="multipathway_fusion.norm.running_var"):
        convert.from_torch("slowfast_r50_8x8", sd)
    sd = _state_dict(_reference(torch, hub, 4, seed=5))
    with pytest.raises(convert.ConversionError, match="shape mismatch"):
        convert.from_torch("slowfast_tiny", sd)


def test_tiny_slowfast_trains_as_student_and_teaches(tiny_data_dir, tmp_path):
    from vkd_jax import stages, train

    config = tiny_config(tiny_data_dir)
    config.train.num_steps = 2
    spec = stages.trained_spec(config)
    spec.name, spec.variant = "slowfast", "tiny"
    summary = train.run(config, train.Stage("slowfast_student", str(tmp_path / "sf"), spec,
                                            stages.supervised_loss(config.loss), 2))  # fmt: skip
    assert summary["model"] == "slowfast/tiny" and 0.0 <= summary["top1"] <= 1.0
    teacher = config.teachers.cnn
    teacher.name, teacher.variant = "slowfast", "tiny"
    teacher.checkpoint = str(tmp_path / "sf" / "model")
    loss = stages.supervised_loss(config.loss)
    loss.kd_weight, loss.kd_teachers = 1.0, ("cnn",)
    loss.feature_kd_weight, loss.feature_kd.teacher = 1.0, "cnn"  # Reads its last stage.
    stage = train.Stage("distill_from_slowfast", str(tmp_path / "kd"), config.student, loss, 2,
                        teachers={"cnn": teacher})  # fmt: skip
    summary = train.run(config, stage)
    assert np.isfinite(summary["top1"])
