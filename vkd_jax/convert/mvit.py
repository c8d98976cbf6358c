"""MViTv2 checkpoints (torchvision or PySlowFast layout) -> ``vkd_jax.models.mvit``.

Two key layouts are recognised automatically:

* torchvision (``torchvision.models.video.mvit_v2_s``): ``conv_proj``,
  ``pos_encoding.class_token``, ``blocks.N.attn.{qkv,project.0}``,
  ``blocks.N.attn.pool_q.{pool,norm_act.0}``, ``blocks.N.mlp.{0,3}``,
  ``blocks.N.project``, ``norm``, ``head.1``;
* PySlowFast (``slowfast/models/video_model_builder.py`` ``MViT`` with
  ``attention.py``): ``patch_embed.proj``, ``cls_token`` ``(1, 1, D)``,
  ``blocks.N.attn.{qkv,proj}``, ``blocks.N.attn.pool_q`` +
  ``blocks.N.attn.norm_q``, ``blocks.N.mlp.{fc1,fc2}``, ``blocks.N.proj``,
  ``norm``, ``head.projection``.

Both keep ``blocks.N.norm1/norm2`` and ``blocks.N.attn.rel_pos_{h,w,t}``. The
clip size the model is built for is read off the first block's
relative-position tables (16x224x224 for the released MViTv2-S, 32x224x224 for
MViTv2-B 32x3). Note that PySlowFast's head applies a softmax at test time;
the converted model returns the logits before it.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from vkd_jax.convert.common import (
    ConversionError,
    StateDictReader,
    check_and_cast,
    conv3d_kernel,
    head_classes,
    linear_kernel,
)
from vkd_jax.models import mvit

# Flax module names that differ per layout: (torchvision, PySlowFast).
_RENAMES: dict[str, tuple[str, str]] = {
    "conv_proj": ("conv_proj", "patch_embed.proj"),
    "attn.project": ("attn.project.0", "attn.proj"),
    "mlp.fc1": ("mlp.0", "mlp.fc1"),
    "mlp.fc2": ("mlp.3", "mlp.fc2"),
    "head": ("head.1", "head.projection"),
}


def detect_layout(state_dict: dict[str, np.ndarray]) -> str:
    """Returns ``"torchvision"`` or ``"pyslowfast"`` from the stem's key."""
    if "conv_proj.weight" in state_dict:
        return "torchvision"
    if "patch_embed.proj.weight" in state_dict:
        return "pyslowfast"
    raise ConversionError(
        "Not an MViT checkpoint: expected 'conv_proj.weight' (torchvision) or "
        "'patch_embed.proj.weight' (PySlowFast)"
    )


def _torch_key(path: tuple[str, ...], layout: str) -> tuple[str, Callable | None]:
    """Flax parameter path -> (state_dict key, transform) for one layout."""
    *modules, leaf = path
    modules = [m.replace("blocks_", "blocks.") for m in modules]
    if leaf == "class_token":
        if layout == "torchvision":
            return "pos_encoding.class_token", None
        return "cls_token", lambda w: np.reshape(w, (-1,))
    if leaf.startswith("rel_pos_"):
        return ".".join([*modules, leaf]), None
    name = ".".join(modules)
    # Pooling: torchvision nests conv and norm in a Pool module, PySlowFast keeps
    # them side by side as pool_x / norm_x.
    for which in ("q", "k", "v"):
        prefix = f"attn.pool_{which}."
        if prefix in name + ".":
            block, _, part = name.partition(prefix)
            if layout == "torchvision":
                name = block + prefix + ("pool" if part == "pool" else "norm_act.0")
            else:
                name = block + (f"attn.pool_{which}" if part == "pool" else f"attn.norm_{which}")
            break
    else:
        for ours, theirs in _RENAMES.items():
            target = theirs[0] if layout == "torchvision" else theirs[1]
            if name == ours or name.endswith("." + ours):
                name = name[: len(name) - len(ours)] + target
                break
        if layout == "pyslowfast" and name.endswith(".project") and name.startswith("blocks."):
            name = name[: -len("project")] + "proj"
    suffix = {"kernel": "weight", "scale": "weight", "bias": "bias"}[leaf]
    transform = None
    if leaf == "kernel":
        transform = lambda w: conv3d_kernel(w) if w.ndim == 5 else linear_kernel(w)
    return f"{name}.{suffix}", transform


def _input_size(state_dict: dict[str, np.ndarray]) -> tuple[int, int, int]:
    """Clip size ``(T, H, W)`` the first block's rel-pos tables were built for.

    Block 0 has no query stride, so its tables have ``2 * grid - 1`` rows with
    ``grid = size // patch_stride`` (patch stride 2x4x4); the key is the same in
    both layouts.
    """
    lengths = {}
    for axis in "th":
        key = f"blocks.0.attn.rel_pos_{axis}"
        if key not in state_dict:
            raise ConversionError(f"Missing key in checkpoint: {key!r}")
        lengths[axis] = int(np.shape(state_dict[key])[0])
    spatial = 4 * (lengths["h"] + 1) // 2
    return (2 * (lengths["t"] + 1) // 2, spatial, spatial)


def convert(
    state_dict: dict[str, np.ndarray],
    *,
    variant: str,
    num_classes: int | None = None,
    **overrides,
) -> tuple[mvit.MViT, dict]:
    """Converts an MViTv2 ``state_dict`` of either layout to ``(module, variables)``.

    Args:
      state_dict: unwrapped ``state_dict`` (NumPy values).
      variant: a key of ``vkd_jax.models.mvit.VARIANTS`` describing the checkpoint.
      num_classes: expected classes; ``None`` reads them off the head.
      **overrides: hyperparameters passed to ``mvit.create`` (``input_size`` is
        read off the checkpoint unless given).

    Returns:
      ``(module, {"params": ...})``.

    Raises:
      ConversionError: on a missing, unexpected or misshaped key, or a class
        count that differs from ``num_classes``.
    """
    layout = detect_layout(state_dict)
    head_key = _torch_key(("head", "bias"), layout)[0]
    ckpt_classes = head_classes(state_dict, head_key, num_classes)
    overrides.setdefault("input_size", _input_size(state_dict))
    module = mvit.create(variant, num_classes=ckpt_classes, **overrides)
    t, h, w = module.input_size
    expected = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, t, h, w, 3)))
    reader = StateDictReader(state_dict)
    params = {}
    for path, want in traverse_util.flatten_dict(expected["params"]).items():
        key, transform = _torch_key(path, layout)
        raw = reader.take(key)
        value = transform(raw) if transform is not None else raw
        if tuple(np.shape(value)) != tuple(want.shape):
            raise ConversionError(
                f"shape mismatch for {key!r} (params/{'/'.join(path)}): checkpoint gives "
                f"{tuple(np.shape(raw))} (PyTorch layout), i.e. {tuple(np.shape(value))}, "
                f"model expects {tuple(want.shape)}"
            )
        params[path] = value
    reader.finish()
    variables = {"params": traverse_util.unflatten_dict(params)}
    return module, check_and_cast(variables, {"params": expected["params"]})


def convert_mvit_v2_s(state_dict: dict[str, np.ndarray], *, num_classes: int | None = None):
    """torchvision ``mvit_v2_s`` / PySlowFast MViTv2-S -> ``(MViT, {"params": ...})``."""
    return convert(state_dict, variant="v2_s", num_classes=num_classes)


def convert_mvit_v2_b(state_dict: dict[str, np.ndarray], *, num_classes: int | None = None):
    """PySlowFast MViTv2-B (or a torchvision ``MViT`` built like it) -> ``(MViT, variables)``."""
    return convert(state_dict, variant="v2_b", num_classes=num_classes)


ARCHS = {"mvit_v2_s": convert_mvit_v2_s, "mvit_v2_b": convert_mvit_v2_b}
