"""The video model zoo.

The model contract, which every family keeps (``tests/test_model_contract.py`` checks
it for each family's tiny variants):

* A model is a ``flax.linen`` module built by :func:`get_model`;
  ``apply(variables, video, *, train=False)`` takes channels-last video
  ``(B, T, H, W, 3)``. ``train`` is keyword-only (``apply(v, x, True)`` is a
  TypeError), so a positional boolean can never be read as another argument.
* It returns ``(logits, features)``: ``logits`` float32 ``(B, num_classes)`` whatever
  the compute ``dtype`` (losses and metrics then need no casts), ``features`` a dict of
  named intermediates holding at least ``pre_logits`` ``(B, D)`` (the pooled feature the
  classifier reads) and ``stage1`` .. ``stageN`` (``N >= 3``), each ``(B, T', H', W', C)``
  (what feature distillation and CKA read). Each family's module docstring lists its
  other keys.
* ``train=True`` draws dropout and stochastic depth from the ``dropout`` rng (required
  then, ignored otherwise); families with batch norm keep running statistics in the
  ``batch_stats`` collection, updated only with ``train=True`` and
  ``mutable=["batch_stats"]``. Parameters stay float32 under a bfloat16 compute dtype.

Build any model by name::

    from vkd_jax import models
    model = models.get_model("x3d", variant="s", num_classes=400)
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import jax.numpy as jnp

# Family name -> module. Each module exposes ``VARIANTS`` (variant -> hyperparameters),
# ``STANDARD_INPUT`` (full-size variant -> (T, H, W) it was published at) and
# ``create(variant, *, num_classes, dtype, **overrides) -> nn.Module``.
_FAMILIES: Mapping[str, str] = {
    "x3d": "vkd_jax.models.x3d",
    "mvit": "vkd_jax.models.mvit",
    "r2plus1d": "vkd_jax.models.r2plus1d",
    "shufflenet3d": "vkd_jax.models.shufflenet3d",
    "slowfast": "vkd_jax.models.slowfast",
    "vit": "vkd_jax.models.vit",
}


def families() -> list[str]:
    """Names accepted by :func:`get_model`."""
    return sorted(_FAMILIES)


def family_module(name: str) -> ModuleType:
    if name not in _FAMILIES:
        raise ValueError(f"Unknown model family {name!r}; known families: {families()}")
    return importlib.import_module(_FAMILIES[name])


def variants(name: str) -> list[str]:
    """Variants of one family (full-size and tiny)."""
    return list(family_module(name).VARIANTS)


def get_model(
    name: str,
    *,
    variant: str,
    num_classes: int,
    dtype: Any = jnp.float32,
    input_size: tuple[int, int, int] | None = None,
    **overrides: Any,
):
    """Returns the flax module for ``name``/``variant`` with ``num_classes`` outputs.

    Args:
      name: model family, one of :func:`families`.
      variant: a key of the family's ``VARIANTS`` (e.g. ``"s"`` for X3D-S).
      num_classes: size of the classification head.
      dtype: computation dtype (``jnp.bfloat16`` for mixed precision); parameters
        stay float32.
      input_size: ``(T, H, W)`` of the clips the model will see. Families whose
        parameters depend on it (transformers' position tables; their VARIANTS
        carry an ``input_size``) are built for it; convolutional ones ignore it.
      **overrides: hyperparameters that replace the variant's (e.g. ``dropout_rate``).
    """
    module = family_module(name)
    if variant not in module.VARIANTS:
        raise ValueError(
            f"Unknown variant {variant!r} of model family {name!r}; "
            f"known variants: {list(module.VARIANTS)}"
        )
    if input_size is not None and "input_size" in module.VARIANTS[variant]:
        overrides.setdefault("input_size", tuple(int(d) for d in input_size))
    return module.create(variant, num_classes=num_classes, dtype=dtype, **overrides)


def standard_input(name: str, variant: str) -> tuple[int, int, int] | None:
    """(T, H, W) the full-size variant was published at, or None for tiny ones."""
    return family_module(name).STANDARD_INPUT.get(variant)
