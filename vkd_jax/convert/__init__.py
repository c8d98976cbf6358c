"""PyTorch checkpoints -> Flax variables, with numerical parity.

``from_torch(arch, state_dict)`` maps a PyTorch ``state_dict`` (torchvision,
pytorchvideo, PySlowFast or "Resource Efficient 3D CNNs" layouts) onto the
variables of the matching ``vkd_jax.models`` module. Any missing key,
unexpected key or shape mismatch raises :class:`ConversionError` naming it:
a model is never half loaded.
"""

from __future__ import annotations

import importlib
from typing import Any

from vkd_jax.convert.common import ConversionError, unwrap_state_dict

# Converter modules; each exposes ``ARCHS: dict[str, Callable]`` mapping an
# architecture name to ``fn(state_dict, *, num_classes) -> (module, variables)``.
_CONVERTER_MODULES = ("x3d", "mvit", "r2plus1d", "shufflenet3d", "slowfast")

__all__ = ["ConversionError", "architectures", "from_torch", "unwrap_state_dict"]


def _registry() -> dict[str, Any]:
    archs: dict[str, Any] = {}
    for name in _CONVERTER_MODULES:
        try:
            module = importlib.import_module(f"vkd_jax.convert.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"vkd_jax.convert.{name}":
                continue
            raise
        archs.update(module.ARCHS)
    return archs


def architectures() -> list[str]:
    """Architecture names :func:`from_torch` accepts."""
    return sorted(_registry())


def from_torch(arch: str, state_dict: Any, *, num_classes: int | None = None):
    """Converts a PyTorch checkpoint to ``(flax_module, variables)``.

    Args:
      arch: architecture name, one of :func:`architectures` (e.g. ``"x3d_m"``,
        ``"mvit_v2_s"``, ``"r2plus1d_18"``).
      state_dict: a ``state_dict`` or a checkpoint dict wrapping one under
        ``model_state``/``state_dict``/``model`` (``module.`` prefixes are
        stripped); values may be torch tensors or NumPy arrays.
      num_classes: expected class count; by default read off the head's shape.
        A mismatch with the checkpoint raises :class:`ConversionError`.

    Returns:
      ``(module, variables)`` with ``variables = {"params": ..., "batch_stats": ...}``.
    """
    registry = _registry()
    if arch not in registry:
        raise ConversionError(
            f"Unknown architecture {arch!r}; known architectures: {sorted(registry)}"
        )
    return registry[arch](unwrap_state_dict(state_dict), num_classes=num_classes)
