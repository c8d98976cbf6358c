"""Efficient-3DCNNs 3D-ShuffleNet checkpoints -> :mod:`vkd_jax.models.shufflenet3d`.

Converts ``state_dict`` s of ``models/shufflenet.py`` (v1, groups 3) and
``models/shufflenetv2.py`` (v2) from okankop/Efficient-3DCNNs (Kopuklu et al.,
ICCVW 2019); their released checkpoints wrap it as ``{"state_dict": ...}`` with
``module.`` prefixes, which ``vkd_jax.convert.from_torch`` strips. Every key
must be used exactly once and every variable filled, or
:class:`~vkd_jax.convert.common.ConversionError` names the culprit.

Key map (reference -> flax)::

    conv1.0 / conv1.1                       -> conv1/conv, conv1/bn
    v1: layerI.J.convK / layerI.J.bnK       -> layerI_J/convK/conv, layerI_J/convK/bn
    v2: features.N.banch1.{0,1,2,3}         -> features_N/branch1/{dw,pw}/{conv,bn}
        features.N.banch2.{0,1,3,4,5,6}     -> features_N/branch2/{pw1,dw,pw2}/{conv,bn}
        conv_last.0 / conv_last.1           -> conv_last/conv, conv_last/bn
    classifier.1                            -> classifier
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from vkd_jax.convert import common
from vkd_jax.models import shufflenet3d

_WIDTHS = ("0.25", "0.5", "1.0", "1.5", "2.0")


def convert(
    state_dict: Mapping[str, np.ndarray], *, variant: str, num_classes: int | None = None
) -> tuple[shufflenet3d.ShuffleNetV1 | shufflenet3d.ShuffleNetV2, dict[str, Any]]:
    """Converts a reference-layout 3D-ShuffleNet ``state_dict``.

    Args:
      state_dict: reference ``ShuffleNet``/``ShuffleNetV2`` tensors as NumPy arrays.
      variant: a key of ``shufflenet3d.VARIANTS`` (e.g. ``"v2_1.0"``).
      num_classes: expected classifier size; read off ``classifier.1.weight`` when None.

    Returns:
      ``(module, {"params": ..., "batch_stats": ...})`` in float32.

    Raises:
      ConversionError: missing/unexpected keys, shape mismatches, or a head size
        that differs from ``num_classes``.
    """
    found = common.head_classes(state_dict, "classifier.1.weight", num_classes)
    reader = common.StateDictReader(state_dict)
    module = shufflenet3d.create(variant, num_classes=found)
    out = common.VariableBuilder(reader)

    def conv_bn(dst: tuple[str, ...], conv_key: str, bn_key: str) -> None:
        out.put(("params", *dst, "conv", "kernel"), f"{conv_key}.weight", common.conv3d_kernel)
        out.put(("params", *dst, "bn", "scale"), f"{bn_key}.weight")
        out.put(("params", *dst, "bn", "bias"), f"{bn_key}.bias")
        out.put(("batch_stats", *dst, "bn", "mean"), f"{bn_key}.running_mean")
        out.put(("batch_stats", *dst, "bn", "var"), f"{bn_key}.running_var")

    conv_bn(("conv1",), "conv1.0", "conv1.1")
    if isinstance(module, shufflenet3d.ShuffleNetV1):
        for i, n in enumerate(module.repeats):
            for j in range(n):
                src, dst = f"layer{i + 1}.{j}", f"layer{i + 1}_{j}"
                for k in (1, 2, 3):
                    conv_bn((dst, f"conv{k}"), f"{src}.conv{k}", f"{src}.bn{k}")
    else:
        for index in range(sum(module.repeats)):
            src, dst = f"features.{index}", f"features_{index}"
            # Only the stride-2 (first) unit of a stage has banch1.
            if f"{src}.banch1.0.weight" in reader:
                conv_bn((dst, "branch1", "dw"), f"{src}.banch1.0", f"{src}.banch1.1")
                conv_bn((dst, "branch1", "pw"), f"{src}.banch1.2", f"{src}.banch1.3")
            for name, (c, b) in zip(("pw1", "dw", "pw2"), ((0, 1), (3, 4), (5, 6))):
                conv_bn((dst, "branch2", name), f"{src}.banch2.{c}", f"{src}.banch2.{b}")
        conv_bn(("conv_last",), "conv_last.0", "conv_last.1")
    out.put(("params", "classifier", "kernel"), "classifier.1.weight", common.linear_kernel)
    out.put(("params", "classifier", "bias"), "classifier.1.bias")
    # Any clip the model accepts will do for the abstract shapes (v1 needs T % 16 == 0).
    return module, out.finish(module, (1, 16, 112, 112, 3))


# Architecture name -> converter, collected by ``vkd_jax.convert.from_torch``.
ARCHS = {
    f"shufflenet3d_{version}_{width}": common.for_variant(
        convert, f"{version}_{width}", f"Efficient-3DCNNs 3D-ShuffleNet {version} {width}x."
    )
    for version in ("v1", "v2")
    for width in _WIDTHS
}
