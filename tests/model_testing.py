"""Random variables for model tests, drawn with NumPy in the structure ``model.init`` gives.

``jax.eval_shape`` traces ``init`` completely (any init bug fails here) without compiling
it: XLA's compile of the initializers (truncated normals) costs more CPU on this project's
machines than the forward passes the tests run.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def random_transformer_variables(model, video, seed: int = 0) -> dict:
    """Transformer variables: weights normal / sqrt(fan_in), LayerNorm scales near 1."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), video)
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = jax.tree_util.keystr(path)
        if name.endswith("['scale']"):
            return jnp.asarray(1.0 + 0.1 * rng.normal(size=leaf.shape), leaf.dtype)
        fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 50
        return jnp.asarray(rng.normal(size=leaf.shape) / np.sqrt(fan_in), leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def random_cnn_variables(model, video, seed: int = 0) -> dict:
    """float32 CNN variables: He-normal kernels (activations stay O(1)), batch-norm scales and
    running variances in [0.5, 1.5], biases and running means normal with std 0.1."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), video)
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            return rng.normal(0.0, np.sqrt(2.0 / fan_in), leaf.shape).astype(np.float32)
        if name in ("scale", "var"):
            return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
        return rng.normal(0.0, 0.1, leaf.shape).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)
