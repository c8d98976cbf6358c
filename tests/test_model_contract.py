"""The model contract of ``vkd_jax.models`` (its docstring), checked for every family's tiny
variants: one test over the zoo instead of a copy per family."""

from __future__ import annotations

import inspect
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vkd_jax import models

NUM_CLASSES = 6
# (T, H, W) of each family's test clip: 3D-ShuffleNet v1 needs ceil(T / 2) divisible by 8.
_CLIP = {"shufflenet3d/v1_tiny": (16, 32, 32)}
TINY = [
    f"{family}/{variant}"
    for family in models.families()
    for variant in models.variants(family)
    if "tiny" in variant
]


def _build(name: str, **overrides):
    family, variant = name.split("/")
    t, h, w = _CLIP.get(name, (8, 32, 32))
    model = models.get_model(
        family, variant=variant, num_classes=NUM_CLASSES, input_size=(t, h, w), **overrides
    )
    video = jax.random.normal(jax.random.key(1), (2, t, h, w, 3))
    return model, video


def _variables(model, video) -> dict:
    """Random float32 variables with O(1) activations, drawn with NumPy in the structure
    ``init`` gives (``eval_shape`` traces init without compiling it)."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), video)
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        name = getattr(path[-1], "key", "")
        if name in ("scale", "var"):
            return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
        fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 50
        return (rng.normal(size=leaf.shape) / np.sqrt(fan_in)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def test_the_zoo_has_a_tiny_variant_per_family():
    assert {name.split("/")[0] for name in TINY} == set(models.families())


@pytest.mark.parametrize("name", TINY)
def test_train_is_keyword_only(name):
    model, video = _build(name)
    param = inspect.signature(type(model).__call__).parameters["train"]
    assert param.kind is inspect.Parameter.KEYWORD_ONLY and param.default is False
    variables = _variables(model, video)
    with pytest.raises(TypeError):
        jax.eval_shape(lambda v, x: model.apply(v, x, False), variables, video)


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_returns_float32_logits_and_documented_features(name, dtype):
    model, video = _build(name, dtype=dtype)
    shapes = jax.eval_shape(model.init, jax.random.key(0), video)
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(shapes))
    logits, features = jax.eval_shape(lambda v, x: model.apply(v, x), shapes, video)
    assert logits.shape == (2, NUM_CLASSES) and logits.dtype == jnp.float32
    assert features["pre_logits"].ndim == 2 and features["pre_logits"].shape[0] == 2
    stages = sorted(int(k[5:]) for k in features if k.startswith("stage") and k[5:].isdigit())
    assert len(stages) >= 3 and stages == list(range(1, len(stages) + 1)), sorted(features)
    for s in stages:
        assert features[f"stage{s}"].ndim == 5 and features[f"stage{s}"].shape[0] == 2


def _zero_by_construction(name: str, key: str) -> bool:
    """Parameters whose exact gradient is zero: the bias of ShuffleNet's depthwise
    BatchNorm ('conv2' of a v1 unit, 'dw' of a v2 branch). No nonlinearity follows it,
    only a 1x1 convolution (linear) and a train-mode BatchNorm, which subtracts the
    per-channel mean and with it any per-channel shift the bias adds."""
    return name.startswith("shufflenet3d") and bool(
        re.search(r"\['(conv2|dw)'\]\['bn'\]\['bias'\]", key)
    )


@pytest.mark.parametrize("name", TINY)
def test_jit_grad_and_dropout_rng(name):
    # Dropout switched on (the tiny variants may have none), so the rng must matter.
    model, video = _build(name, dropout_rate=0.5)
    variables = _variables(model, video)
    params, state = variables["params"], {k: v for k, v in variables.items() if k != "params"}
    labels = jnp.array([1, 3])

    def loss_fn(params, key):
        (logits, features), new_state = model.apply(
            {"params": params, **state},
            video,
            train=True,
            mutable=list(state),
            rngs={"dropout": key},
        )
        logp = jax.nn.log_softmax(logits)
        ce = -jnp.take_along_axis(logp, labels[:, None], axis=1).mean()
        # A feature term too: feature distillation reads them, and some parameters (MViT's
        # last query pooling) shape only patch tokens that the class-token head never reads.
        return ce + 1e-3 * sum(jnp.mean(f.astype(jnp.float32) ** 2) for f in features.values()), (
            logits,
            new_state,
        )

    grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    (loss, (logits, new_state)), grads = grad_fn(params, jax.random.key(1))
    assert np.isfinite(float(loss)) and logits.dtype == jnp.float32
    for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
        key = jax.tree_util.keystr(path)
        assert np.all(np.isfinite(g)), key
        if _zero_by_construction(name, key):
            # Rounding leaves 0 or about 1e-9 (measured: 0 on one x86 CPU, not on another).
            assert np.max(np.abs(g)) < 1e-5, key
            continue
        assert np.any(np.asarray(g) != 0), f"no gradient reaches {key}"
    if state:  # Batch statistics move in training.
        before, after = jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(new_state)
        assert any(not np.allclose(a, b) for a, b in zip(before, after))
    # Same dropout key, same logits; another key, other logits (same compiled function).
    (_, (same, _)), _ = grad_fn(params, jax.random.key(1))
    (_, (other, _)), _ = grad_fn(params, jax.random.key(2))
    np.testing.assert_array_equal(np.asarray(logits), np.asarray(same))
    assert not np.allclose(np.asarray(logits), np.asarray(other))
    # Evaluation needs no rng and ignores it.
    apply_eval = jax.jit(lambda v, x: model.apply(v, x)[0])
    np.testing.assert_array_equal(
        np.asarray(apply_eval(variables, video)),
        np.asarray(
            jax.jit(lambda v, x: model.apply(v, x, rngs={"dropout": jax.random.key(5)})[0])(
                variables, video
            )
        ),
    )
    # Training without the dropout rng is an error naming it.
    with pytest.raises(Exception, match="dropout"):
        jax.eval_shape(
            lambda v, x: model.apply(v, x, train=True, mutable=list(state)), variables, video
        )
