"""Importing the PyTorch reference implementations for parity tests.

torchvision's PyPI wheel fails to import beside the CPU build of torch
(``operator torchvision::nms does not exist``, raised while registering fake
kernels in ``torchvision._meta_registrations``). Those registrations only
matter for torch.compile's meta tracing, never for the eager reference models
we compare against, so when -- and only when -- the plain import fails we put
an empty stub module in their place and import again. pytorchvideo's X3D
imports torchvision and needs the same treatment.
"""

from __future__ import annotations

import importlib
import sys
import types

import pytest


def _drop(prefix: str) -> None:
    for name in list(sys.modules):
        if name == prefix or name.startswith(prefix + "."):
            del sys.modules[name]


def import_torch():
    """Returns torch, or skips the calling test with the reason."""
    return pytest.importorskip("torch", reason="torch not installed (pip install '.[torch]')")


def import_torchvision():
    """Returns torchvision (stubbing its meta registrations only if needed)."""
    import_torch()
    try:
        return importlib.import_module("torchvision")
    except ModuleNotFoundError:
        pytest.skip("torchvision not installed (pip install '.[torch]')")
    except RuntimeError as e:
        if "does not exist" not in str(e):
            raise
    _drop("torchvision")
    sys.modules["torchvision._meta_registrations"] = types.ModuleType(
        "torchvision._meta_registrations"
    )
    return importlib.import_module("torchvision")


def import_pytorchvideo_hub():
    """Returns ``pytorchvideo.models.hub`` (X3D builders), or skips."""
    import_torchvision()
    try:
        return importlib.import_module("pytorchvideo.models.hub")
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("pytorchvideo"):
            pytest.skip("pytorchvideo not installed (pip install '.[torch]')")
        raise


def randomize_batch_norm(torch, model, seed: int = 0, *, linear_std: float | None = None):
    """In place: non-trivial BatchNorm3d affine parameters and running statistics (what a
    parity test must not get right by accident), and with ``linear_std`` the Linear layers'
    weights N(0, linear_std^2) and biases N(0, 0.1^2) (logits large enough to compare).
    Returns the model."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.normal_(0.0, 0.2, generator=gen)
                m.running_mean.normal_(0.0, 0.2, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
            elif isinstance(m, torch.nn.Linear) and linear_std is not None:
                m.weight.normal_(0.0, linear_std, generator=gen)
                m.bias.normal_(0.0, 0.1, generator=gen)
    return model


def rename_keys(state_dict: dict, rules, prefixes: tuple[str, ...]) -> dict:
    """``state_dict`` with every key rewritten by the ``(pattern, replacement)`` regex
    ``rules`` in order (e.g. pytorchvideo -> PySlowFast names); every new key must start
    with one of ``prefixes``, and no two keys may collide."""
    import re

    out = {}
    for key, value in state_dict.items():
        new = key
        for pattern, repl in rules:
            new = re.sub(pattern, repl, new)
        assert new.startswith(prefixes), (key, new)
        out[new] = value
    assert len(out) == len(state_dict)
    return out
