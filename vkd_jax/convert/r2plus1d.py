"""torchvision R(2+1)D checkpoints -> :mod:`vkd_jax.models.r2plus1d` variables.

Converts the ``state_dict`` of ``torchvision.models.video.r2plus1d_18`` (and of a
``VideoResNet`` built the same way with blocks ``[3, 4, 6, 3]``: R(2+1)D-34) key
by key; every key must be used exactly once and every variable filled, or
:class:`~vkd_jax.convert.common.ConversionError` names the culprit.

Key map (torchvision -> flax, ``I`` stage 1..4, ``J`` block)::

    stem.0 / stem.1 / stem.3 / stem.4       -> stem/conv_s, bn_s, conv_t, bn_t
    layerI.J.conv1.0.0 / .0.1 / .0.3        -> layerI_J/conv1/conv_s, bn_s, conv_t
    layerI.J.conv1.1                        -> layerI_J/bn1     (conv2 likewise)
    layerI.J.downsample.0 / .1              -> layerI_J/downsample_conv, downsample_bn
    fc                                      -> fc
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from vkd_jax.convert import common
from vkd_jax.models import r2plus1d


def convert(
    state_dict: Mapping[str, np.ndarray], *, variant: str, num_classes: int | None = None
) -> tuple[r2plus1d.R2Plus1D, dict[str, Any]]:
    """Converts a torchvision-layout R(2+1)D ``state_dict``.

    Args:
      state_dict: torchvision ``VideoResNet`` tensors as NumPy arrays.
      variant: ``"18"`` or ``"34"`` (a key of ``r2plus1d.VARIANTS``).
      num_classes: expected classifier size; read off ``fc.weight`` when None.

    Returns:
      ``(module, {"params": ..., "batch_stats": ...})`` in float32.

    Raises:
      ConversionError: missing/unexpected keys, shape mismatches, or a head size
        that differs from ``num_classes``.
    """
    found = common.head_classes(state_dict, "fc.weight", num_classes)
    reader = common.StateDictReader(state_dict)
    module = r2plus1d.create(variant, num_classes=found)
    out = common.VariableBuilder(reader)

    def conv(dst: tuple[str, ...], key: str) -> None:
        out.put(("params", *dst, "kernel"), f"{key}.weight", common.conv3d_kernel)

    def bn(dst: tuple[str, ...], key: str) -> None:
        out.put(("params", *dst, "scale"), f"{key}.weight")
        out.put(("params", *dst, "bias"), f"{key}.bias")
        out.put(("batch_stats", *dst, "mean"), f"{key}.running_mean")
        out.put(("batch_stats", *dst, "var"), f"{key}.running_var")

    conv(("stem", "conv_s"), "stem.0")
    bn(("stem", "bn_s"), "stem.1")
    conv(("stem", "conv_t"), "stem.3")
    bn(("stem", "bn_t"), "stem.4")
    for i, num_blocks in enumerate(module.layers):
        for j in range(num_blocks):
            src, dst = f"layer{i + 1}.{j}", f"layer{i + 1}_{j}"
            for k in (1, 2):
                conv((dst, f"conv{k}", "conv_s"), f"{src}.conv{k}.0.0")
                bn((dst, f"conv{k}", "bn_s"), f"{src}.conv{k}.0.1")
                conv((dst, f"conv{k}", "conv_t"), f"{src}.conv{k}.0.3")
                bn((dst, f"bn{k}"), f"{src}.conv{k}.1")
            # Present exactly where the model projects the shortcut; a checkpoint that
            # disagrees fails the variable check below either way.
            if f"{src}.downsample.0.weight" in reader:
                conv((dst, "downsample_conv"), f"{src}.downsample.0")
                bn((dst, "downsample_bn"), f"{src}.downsample.1")
    out.put(("params", "fc", "kernel"), "fc.weight", common.linear_kernel)
    out.put(("params", "fc", "bias"), "fc.bias")
    return module, out.finish(module, (1, *r2plus1d.STANDARD_INPUT[variant], 3))


# Architecture name -> converter, collected by ``vkd_jax.convert.from_torch``.
ARCHS = {
    f"r2plus1d_{v}": common.for_variant(convert, v, f"torchvision-layout R(2+1)D-{v}.")
    for v in ("18", "34")
}
