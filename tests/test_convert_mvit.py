"""Parity of the converted MViTv2 against torchvision's reference implementation.

torchvision's ``mvit_v2_s`` is built for 16x224x224 clips; a forward at that
size takes far too long on a shared test CPU, so the reference is the genuine
``mvit_v2_s`` architecture (its own block configuration, 34.4M parameters)
built for a smaller clip (8x64x64) by overriding the size torchvision passes
to its builder, plus torchvision's ``MViT`` class with a tiny configuration on
a non-square clip (which exercises rel-pos table interpolation).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch_compat
from flax import traverse_util

from vkd_jax import convert
from vkd_jax.convert import mvit as convert_mvit
from vkd_jax.models import mvit

torch = torch_compat.import_torch()
torch_compat.import_torchvision()
from torchvision.models.video import mvit as tv_mvit  # noqa: E402

CLIP = (8, 64, 64)  # (T, H, W) of the reduced-size mvit_v2_s parity check.


def _randomize(model) -> None:
    """Non-trivial values for every parameter.

    torchvision's init leaves biases and LayerNorm shifts at zero and rel-pos
    tables/class token tiny; parity with such weights would not test them.
    """
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            is_norm_scale = ("norm" in name) and name.endswith("weight") and p.ndim == 1
            p.copy_(1.0 + 0.3 * noise if is_norm_scale else 0.2 * noise)


def _mvit_v2_s_at(monkeypatch_size, t: int, h: int, w: int):
    """torchvision's mvit_v2_s with its own block config, built for a (t, h, w) clip."""
    original = tv_mvit._mvit

    def sized(**kwargs):
        kwargs.update(spatial_size=(h, w), temporal_size=t)
        return original(**kwargs)

    monkeypatch_size.setattr(tv_mvit, "_mvit", sized)
    # Built on the meta device and materialized uninitialized: _randomize fills
    # every parameter, so torchvision's (slow, 34M-value) init would be wasted.
    with torch.device("meta"):
        model = tv_mvit.mvit_v2_s()
    monkeypatch_size.setattr(tv_mvit, "_mvit", original)
    return model.to_empty(device="cpu")


def _reference_forward(model, clip: np.ndarray):
    """Logits, per-block token grids and pre-logits of the torch model, via hooks."""
    feats: dict[str, np.ndarray] = {}

    def block_hook(index):
        def hook(_module, _inputs, output):
            x, (t, h, w) = output
            x = x[:, 1:].reshape(x.shape[0], t, h, w, x.shape[-1])
            feats[f"block{index}"] = x.numpy()

        return hook

    handles = [b.register_forward_hook(block_hook(i)) for i, b in enumerate(model.blocks)]
    handles.append(
        model.norm.register_forward_hook(
            lambda _m, _i, out: feats.__setitem__("pre_logits", out[:, 0].numpy())
        )
    )
    with torch.no_grad():
        logits = model(torch.from_numpy(clip.transpose(0, 4, 1, 2, 3))).numpy()
    for h in handles:
        h.remove()
    return logits, feats


def _state_dict(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def reference():
    """Randomized torchvision mvit_v2_s at CLIP, its state_dict and outputs on a clip."""
    mp = pytest.MonkeyPatch()
    try:
        model = _mvit_v2_s_at(mp, *CLIP).eval()
    finally:
        mp.undo()
    _randomize(model)
    clip = np.random.default_rng(0).normal(size=(2, *CLIP, 3)).astype(np.float32)
    logits, feats = _reference_forward(model, clip)
    return _state_dict(model), clip, logits, feats


@pytest.fixture(scope="module")
def converted(reference):
    sd, clip, _, _ = reference
    module, variables = convert.from_torch("mvit_v2_s", sd)
    logits, feats = jax.jit(lambda v, x: module.apply(v, x))(variables, jnp.asarray(clip))
    return module, variables, np.asarray(logits), jax.tree.map(np.asarray, feats)


def test_param_count_matches_torchvision():
    with torch.device("meta"):  # Shapes only: no memory, no init cost.
        tv_count = sum(p.numel() for p in tv_mvit.mvit_v2_s().parameters())
    assert tv_count == 34_537_744
    model = mvit.create("v2_s", num_classes=400)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 224, 224, 3)))
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)) == tv_count


def test_logits_parity(reference, converted):
    _, _, ref_logits, _ = reference
    module, _, logits, _ = converted
    assert module.input_size == CLIP
    assert logits.shape == ref_logits.shape == (2, 400)
    assert np.abs(ref_logits).max() > 1.0  # The comparison is not between near-zeros.
    np.testing.assert_allclose(logits, ref_logits, atol=1e-4, rtol=0)


def test_feature_parity(reference, converted):
    _, _, _, ref_feats = reference
    module, _, _, feats = converted
    assert len([k for k in ref_feats if k.startswith("block")]) == 16
    for key, ref in ref_feats.items():
        assert feats[key].shape == ref.shape, key
        scale = max(1.0, float(np.abs(ref).max()))
        np.testing.assert_allclose(feats[key], ref, atol=1e-4 * scale, rtol=0, err_msg=key)
    # Stages end at the blocks before each stride (1, 3, 14) and at the last block.
    for stage, block in zip((1, 2, 3, 4), (0, 2, 13, 15)):
        np.testing.assert_array_equal(feats[f"stage{stage}"], feats[f"block{block}"])
    assert feats["stage4"].shape == (2, 4, 2, 2, 768)


def _to_pyslowfast(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Renames a torchvision MViTv2 state_dict to PySlowFast's MViT layout.

    Written from PySlowFast's slowfast/models/{video_model_builder,attention}.py,
    independently of the converter's own table.
    """
    rules = [
        (r"^conv_proj\.", "patch_embed.proj."),
        (r"^head\.1\.", "head.projection."),
        (r"\.attn\.project\.0\.", ".attn.proj."),
        (r"\.attn\.pool_([qkv])\.pool\.weight$", r".attn.pool_\1.weight"),
        (r"\.attn\.pool_([qkv])\.norm_act\.0\.", r".attn.norm_\1."),
        (r"\.mlp\.0\.", ".mlp.fc1."),
        (r"\.mlp\.3\.", ".mlp.fc2."),
        (r"^(blocks\.\d+)\.project\.", r"\1.proj."),
    ]
    out = {}
    for key, value in sd.items():
        if key == "pos_encoding.class_token":
            out["cls_token"] = value.reshape(1, 1, -1)
            continue
        for pattern, repl in rules:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def test_pyslowfast_layout_gives_same_params(reference, converted):
    sd, _, _, _ = reference
    _, tv_vars, _, _ = converted
    sf = _to_pyslowfast(sd)
    assert "blocks.1.attn.norm_q.weight" in sf and "cls_token" in sf
    assert convert_mvit.detect_layout(sf) == "pyslowfast"
    module, sf_vars = convert.from_torch("mvit_v2_s", sf, num_classes=400)
    assert module.input_size == CLIP
    a = traverse_util.flatten_dict(tv_vars, sep="/")
    b = traverse_util.flatten_dict(sf_vars, sep="/")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_tiny_config_non_square_parity():
    """torchvision's MViT class with the tiny configuration on a 6x32x48 clip.

    A non-square grid makes the spatial rel-pos tables (sized by max(H, W))
    disagree with the query/key grids, so the linear interpolation runs.
    """
    cfg = tv_mvit.MSBlockConfig
    blocks = [
        cfg(1, 16, 16, [3, 3, 3], [3, 3, 3], [1, 1, 1], [1, 4, 4]),
        cfg(2, 16, 32, [3, 3, 3], [3, 3, 3], [1, 2, 2], [1, 2, 2]),
        cfg(2, 32, 32, [3, 3, 3], [3, 3, 3], [1, 1, 1], [1, 2, 2]),
        cfg(4, 32, 64, [3, 3, 3], [3, 3, 3], [1, 2, 2], [1, 1, 1]),
    ]
    t, h, w = 6, 32, 48
    model = tv_mvit.MViT(
        spatial_size=(h, w),
        temporal_size=t,
        block_setting=blocks,
        residual_pool=True,
        residual_with_cls_embed=False,
        rel_pos_embed=True,
        proj_after_attn=True,
        num_classes=7,
    ).eval()
    _randomize(model)
    clip = np.random.default_rng(1).normal(size=(2, t, h, w, 3)).astype(np.float32)
    ref_logits, ref_feats = _reference_forward(model, clip)

    module, variables = convert_mvit.convert(
        _state_dict(model), variant="tiny", input_size=(t, h, w)
    )
    assert module.num_classes == 7
    logits, feats = jax.jit(module.apply)(variables, jnp.asarray(clip))
    np.testing.assert_allclose(np.asarray(logits), ref_logits, atol=1e-4, rtol=0)
    for key, ref in ref_feats.items():
        scale = max(1.0, float(np.abs(ref).max()))
        np.testing.assert_allclose(
            np.asarray(feats[key]), ref, atol=1e-4 * scale, rtol=0, err_msg=key
        )


@pytest.mark.parametrize("n_in,n_out", [(15, 23), (23, 15), (7, 8), (31, 61), (5, 5)])
def test_rel_pos_interpolation_matches_torch(n_in, n_out):
    table = np.random.default_rng(n_in).normal(size=(n_in, 4)).astype(np.float32)
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(table.T[None]), size=n_out, mode="linear"
    )[0].T.numpy()
    ours = mvit._interp_matrix(n_in, n_out) @ table
    # Equal up to float32 rounding of the sampling weights.
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


def test_dropped_key_is_named(reference):
    sd = dict(reference[0])
    del sd["blocks.5.attn.pool_k.norm_act.0.bias"]
    with pytest.raises(
        convert.ConversionError, match=r"blocks\.5\.attn\.pool_k\.norm_act\.0\.bias"
    ):
        convert.from_torch("mvit_v2_s", sd)


def test_unexpected_key_is_named(reference):
    sd = dict(reference[0])
    sd["blocks.3.attn.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(convert.ConversionError, match=r"blocks\.3\.attn\.extra\.weight"):
        convert.from_torch("mvit_v2_s", sd)


def test_wrong_shape_names_param_and_shapes(reference):
    sd = dict(reference[0])
    sd["blocks.4.attn.qkv.weight"] = np.zeros((1152, 380), np.float32)
    with pytest.raises(convert.ConversionError) as err:
        convert.from_torch("mvit_v2_s", sd)
    message = str(err.value)
    assert "blocks.4.attn.qkv.weight" in message
    assert "(1152, 380)" in message and "(384, 1152)" in message


def test_num_classes_mismatch_names_both(reference):
    with pytest.raises(convert.ConversionError, match=r"num_classes=10.*400"):
        convert.from_torch("mvit_v2_s", reference[0], num_classes=10)


def test_not_an_mvit_checkpoint():
    with pytest.raises(convert.ConversionError, match="Not an MViT checkpoint"):
        convert.from_torch("mvit_v2_s", {"conv1.weight": np.zeros((1, 1))})


def test_v2_b_shapes_from_pyslowfast_layout():
    """A torchvision MViT built like MViTv2-B 32x3, renamed to PySlowFast keys, converts.

    Shapes only (no forward): MViTv2-B is 51M parameters.
    """
    spec = mvit.block_settings(
        embed_dim=96, num_heads=1, depth=24, stage_starts=(2, 5, 21), pool_kv_stride=(1, 8, 8)
    )
    blocks = [
        tv_mvit.MSBlockConfig(
            c.num_heads,
            c.input_channels,
            c.output_channels,
            list(c.kernel_q),
            list(c.kernel_kv),
            list(c.stride_q),
            list(c.stride_kv),
        )
        for c in spec
    ]
    with torch.device("meta"):  # Shapes only: no memory, no init cost.
        model = tv_mvit.MViT(
            spatial_size=(224, 224),
            temporal_size=32,
            block_setting=blocks,
            residual_pool=True,
            residual_with_cls_embed=False,
            rel_pos_embed=True,
            proj_after_attn=True,
        )
    # np.zeros is lazily allocated: the 51M values cost nothing until touched.
    sd = _to_pyslowfast({k: np.zeros(v.shape, np.float32) for k, v in model.state_dict().items()})
    module, variables = convert.from_torch("mvit_v2_b", sd)
    assert module.input_size == (32, 224, 224)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables))
    assert n_params == sum(p.numel() for p in model.parameters()) == 51_230_128
