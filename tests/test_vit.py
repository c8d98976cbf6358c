"""Plain video ViT: shapes, feature keys, parameter counts, dtypes, jit and grad."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import model_testing
import numpy as np
import pytest

from vkd_jax import evaluation, models
from vkd_jax.models import vit

CLIP = (2, 8, 32, 32, 3)


@pytest.fixture(scope="module")
def tiny():
    model = models.get_model("vit", variant="tiny", num_classes=10)
    video = jax.random.normal(jax.random.key(1), CLIP)
    variables = model_testing.random_transformer_variables(model, video)
    outputs = jax.jit(model.apply)(variables, video)
    return model, variables, video, outputs


def _expected_keys(depth: int, grid, width: int, batch: int = 2):
    shapes = {f"block{i}": (batch, *grid, width) for i in range(depth)}
    shapes.update({f"stage{s}": (batch, *grid, width) for s in (1, 2, 3, 4)})
    shapes["pre_logits"] = (batch, width)
    return shapes


def test_registry():
    assert set(models.variants("vit")) == {"tiny", "mini", "small", "base"}
    assert models.standard_input("vit", "base") == (16, 224, 224)
    assert models.standard_input("vit", "tiny") is None
    with pytest.raises(ValueError, match="bogus"):
        vit.create("tiny", num_classes=3, bogus=1)


def test_tiny_eval_shapes_and_keys(tiny):
    _, variables, _, (logits, feats) = tiny
    assert logits.shape == (2, 10)
    assert {k: v.shape for k, v in feats.items()} == _expected_keys(4, (4, 4, 4), 32)
    assert np.all(np.isfinite(logits))
    assert 10_000 < evaluation.count_params(variables) < 100_000


def test_mini_tokenizes_4x4x4_tubelets_and_pools_the_mean():
    model = models.get_model("vit", variant="mini", num_classes=12)
    clip = jax.ShapeDtypeStruct((2, 8, 32, 32, 3), jnp.float32)
    variables = jax.eval_shape(lambda v: model.init(jax.random.key(0), v, train=False), clip)
    logits, feats = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, clip)
    assert logits.shape == (2, 12)
    assert feats["stage4"].shape == (2, 2, 8, 8, 32)  # 128 tokens
    assert feats["pre_logits"].shape == (2, 32)
    assert "cls" not in variables["params"]  # no class token: the mean of the tokens


def test_stages_are_quarter_depth_blocks():
    model = vit.create("small", num_classes=5)
    assert model.stage_ends() == [2, 5, 8, 11]
    assert vit.create("tiny", num_classes=5).stage_ends() == [0, 1, 2, 3]


@pytest.mark.parametrize("pool,pos", [("cls", "learned"), ("mean", "sincos")])
def test_pooling_and_position_options(pool, pos):
    # Training with dropout is checked over the zoo in test_model_contract.py; here the
    # options' parameters and features.
    model = vit.create("tiny", num_classes=10, pool=pool, pos_embedding=pos)
    video = jnp.zeros(CLIP)
    variables = jax.eval_shape(model.init, jax.random.key(0), video)
    assert ("pos_embedding" in variables["params"]) == (pos == "learned")
    assert ("cls" in variables["params"]) == (pool == "cls")
    _, feats = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, video)
    assert {k: v.shape for k, v in feats.items()} == _expected_keys(4, (4, 4, 4), 32)


def _vit_param_count(width, depth, mlp_ratio, tubelet, input_size, classes):
    """Closed form: tubelet conv, learned positions, class token, blocks, norm, head."""
    d, hidden = width, int(width * mlp_ratio)
    tokens = int(np.prod([s // t for s, t in zip(input_size, tubelet)]))
    embed = int(np.prod(tubelet)) * 3 * d + d
    block = (d * 3 * d + 3 * d) + (d * d + d) + (d * hidden + hidden) + (hidden * d + d) + 4 * d
    return embed + tokens * d + d + depth * block + 2 * d + d * classes + classes


def test_full_size_param_counts():
    for variant, count in (("small", 22_641_040), ("base", 87_749_008)):
        hp = vit.VARIANTS[variant]
        assert count == _vit_param_count(
            hp["width"], hp["depth"], hp["mlp_ratio"], hp["tubelet"], hp["input_size"], 400
        )
        model = models.get_model("vit", variant=variant, num_classes=400)
        shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 224, 224, 3)))
        assert evaluation.count_params(shapes) == count, variant


def test_other_clip_sizes_run(tiny):
    model, variables, _, _ = tiny
    video = jax.random.normal(jax.random.key(4), (1, 4, 48, 32, 3))
    logits, feats = jax.jit(model.apply)(variables, video)
    assert feats["block0"].shape == (1, 2, 6, 4, 32)
    assert np.all(np.isfinite(logits))


def test_sincos_embeddings():
    emb = vit.sincos_3d((4, 3, 5), 32)
    assert emb.shape == (60, 32)
    assert np.all(np.abs(emb) <= 1.0)
    # Every position gets its own embedding.
    assert len({row.tobytes() for row in emb}) == 60


def test_bfloat16_close_to_float32(tiny):
    _, variables, video, (out32, feats32) = tiny
    model16 = vit.create("tiny", num_classes=10, dtype=jnp.bfloat16)
    out16, _ = jax.jit(model16.apply)(variables, video)
    assert out16.dtype == jnp.float32  # The model contract: float32 logits.
    out16 = np.asarray(out16, np.float32)
    assert np.all(np.isfinite(out16))
    scale = float(np.abs(out32).max())
    np.testing.assert_allclose(out16, out32, atol=0.05 * scale + 0.02)
