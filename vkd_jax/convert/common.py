"""Shared machinery for PyTorch -> Flax conversion.

Layout conventions: PyTorch video tensors are ``(B, C, T, H, W)``, ours are
``(B, T, H, W, C)``. Kernels translate as

* ``Conv3d`` weight ``(O, I/g, kt, kh, kw)`` -> flax ``(kt, kh, kw, I/g, O)``
* ``Linear`` weight ``(O, I)`` -> flax ``(I, O)``
* ``BatchNorm`` ``weight/bias/running_mean/running_var`` -> ``params.scale/bias``
  and ``batch_stats.mean/var``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from vkd_jax import errors

_WRAPPER_KEYS = ("model_state", "state_dict", "model", "module")


# Defined in the leaf module vkd_jax.errors; kept importable from here.
ConversionError = errors.ConversionError


def to_numpy(value: Any) -> np.ndarray:
    """Torch tensor (any device/dtype) or array-like -> float32/int NumPy array."""
    if hasattr(value, "detach"):  # a torch.Tensor; torch is optional here.
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        value = value.numpy()
    return np.asarray(value)


def unwrap_state_dict(obj: Any) -> dict[str, np.ndarray]:
    """Finds the state_dict inside common checkpoint wrappers; strips ``module.``."""
    if not isinstance(obj, Mapping):
        raise ConversionError(
            f"Expected a state_dict (a mapping of names to tensors), got {type(obj).__name__}"
        )
    while True:
        nested = [k for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)]
        if not nested:
            break
        obj = obj[nested[0]]
    out = {}
    for key, value in obj.items():
        if not hasattr(value, "shape"):
            continue  # e.g. optimizer step counters or metadata next to the weights.
        while key.startswith("module."):
            key = key[len("module.") :]
        out[key] = to_numpy(value)
    if not out:
        raise ConversionError("The checkpoint holds no tensors")
    return out


def head_classes(state_dict: Mapping[str, Any], key: str, num_classes: int | None) -> int:
    """Class count of the checkpoint's classifier ``key``, checked against ``num_classes``.

    Raises:
      ConversionError: the key is missing, or ``num_classes`` is given and differs.
    """
    if key not in state_dict:
        raise ConversionError(f"Missing key in checkpoint: {key!r}")
    found = int(np.shape(state_dict[key])[0])
    if num_classes is not None and num_classes != found:
        raise ConversionError(
            f"num_classes={num_classes} was requested but the checkpoint's head ({key}) "
            f"has {found} classes"
        )
    return found


def conv3d_kernel(w: np.ndarray) -> np.ndarray:
    """``(O, I/g, kt, kh, kw)`` -> ``(kt, kh, kw, I/g, O)``."""
    return np.transpose(w, (2, 3, 4, 1, 0))


def conv2d_kernel(w: np.ndarray) -> np.ndarray:
    """``(O, I/g, kh, kw)`` -> ``(kh, kw, I/g, O)``."""
    return np.transpose(w, (2, 3, 1, 0))


def linear_kernel(w: np.ndarray) -> np.ndarray:
    """``(O, I)`` -> ``(I, O)``."""
    return np.transpose(w, (1, 0))


class StateDictReader:
    """Reads a state_dict key by key and insists every key is used exactly once.

    Usage::

        reader = StateDictReader(sd)
        w = reader.take("conv1.weight", conv3d_kernel)
        ...
        reader.finish()  # raises if any key was never taken
    """

    def __init__(self, state_dict: Mapping[str, np.ndarray]):
        self._sd = dict(state_dict)
        self._used: set[str] = set()

    def __contains__(self, key: str) -> bool:
        return key in self._sd

    def keys(self):
        return self._sd.keys()

    def take(self, key: str, transform: Callable[[np.ndarray], np.ndarray] | None = None):
        if key not in self._sd:
            raise ConversionError(f"Missing key in checkpoint: {key!r}")
        self._used.add(key)
        value = self._sd[key]
        return transform(value) if transform is not None else value

    def skip(self, key: str) -> None:
        """Marks a key as deliberately unused (e.g. ``num_batches_tracked``)."""
        self._used.add(key)

    def finish(self) -> None:
        unused = sorted(
            k for k in self._sd if k not in self._used and not k.endswith("num_batches_tracked")
        )
        if unused:
            shown = ", ".join(unused[:20]) + (" ..." if len(unused) > 20 else "")
            raise ConversionError(f"Unexpected keys in checkpoint ({len(unused)}): {shown}")


def check_and_cast(converted: Mapping[str, Any], expected: Mapping[str, Any]) -> dict:
    """Verifies converted variables match the module's abstract variables exactly.

    Args:
      converted: nested dict of NumPy arrays produced by a converter.
      expected: ``jax.eval_shape(module.init, ...)`` output (nested dict of
        ShapeDtypeStruct) for the same module.

    Returns:
      ``converted`` with leaves cast to the expected dtypes.

    Raises:
      ConversionError naming every missing, unexpected or misshaped parameter.
    """
    conv_flat = traverse_util.flatten_dict(dict(converted), sep="/")
    exp_flat = traverse_util.flatten_dict(
        jax.tree_util.tree_map(lambda x: x, dict(expected)), sep="/"
    )
    missing = sorted(set(exp_flat) - set(conv_flat))
    extra = sorted(set(conv_flat) - set(exp_flat))
    problems = []
    if missing:
        problems.append(f"variables not filled from the checkpoint: {missing[:20]}")
    if extra:
        problems.append(f"converted variables the model does not have: {extra[:20]}")
    for name in sorted(set(conv_flat) & set(exp_flat)):
        got, want = tuple(np.shape(conv_flat[name])), tuple(exp_flat[name].shape)
        if got != want:
            problems.append(
                f"shape mismatch for {name}: checkpoint gives {got}, model expects {want}"
            )
    if problems:
        raise ConversionError("; ".join(problems))
    out = {k: np.asarray(v, dtype=exp_flat[k].dtype) for k, v in conv_flat.items()}
    return traverse_util.unflatten_dict(out, sep="/")


class VariableBuilder:
    """Nested variable dicts filled from a reader, remembering each leaf's source key.

    ``finish`` checks every key was used and every shape fits, naming the
    PyTorch key and the Flax path on a mismatch.
    """

    def __init__(self, reader: StateDictReader):
        self.reader = reader
        self.variables: dict = {"params": {}, "batch_stats": {}}
        self.origin: dict[tuple[str, ...], str] = {}

    def put(self, path: tuple[str, ...], key: str, transform=None) -> None:
        tree = self.variables
        for name in path[:-1]:
            tree = tree.setdefault(name, {})
        tree[path[-1]] = self.reader.take(key, transform)
        self.origin[path] = key

    def finish(self, module: Any, video_shape: tuple[int, ...]) -> dict[str, Any]:
        """Checks every key was used and every shape fits, naming both sides on a mismatch."""
        self.reader.finish()
        expected = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros(video_shape))
        want = traverse_util.flatten_dict(expected)
        bad = [
            f"{key} has shape {self.reader.take(key).shape}, but {'/'.join(path)} needs "
            f"{tuple(want[path].shape)}"
            for path, key in self.origin.items()
            if path in want and np.shape(_get_path(self.variables, path)) != tuple(want[path].shape)
        ]
        if bad:
            more = f"; ... ({len(bad)} in all)" if len(bad) > 10 else ""
            raise ConversionError("Shape mismatch: " + "; ".join(bad[:10]) + more)
        return check_and_cast(self.variables, expected)


def _get_path(tree: dict, path: tuple[str, ...]) -> Any:
    for name in path:
        tree = tree[name]
    return tree


def torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Our variable shape -> the PyTorch tensor shape it comes from (for messages)."""
    if len(shape) == 5:
        return (shape[4], shape[3], *shape[:3])
    if len(shape) == 2:
        return (shape[1], shape[0])
    return shape


def fill_by_rank(
    abstract: Mapping[str, Any],
    state_dict: Mapping[str, np.ndarray],
    torch_key: Callable[[tuple[str, ...]], str],
    model: str,
) -> dict:
    """Fills every variable of ``abstract`` from the key ``torch_key(path)`` names.

    Conv3d weights (5 dims) and Linear weights (2 dims) are transposed to Flax's
    layout, everything else is copied; every checkpoint key must be used once.

    Args:
      abstract: ``jax.eval_shape`` of the module's ``init`` (collections at the top).
      state_dict: the checkpoint's tensors as NumPy arrays.
      torch_key: our variable path without the collection -> the checkpoint key.
      model: the model's name in error messages (e.g. "SlowFast-R50").

    Returns:
      The converted variables, checked and cast against ``abstract``.

    Raises:
      ConversionError: naming every missing, unexpected or misshaped tensor.
    """
    reader = StateDictReader(state_dict)
    converted, problems = {}, []
    for flat, spec in traverse_util.flatten_dict(dict(abstract), sep="/").items():
        _, *path = flat.split("/")
        key = torch_key(tuple(path))
        raw = np.asarray(reader.take(key))
        want = tuple(spec.shape)
        if len(want) in (2, 5) and raw.ndim != len(want):
            problems.append(f"{key}: expected {len(want)} dims, got shape {raw.shape}")
            continue
        value = {5: conv3d_kernel, 2: linear_kernel}.get(len(want), np.asarray)(raw)
        if tuple(value.shape) != want:
            problems.append(
                f"shape mismatch for {key}: checkpoint has {raw.shape}, {model} expects "
                f"{torch_shape(want)} (ours: {flat} {want})"
            )
        converted[flat] = value
    if problems:
        raise ConversionError("; ".join(problems))
    reader.finish()
    return check_and_cast(traverse_util.unflatten_dict(converted, sep="/"), abstract)


def for_variant(convert: Callable, variant: str, doc: str) -> Callable:
    """``convert(state_dict=..., variant=..., num_classes=...)`` bound to one variant: the
    entries of a converter module's ``ARCHS`` (``fn(state_dict, *, num_classes=None)``)."""

    def fn(state_dict: Mapping[str, Any], *, num_classes: int | None = None):
        return convert(state_dict=state_dict, variant=variant, num_classes=num_classes)

    fn.__doc__ = doc
    return fn


def detect_layout(keys, markers: Mapping[str, tuple[str, str]], model: str) -> str:
    """The checkpoint layout whose marker prefix some key starts with.

    Args:
      keys: the state_dict's keys.
      markers: layout -> (its name in messages, a key prefix only it has), in the
        order they are tried.
      model: the architecture's name in the error message.

    Raises:
      ConversionError: no layout's marker matches (names the expected prefixes).
    """
    keys = list(keys)
    for layout, (_, prefix) in markers.items():
        if any(k.startswith(prefix) for k in keys):
            return layout
    expected = " or ".join(f"{label} keys ({prefix}*)" for label, prefix in markers.values())
    article = "an" if model[0] in "AEIOUX" else "a"
    raise ConversionError(
        f"Not {article} {model} checkpoint: expected {expected}; first keys: {keys[:5]}"
    )
