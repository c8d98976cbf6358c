"""SlowFast checkpoints (pytorchvideo or PySlowFast) -> :mod:`vkd_jax.models.slowfast`.

Two key layouts are recognised:

* **pytorchvideo** (``create_slowfast``; hub ``slowfast_r50``):
  ``blocks.0.multipathway_blocks.{0,1}.conv|norm`` (Slow, Fast stems),
  ``blocks.{k}.multipathway_fusion.conv_fast_to_slow|norm`` (fusions after the stem and
  stages 1-3), ``blocks.{s}.multipathway_blocks.{p}.res_blocks.{j}.branch1_conv|
  branch1_norm|branch2.conv_a|norm_a|conv_b|norm_b|conv_c|norm_c``, ``blocks.6.proj``.
* **PySlowFast** (``slowfast/models/video_model_builder.py:SlowFast``):
  ``s1.pathway{p}_stem.conv|bn``, ``s{k}_fuse.conv_f2s|bn``,
  ``s{s+1}.pathway{p}_res{j}.branch1|branch1_bn|branch2.a|a_bn|b|b_bn|c|c_bn``,
  ``head.projection``.

Every key is used exactly once; missing, unexpected and misshaped tensors raise
:class:`~vkd_jax.convert.common.ConversionError` naming them. The checkpoint's
pathways take ``[slow, fast]`` inputs; ours takes the Fast clip and picks the Slow
frames itself with PackPathway's rule (``models.slowfast.slow_indices``), so the
outputs match for the same clip.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from vkd_jax.convert import common
from vkd_jax.models import slowfast

_LEAF = {"kernel": "weight", "bias": "bias", "scale": "weight", "mean": "running_mean",
         "var": "running_var"}  # fmt: skip
_PATHWAY = {"slow": 0, "fast": 1}
_BLOCK = {
    "pytorchvideo": {"branch1_conv": "branch1_conv", "branch1_norm": "branch1_norm",
                     **{f"{m}_{x}": f"branch2.{m}_{x}" for m in ("conv", "norm") for x in "abc"}},
    "pyslowfast": {"branch1_conv": "branch1", "branch1_norm": "branch1_bn",
                   **{f"conv_{x}": f"branch2.{x}" for x in "abc"},
                   **{f"norm_{x}": f"branch2.{x}_bn" for x in "abc"}},
}  # fmt: skip


def detect_layout(keys) -> str:
    """``"pytorchvideo"`` or ``"pyslowfast"`` from the state_dict's keys."""
    markers = {
        "pytorchvideo": ("pytorchvideo", "blocks.0.multipathway_blocks."),
        "pyslowfast": ("PySlowFast", "s1.pathway0_stem."),
    }
    return common.detect_layout(keys, markers, "SlowFast")


def torch_key(path: tuple[str, ...], layout: str, num_stages: int = 4) -> str:
    """The checkpoint key of our variable at ``path`` (without the collection).

    E.g. ``("fast_stage2_0", "conv_a", "kernel")`` ->
    ``"blocks.2.multipathway_blocks.1.res_blocks.0.branch2.conv_a.weight"`` (pytorchvideo)
    or ``"s3.pathway1_res0.branch2.a.weight"`` (PySlowFast).
    """
    top, leaf = path[0], _LEAF[path[-1]]
    pv = layout == "pytorchvideo"
    if top == "proj":
        module = f"blocks.{num_stages + 2}.proj" if pv else "head.projection"
    elif top.startswith("fuse"):
        k, part = int(top[4]), top.split("_")[1]
        if pv:
            module = f"blocks.{k}.multipathway_fusion." + (
                "conv_fast_to_slow" if part == "conv" else "norm")  # fmt: skip
        else:
            module = f"s{k + 1}_fuse." + ("conv_f2s" if part == "conv" else "bn")
    elif "_stem_" in top:
        p, part = _PATHWAY[top.split("_")[0]], top.split("_")[2]
        module = (f"blocks.0.multipathway_blocks.{p}.{part}" if pv
                  else f"s1.pathway{p}_stem." + ("conv" if part == "conv" else "bn"))  # fmt: skip
    else:  # "<pathway>_stage<i>_<j>", then the block's layer.
        pathway, stage, block = top.split("_")
        p, i, j = _PATHWAY[pathway], int(stage[len("stage") :]), int(block)
        inner = _BLOCK[layout][path[1]]
        module = (f"blocks.{i}.multipathway_blocks.{p}.res_blocks.{j}.{inner}" if pv
                  else f"s{i + 1}.pathway{p}_res{j}.{inner}")  # fmt: skip
    return f"{module}.{leaf}"


@functools.lru_cache(maxsize=8)
def _abstract_variables(module: slowfast.SlowFast):
    # Variable shapes do not depend on the input size: a small clip suffices.
    clip = jax.ShapeDtypeStruct((1, module.alpha * 2, 32, 32, 3), jnp.float32)
    return jax.eval_shape(functools.partial(module.init, train=False), jax.random.key(0), clip)


def convert(variant: str, state_dict: Mapping[str, np.ndarray], *, num_classes: int | None = None):
    """Converts a SlowFast ``state_dict`` to ``(module, variables)`` for ``variant``.

    Args:
      variant: ``r50_8x8``, ``r50_4x16`` or ``tiny`` (alpha is the variant's: both R50
        settings have the same tensors, so the checkpoint cannot tell them apart).
      state_dict: PyTorch state_dict (pytorchvideo or PySlowFast layout) as NumPy arrays.
      num_classes: expected classes; read from the projection when ``None``.

    Returns:
      ``(module, {"params": ..., "batch_stats": ...})``.

    Raises:
      ConversionError: unknown layout, class-count mismatch, or any missing,
        unexpected or misshaped tensor (named).
    """
    state_dict = {k: common.to_numpy(v) for k, v in state_dict.items()}
    layout = detect_layout(state_dict)
    hparams = slowfast.VARIANTS[variant]
    num_stages = len(hparams["depths"])
    proj = torch_key(("proj", "kernel"), layout, num_stages)
    module = slowfast.create(
        variant, num_classes=common.head_classes(state_dict, proj, num_classes)
    )
    variables = common.fill_by_rank(
        _abstract_variables(module),
        state_dict,
        lambda path: torch_key(path, layout, num_stages),
        f"SlowFast {variant}",
    )
    return module, variables


ARCHS: dict[str, Callable] = {
    f"slowfast_{v}": common.for_variant(convert, v, f"Converts a SlowFast {v} checkpoint.")
    for v in slowfast.VARIANTS
}
