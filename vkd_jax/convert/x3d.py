"""X3D checkpoints (pytorchvideo or PySlowFast) -> :mod:`vkd_jax.models.x3d` variables.

Feichtenhofer, "X3D: Expanding Architectures for Efficient Video Recognition",
CVPR 2020. Two key layouts are recognised:

* **pytorchvideo** (``create_x3d``; hub ``x3d_xs`` .. ``x3d_l``): ``blocks.0.conv.conv_t``
  (the *spatial* 1x3x3 conv: pytorchvideo swaps the names), ``blocks.0.conv.conv_xy``
  (the temporal depthwise conv), ``blocks.0.norm``;
  ``blocks.{s}.res_blocks.{j}.branch1_conv|branch1_norm``,
  ``...branch2.conv_a|norm_a|conv_b|norm_b.0|norm_b.1.block.0|norm_b.1.block.2|conv_c|norm_c``;
  ``blocks.5.pool.pre_conv|pre_norm|post_conv[|post_norm]``, ``blocks.5.proj``.
* **PySlowFast** (``slowfast/models/video_model_builder.py:X3D``):
  ``s1.pathway0_stem.conv_xy|conv|bn``;
  ``s{s+1}.pathway0_res{j}.branch1|branch1_bn``,
  ``...branch2.a|a_bn|b|b_bn|se.fc1|se.fc2|c|c_bn``;
  ``head.conv_5|conv_5_bn|lin_5[|lin_5_bn]|projection``. PySlowFast normalizes
  every projection shortcut, including stage 1's width-preserving one that
  pytorchvideo leaves without BN; the model is built to match the checkpoint.

Every key is used exactly once; missing, unexpected and misshaped tensors raise
:class:`~vkd_jax.convert.common.ConversionError` naming them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from vkd_jax.convert import common
from vkd_jax.models import x3d

# Leaf names, ours -> PyTorch.
_LEAF = {
    "kernel": "weight",
    "bias": "bias",
    "scale": "weight",
    "mean": "running_mean",
    "var": "running_var",
}

# Submodules of a residual block, ours -> each layout's (relative to the block).
_BLOCK = {
    "pytorchvideo": {
        "branch1_conv": "branch1_conv",
        "branch1_norm": "branch1_norm",
        "branch2/conv_a": "branch2.conv_a",
        "branch2/norm_a": "branch2.norm_a",
        "branch2/conv_b": "branch2.conv_b",
        "branch2/norm_b": "branch2.norm_b.0",
        "branch2/se/fc1": "branch2.norm_b.1.block.0",
        "branch2/se/fc2": "branch2.norm_b.1.block.2",
        "branch2/conv_c": "branch2.conv_c",
        "branch2/norm_c": "branch2.norm_c",
    },
    "pyslowfast": {
        "branch1_conv": "branch1",
        "branch1_norm": "branch1_bn",
        "branch2/conv_a": "branch2.a",
        "branch2/norm_a": "branch2.a_bn",
        "branch2/conv_b": "branch2.b",
        "branch2/norm_b": "branch2.b_bn",
        "branch2/se/fc1": "branch2.se.fc1",
        "branch2/se/fc2": "branch2.se.fc2",
        "branch2/conv_c": "branch2.c",
        "branch2/norm_c": "branch2.c_bn",
    },
}

# Stem and head submodules, ours -> each layout's full module name.
_STEM = {
    "pytorchvideo": {
        "conv_xy": "blocks.0.conv.conv_t",  # Spatial, despite pytorchvideo's name.
        "conv_t": "blocks.0.conv.conv_xy",  # Temporal depthwise, likewise.
        "norm": "blocks.0.norm",
    },
    "pyslowfast": {
        "conv_xy": "s1.pathway0_stem.conv_xy",
        "conv_t": "s1.pathway0_stem.conv",
        "norm": "s1.pathway0_stem.bn",
    },
}
_HEAD = {
    "pytorchvideo": {
        "pre_conv": "blocks.5.pool.pre_conv",
        "pre_norm": "blocks.5.pool.pre_norm",
        "post_conv": "blocks.5.pool.post_conv",
        "post_norm": "blocks.5.pool.post_norm",
        "proj": "blocks.5.proj",
    },
    "pyslowfast": {
        "pre_conv": "head.conv_5",
        "pre_norm": "head.conv_5_bn",
        "post_conv": "head.lin_5",
        "post_norm": "head.lin_5_bn",
        "proj": "head.projection",
    },
}
_NUM_STAGES = 4


def detect_layout(keys) -> str:
    """``"pytorchvideo"`` or ``"pyslowfast"`` from the state_dict's keys."""
    markers = {
        "pytorchvideo": ("pytorchvideo", "blocks.0.conv."),
        "pyslowfast": ("PySlowFast", "s1.pathway0_stem."),
    }
    return common.detect_layout(keys, markers, "X3D")


def torch_key(path: tuple[str, ...], layout: str) -> str:
    """The PyTorch key of our variable at ``path`` (without the collection name).

    E.g. ``("blocks_2", "res_blocks_0", "branch2", "se", "fc1", "kernel")`` ->
    ``"blocks.2.res_blocks.0.branch2.norm_b.1.block.0.weight"`` (pytorchvideo) or
    ``"s3.pathway0_res0.branch2.se.fc1.weight"`` (PySlowFast).
    """
    top, leaf = path[0], _LEAF[path[-1]]
    index = int(top.split("_")[1])
    if index == 0:
        module = _STEM[layout]["/".join(path[1:-1])]
    elif index == _NUM_STAGES + 1:
        module = _HEAD[layout]["/".join(path[1:-1])]
    else:
        block = int(path[1].split("_")[-1])
        inner = _BLOCK[layout]["/".join(path[2:-1])]
        if layout == "pytorchvideo":
            module = f"blocks.{index}.res_blocks.{block}.{inner}"
        else:
            module = f"s{index + 1}.pathway0_res{block}.{inner}"
    return f"{module}.{leaf}"


def _head_key(layout: str, module: str) -> str:
    return _HEAD[layout][module]


@functools.lru_cache(maxsize=16)
def _abstract_variables(module: x3d.X3D):
    """Shapes/dtypes of ``module``'s variables (cached: modules are hashable dataclasses)."""
    # Variable shapes do not depend on the input size: a small dummy clip suffices.
    return jax.eval_shape(
        functools.partial(module.init, train=False),
        jax.random.key(0),
        jax.ShapeDtypeStruct((1, 4, 32, 32, 3), jnp.float32),
    )


def convert(variant: str, state_dict: Mapping[str, np.ndarray], *, num_classes: int | None = None):
    """Converts an X3D ``state_dict`` to ``(module, variables)`` for ``variant``.

    Args:
      variant: ``xs``, ``s``, ``m`` or ``l`` (depths and widths must match the checkpoint).
      state_dict: PyTorch state_dict (pytorchvideo or PySlowFast layout), values
        NumPy arrays (see :func:`vkd_jax.convert.from_torch` for torch tensors
        and checkpoint wrappers).
      num_classes: expected classes; read from the projection when ``None``.

    Returns:
      ``(module, {"params": ..., "batch_stats": ...})``; ``module`` is the
      :class:`vkd_jax.models.x3d.X3D` of ``variant`` (float32, the variant's
      dropout) with the checkpoint's head options.

    Raises:
      ConversionError: unknown layout, class-count mismatch, or any missing,
        unexpected or misshaped tensor (named).
    """
    state_dict = {k: common.to_numpy(v) for k, v in state_dict.items()}
    layout = detect_layout(state_dict)
    proj_w = _head_key(layout, "proj") + ".weight"
    ckpt_classes = common.head_classes(state_dict, proj_w, num_classes)
    # Options that only show up as extra tensors: BN after lin_5, BN on stage 1's
    # width-preserving strided shortcut (PySlowFast).
    first_shortcut = torch_key(("blocks_1", "res_blocks_0", "branch1_norm", "scale"), layout)
    module = x3d.create(
        variant,
        num_classes=ckpt_classes,
        bn_lin5=_head_key(layout, "post_norm") + ".weight" in state_dict,
        shortcut_norm_always=first_shortcut in state_dict,
    )
    variables = common.fill_by_rank(
        _abstract_variables(module),
        state_dict,
        lambda path: torch_key(path, layout),
        f"X3D-{variant.upper()}",
    )
    return module, variables


# The tiny variants are pytorchvideo create_x3d models with our tiny hyperparameters.
ARCHS: dict[str, Callable] = {
    f"x3d_{v}": common.for_variant(convert, v, f"Converts an X3D-{v.upper()} checkpoint.")
    for v in ("xs", "s", "m", "l", "tiny", "tiny_m")
}
