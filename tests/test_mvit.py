"""MViTv2 model: shapes, feature keys, parameter counts, dtypes, jit and grad.

Numerical parity with torchvision is in test_convert_mvit.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import model_testing
import numpy as np
import pytest
import torch_compat

from vkd_jax import evaluation, models
from vkd_jax.models import layers, mvit

CLIP = (2, 8, 32, 32, 3)


@pytest.fixture(scope="module")
def tiny():
    model = models.get_model("mvit", variant="tiny", num_classes=10)
    video = jax.random.normal(jax.random.key(1), CLIP)
    variables = model_testing.random_transformer_variables(model, video)
    outputs = jax.jit(model.apply)(variables, video)
    return model, variables, video, outputs


EXPECTED_TINY = {
    "block0": (2, 4, 8, 8, 16),
    "block1": (2, 4, 4, 4, 32),
    "block2": (2, 4, 4, 4, 32),
    "block3": (2, 4, 2, 2, 64),
    "stage1": (2, 4, 8, 8, 16),
    "stage2": (2, 4, 4, 4, 32),
    "stage3": (2, 4, 2, 2, 64),
    "pre_logits": (2, 64),
}


def test_registry_and_standard_input():
    assert models.variants("mvit") == ["v2_s", "v2_b", "tiny"]
    assert models.standard_input("mvit", "v2_s") == (16, 224, 224)
    assert models.standard_input("mvit", "tiny") is None
    assert mvit.create("tiny", num_classes=3).input_size == (8, 32, 32)
    with pytest.raises(ValueError, match="not_a_field"):
        mvit.create("tiny", num_classes=3, not_a_field=1)


def test_tiny_eval_shapes_and_keys(tiny):
    _, variables, _, (logits, feats) = tiny
    assert logits.shape == (2, 10)
    assert {k: v.shape for k, v in feats.items()} == EXPECTED_TINY
    assert np.all(np.isfinite(logits))
    assert 50_000 < evaluation.count_params(variables) < 200_000


def test_cpu_logits_with_rel_pos_equal_the_broadcast_form(tiny):
    """On the CPU path the rel-pos term rides inside the logits' product (appended
    bias rows and one-hot key codes); outputs, features and gradients equal the
    product-plus-broadcast form (rounded otherwise), on a non-square grid whose keys
    are pooled, class token included."""
    model, variables, video, _ = tiny
    q = jax.random.normal(jax.random.key(2), (2, 3, 1 + 2 * 4 * 3, 8))
    k = jax.random.normal(jax.random.key(3), (2, 3, 1 + 1 * 2 * 3, 8))
    tables = [jax.random.normal(jax.random.key(4 + i), (n, 8)) for i, n in enumerate((3, 7, 5))]
    args = ((2, 4, 3), (1, 2, 3), *tables)
    want = jnp.einsum("bnqc,bnkc->bnqk", q * 0.3, k)
    want = want + jnp.pad(mvit._rel_pos_bias(q, *args), ((0, 0), (0, 0), (1, 0), (1, 0)))
    got = mvit._logits_with_rel_pos_cpu(q, k, 0.3, *args)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

    def run(mode):
        def loss(v):
            logits, feats = model.apply(v, video)
            return jnp.sum(logits**2) + jnp.sum(feats["stage2"] ** 2), (logits, feats)

        with layers.convolutions(mode):
            return jax.jit(jax.grad(loss, has_aux=True))(variables)

    (g_cpu, out_cpu), (g_native, out_native) = run("cpu"), run("native")
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-4)
    jax.tree.map(close, out_cpu, out_native)
    # Gradients to the largest one's scale: some are rounding noise around zero.
    scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(g_native))
    jax.tree.map(lambda a, b: close(a / scale, b / scale), g_cpu, g_native)
    with layers.convolutions("cpu"):
        hlo = jax.jit(model.apply).lower(variables, video).as_text()
    assert "reduce_precision" in hlo  # The fusion fence of the CPU form.


def test_full_size_param_counts():
    # 34,537,744 is torchvision's published count for mvit_v2_s (MViT_V2_S_Weights
    # meta "num_params"); v2_b is checked against torchvision's MViT class built like
    # MViTv2-B in test_convert_mvit.py.
    for variant, count in (("v2_s", 34_537_744), ("v2_b", 51_230_128)):
        model = models.get_model("mvit", variant=variant, num_classes=400)
        t, h, w = models.standard_input("mvit", variant)
        shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, t, h, w, 3)))
        assert evaluation.count_params(shapes) == count, variant


def test_v2_s_feature_shapes_at_standard_input():
    model = mvit.create("v2_s", num_classes=400)
    video = jax.ShapeDtypeStruct((1, 16, 224, 224, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), video)
    logits, feats = jax.eval_shape(model.apply, variables, video)
    assert logits.shape == (1, 400)
    assert feats["stage1"].shape == (1, 8, 56, 56, 96)
    assert feats["stage2"].shape == (1, 8, 28, 28, 192)
    assert feats["stage3"].shape == (1, 8, 14, 14, 384)
    assert feats["stage4"].shape == (1, 8, 7, 7, 768)
    assert feats["pre_logits"].shape == (1, 768)
    assert sorted(k for k in feats if k.startswith("block")) == sorted(
        f"block{i}" for i in range(16)
    )


def test_other_clip_sizes_run(tiny):
    model, variables, _, _ = tiny
    # Rel-pos tables built for 8x32x32 are interpolated for a 4x48x32 clip. Shapes
    # only: the numerics of that path are checked against torchvision on a
    # non-square clip in test_convert_mvit.py.
    video = jax.ShapeDtypeStruct((1, 4, 48, 32, 3), jnp.float32)
    logits, feats = jax.eval_shape(model.apply, variables, video)
    assert logits.shape == (1, 10)
    assert feats["block0"].shape == (1, 2, 12, 8, 16)
    assert feats["stage3"].shape == (1, 2, 3, 2, 64)


def test_bfloat16_close_to_float32(tiny):
    _, variables, video, (out32, feats32) = tiny
    model16 = mvit.create("tiny", num_classes=10, dtype=jnp.bfloat16)
    out16, feats16 = jax.jit(model16.apply)(variables, video)
    assert out16.dtype == jnp.float32  # The model contract: float32 logits.
    assert jax.tree.leaves(variables)[0].dtype == jnp.float32
    out16 = np.asarray(out16, np.float32)
    assert np.all(np.isfinite(out16))
    scale = float(np.abs(out32).max())
    np.testing.assert_allclose(out16, out32, atol=0.05 * scale + 0.05)
    f16 = np.asarray(feats16["pre_logits"], np.float32)
    np.testing.assert_allclose(f16, feats32["pre_logits"], atol=0.1)


def test_block_settings_match_torchvision_mvit_v2_s():
    """The compact configuration expands to torchvision's per-block mvit_v2_s table."""
    torch = torch_compat.import_torch()
    torch_compat.import_torchvision()
    from torchvision.models.video import mvit as tv_mvit

    with torch.device("meta"):
        ref = tv_mvit.mvit_v2_s()
    ours = mvit.block_settings(**{k: mvit.VARIANTS["v2_s"][k] for k in mvit.BLOCK_CONFIG_KEYS})
    assert len(ours) == len(ref.blocks) == 16
    for cfg, block in zip(ours, ref.blocks):
        attn = block.attn
        assert cfg.num_heads == attn.num_heads
        assert cfg.input_channels == attn.qkv.in_features
        assert cfg.output_channels == attn.output_dim
        assert cfg.stride_q == tuple(attn.pool_q.pool.stride)
        assert cfg.kernel_q == tuple(attn.pool_q.pool.kernel_size)
        assert cfg.stride_kv == tuple(attn.pool_k.pool.stride)
        assert cfg.kernel_kv == tuple(attn.pool_v.pool.kernel_size)
