"""X3D (Feichtenhofer, CVPR 2020): shapes, parameter counts, batch norm, dtypes, jit/grad."""

from __future__ import annotations

import functools
import math

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch_compat

from vkd_jax import models
from vkd_jax.models import layers, x3d

FEATURE_KEYS = {"stem", "stage1", "stage2", "stage3", "stage4", "head_conv", "pre_logits"}

# pytorchvideo's sum(p.numel()) at 400 classes (also checked live below when torch is there).
FULL_PARAMS = {"xs": 3_794_274, "s": 3_794_274, "m": 3_794_274, "l": 6_153_384}


def _count(tree) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def _abstract(module, shape=(1, 4, 32, 32, 3)):
    return jax.eval_shape(
        functools.partial(module.init, train=False),
        jax.random.key(0),
        jax.ShapeDtypeStruct(shape, jnp.float32),
    )


@functools.cache
def _tiny(variant: str, num_classes: int = 10):
    module = x3d.create(variant, num_classes=num_classes)
    clip = jax.random.normal(jax.random.key(1), (2, 8, 32, 32, 3))
    # The rbg PRNG compiles the initializers several times faster than threefry on CPU.
    key = jax.random.key(0, impl="rbg")
    variables = jax.jit(functools.partial(module.init, train=False))(key, clip)
    return module, variables, clip


@functools.partial(jax.jit, static_argnums=(0, 3))
def _run(module, variables, clip, train: bool, dropout_key=None):
    """Jitted apply (eager op-by-op dispatch is far slower on CPU); new batch_stats or None."""
    if not train:
        return module.apply(variables, clip, train=False), None
    out, state = module.apply(
        variables, clip, train=True, mutable=["batch_stats"], rngs={"dropout": dropout_key}
    )
    return out, state["batch_stats"]


@pytest.mark.parametrize("variant", ["tiny", "tiny_m"])
@pytest.mark.parametrize("train", [False, True])
def test_tiny_shapes_and_feature_keys(variant, train):
    module, variables, clip = _tiny(variant)
    stages = module.stage_dims()
    stem = layers.round_width(module.stem_dim_in, module.width_factor)
    (logits, feats), _ = _run(module, variables, clip, train, jax.random.key(2))
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32
    assert set(feats) == FEATURE_KEYS
    assert feats["stem"].shape == (2, 8, 16, 16, stem)
    for i, size in enumerate([8, 4, 2, 1]):
        assert feats[f"stage{i + 1}"].shape == (2, 8, size, size, stages[i][2])
    assert feats["head_conv"].shape == (2, 8, 1, 1, stages[-1][1])
    assert feats["pre_logits"].shape == (2, module.head_dim_out)
    for v in jax.tree.leaves((logits, feats)):
        assert np.isfinite(np.asarray(v)).all()


@pytest.mark.parametrize("variant", ["mini", "mini_m"])
def test_mini_variants_keep_4x4_and_read_out_linearly(variant):
    module, variables, clip = _tiny(variant)
    tiny = x3d.create(variant.replace("mini", "tiny"), num_classes=10)
    assert module.stage_dims() == tiny.stage_dims()  # tiny's widths and depths
    (logits, feats), stats = _run(module, variables, clip, True, jax.random.key(2))
    assert logits.shape == (2, 10)
    assert set(feats) == FEATURE_KEYS - {"head_conv"}
    sizes = [feats[f"stage{i}"].shape[2] for i in range(1, 5)]
    assert sizes == [8, 4, 4, 4]  # stages 3 and 4 keep stage 2's resolution
    assert feats["pre_logits"].shape == (2, module.stage_dims()[-1][2])
    np.testing.assert_allclose(feats["pre_logits"], feats["stage4"].mean(axis=(1, 2, 3)), atol=1e-5)
    flat = flax.traverse_util.flatten_dict(variables["params"], sep="/")
    assert not any("/se/" in k for k in flat)  # no squeeze-and-excitation
    last_bn = [v for k, v in flat.items() if k.endswith("norm_c/scale")]
    assert last_bn and all(np.all(np.asarray(v) == 1.0) for v in last_bn)  # not zero-init
    head_block = f"blocks_{len(module.stage_dims()) + 1}/"
    head = [k for k in flat if k.startswith(head_block)]
    assert sorted(head) == [f"{head_block}proj/{n}" for n in ("bias", "kernel")]
    assert stats is not None


def test_unknown_head_is_refused():
    module = x3d.create("tiny", num_classes=3, head="mlp")
    with pytest.raises(ValueError, match="head must be 'x3d' or 'linear'"):
        jax.eval_shape(
            lambda x: module.init(jax.random.key(0), x, train=False),
            jax.ShapeDtypeStruct((1, 4, 16, 16, 3), jnp.float32),
        )


def test_any_input_size():
    module, variables, _ = _tiny("tiny")
    clip = jax.ShapeDtypeStruct((1, 5, 24, 40, 3), jnp.float32)
    logits, feats = jax.eval_shape(functools.partial(module.apply, train=False), variables, clip)
    assert logits.shape == (1, 10)
    # Each stride 2 rounds up, as PyTorch's conv with padding 1: 24 -> 12 -> 6 -> 3 -> 2 -> 1.
    assert feats["stage4"].shape[:4] == (1, 5, 1, 2)
    assert feats["stage3"].shape[:4] == (1, 5, 2, 3)


def test_tiny_sizes():
    tiny = _count(_abstract(x3d.create("tiny", num_classes=10))["params"])
    tiny_m = _count(_abstract(x3d.create("tiny_m", num_classes=10))["params"])
    assert 20_000 < tiny < 80_000
    assert 2 * tiny <= tiny_m <= 4 * tiny


@pytest.mark.parametrize("variant", ["xs", "s", "m", "l"])
def test_full_size_param_counts(variant):
    module = models.get_model("x3d", variant=variant, num_classes=400)
    variables = _abstract(module)
    assert _count(variables["params"]) == FULL_PARAMS[variant]
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))
    assert models.standard_input("x3d", variant) == x3d.STANDARD_INPUT[variant]


def test_x3d_s_standard_shapes():
    module = x3d.create("s", num_classes=400)
    t, h, w = x3d.STANDARD_INPUT["s"]
    logits, feats = jax.eval_shape(
        lambda v, x: module.apply(v, x, train=False),
        _abstract(module),
        jax.ShapeDtypeStruct((1, t, h, w, 3), jnp.float32),
    )
    assert logits.shape == (1, 400)
    assert feats["stem"].shape == (1, 13, 80, 80, 24)
    assert [feats[f"stage{i}"].shape[-2:] for i in range(1, 5)] == [
        (40, 24),
        (20, 48),
        (10, 96),
        (5, 192),
    ]
    assert feats["head_conv"].shape == (1, 13, 5, 5, 432)
    assert feats["pre_logits"].shape == (1, 2048)


def test_param_counts_match_pytorchvideo():
    torch_compat.import_pytorchvideo_hub()
    from pytorchvideo.models.x3d import create_x3d

    for variant, size in x3d.STANDARD_INPUT.items():
        kw = dict(depth_factor=x3d.VARIANTS[variant]["depth_factor"])
        ref = create_x3d(input_clip_length=size[0], input_crop_size=size[1], **kw)
        assert sum(p.numel() for p in ref.parameters()) == FULL_PARAMS[variant], variant
    for variant in ("tiny", "tiny_m"):
        hp = x3d.VARIANTS[variant]
        ref = create_x3d(
            input_clip_length=8,
            input_crop_size=32,
            model_num_class=10,
            width_factor=hp["width_factor"],
            depth_factor=hp["depth_factor"],
            head_dim_out=hp["head_dim_out"],
        )
        ours = _count(_abstract(x3d.create(variant, num_classes=10))["params"])
        assert ours == sum(p.numel() for p in ref.parameters()), variant


def test_tiny_matches_unmodified_pytorchvideo_at_its_input_size():
    """Our global pooling equals pytorchvideo's fixed AvgPool3d at the size it is built for."""
    torch = torch_compat.import_torch()
    torch_compat.import_pytorchvideo_hub()
    from pytorchvideo.models.x3d import create_x3d

    from vkd_jax.convert import x3d as convert_x3d

    hp = x3d.VARIANTS["tiny"]
    torch.manual_seed(0)
    ref = create_x3d(
        input_clip_length=8,
        input_crop_size=32,
        model_num_class=10,
        width_factor=hp["width_factor"],
        depth_factor=hp["depth_factor"],
        head_dim_out=hp["head_dim_out"],
        head_activation=None,
    ).eval()
    for m in ref.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0.0, 0.2)
            m.running_mean.normal_(0.0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
        elif isinstance(m, torch.nn.Linear):
            m.weight.data.normal_(0.0, 0.1)
    sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    module, variables = convert_x3d.convert("tiny", sd)
    clip = np.random.default_rng(0).standard_normal((2, 8, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        want = ref(torch.from_numpy(clip.transpose(0, 4, 1, 2, 3).copy())).numpy()
    (got, _), _ = _run(module, variables, clip, False)
    assert np.abs(want).max() > 0.05
    np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-5)


def test_batch_stats_update_only_in_train_mode():
    module, variables, clip = _tiny("tiny")
    # Asking for batch_stats as mutable in eval mode must still leave them alone.
    _, eval_state = jax.jit(lambda v: module.apply(v, clip, train=False, mutable=["batch_stats"]))(
        variables
    )
    jax.tree.map(np.testing.assert_array_equal, eval_state["batch_stats"], variables["batch_stats"])
    _, new_stats = _run(module, variables, clip, True, jax.random.key(0))
    before = jax.tree.leaves(variables["batch_stats"])
    after = jax.tree.leaves(new_stats)
    assert len(before) == len(after) > 0
    assert all(not np.allclose(a, b) for a, b in zip(after, before))


def test_batch_norm_pytorch_semantics():
    x = np.random.default_rng(0).normal(2.0, 3.0, (4, 3, 2, 2, 5)).astype(np.float32)
    bn = layers.BatchNorm()
    variables = bn.init(jax.random.key(0), x, train=True)
    np.testing.assert_array_equal(variables["batch_stats"]["mean"], np.zeros(5))
    y, state = bn.apply(variables, x, train=True, mutable=["batch_stats"])
    mean, var = x.mean((0, 1, 2, 3)), x.var((0, 1, 2, 3))
    n = x.size // 5
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5), atol=1e-5)
    np.testing.assert_allclose(state["batch_stats"]["mean"], 0.1 * mean, rtol=1e-5)
    # PyTorch keeps the unbiased variance in the running estimate.
    want_var = 0.9 + 0.1 * var * n / (n - 1)
    np.testing.assert_allclose(state["batch_stats"]["var"], want_var, rtol=1e-5)
    y_eval = bn.apply({**variables, **state}, x, train=False)
    want = (x - 0.1 * mean) / np.sqrt(want_var + 1e-5)
    np.testing.assert_allclose(y_eval, want, atol=1e-5)



def test_bfloat16_close_to_float32():
    module, variables, clip = _tiny("tiny_m")
    # Trained-like BN (non-zero residual branches) so bfloat16 runs through every layer.
    params = jax.tree_util.tree_map_with_path(
        lambda p, x: jnp.ones_like(x) if p[-1].key == "scale" else x, variables["params"]
    )
    variables = {**variables, "params": params}
    bf16 = x3d.create("tiny_m", num_classes=10, dtype=jnp.bfloat16)
    (ref, ref_feats), _ = _run(module, variables, clip, False)
    (out, feats), _ = _run(bf16, variables, clip, False)
    assert out.dtype == jnp.float32 and feats["stage4"].dtype == jnp.bfloat16
    assert np.isfinite(np.asarray(out)).all()
    scale = float(jnp.abs(ref).max())
    assert scale > 0
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=0.05 * scale, rtol=0)
    a = np.asarray(feats["pre_logits"]).ravel()
    b = np.asarray(ref_feats["pre_logits"]).ravel()
    assert np.corrcoef(a, b)[0, 1] > 0.99



def test_get_model_and_overrides():
    module = models.get_model("x3d", variant="tiny", num_classes=5, dropout_rate=0.0)
    assert isinstance(module, x3d.X3D) and module.dropout_rate == 0.0
    assert set(models.variants("x3d")) == {"xs", "s", "m", "l", "tiny", "tiny_m", "mini", "mini_m"}
    assert models.standard_input("x3d", "tiny") is None
    with pytest.raises(ValueError, match="widht_factor"):
        x3d.create("tiny", num_classes=5, widht_factor=1.0)


def test_round_width_matches_pytorchvideo():
    torch_compat.import_pytorchvideo_hub()
    from pytorchvideo.layers.utils import round_repeats, round_width

    for width in (3, 8, 12, 24, 48, 54, 96, 108, 216, 432):
        for mult in (0.0625, 0.25, 0.5, 0.75, 1.0, 2.0, 2.25):
            assert layers.round_width(width, mult) == round_width(width, mult)
    for reps in (1, 2, 3, 5):
        for mult in (0.2, 0.4, 1.0, 2.2, 5.0):
            assert layers.round_repeats(reps, mult) == round_repeats(reps, mult)
