"""The tools' shared command line for configs: a config file, ``--set key=value``
overrides and ``"title: key=value; ..."`` rows, with unknown keys named.

Every tool that takes ``--config`` and ``--set`` (benchmark, screen, label budget,
the diagnoses) loads its config here, so a key is spelled and parsed one way.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Sequence

import ml_collections

from vkd_jax.config_lib import parse_assignments, parse_value  # noqa: F401 (re-exported)


def set_key(config: ml_collections.ConfigDict, key: str, value) -> None:
    """``config[a][b] = value`` for ``key = "a.b"``; an undeclared key raises KeyError."""
    node = config
    *parents, leaf = key.split(".")
    for part in parents:
        if part not in node:
            raise KeyError(f"Unknown config key {key!r}")
        node = node[part]
    if leaf not in node:
        raise KeyError(f"Unknown config key {key!r}")
    if isinstance(node[leaf], tuple) and isinstance(value, list):
        value = tuple(value)
    node[leaf] = value


def apply_sets(config: ml_collections.ConfigDict, sets: Sequence[str]) -> None:
    """Applies ``key=value`` items; a string-valued key takes the text as it is."""
    for item in sets:
        key, eq, text = item.partition("=")
        if not eq:
            raise ValueError(f"--set {item!r} is not key=value")
        key, text = key.strip(), text.strip()
        node = config
        for part in key.split(".")[:-1]:
            node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
        leaf = key.split(".")[-1]
        is_text = isinstance(node, ml_collections.ConfigDict) and isinstance(node.get(leaf), str)
        set_key(config, key, text if is_text else parse_value(text))


def parse_row(text: str) -> tuple[str, dict[str, object]]:
    """``"title: a.b=1; c=(1, 2)"`` -> ``("title", {"a.b": 1, "c": (1, 2)})``."""
    title, sep, body = text.partition(":")
    if not sep or not title.strip():
        raise ValueError(f"A row is 'title: key=value; ...', got {text!r}")
    return title.strip(), parse_assignments(body, what=f"Row {title.strip()!r}")


def load_config(path: str, sets: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """The config file's ``get_config()`` with ``sets`` applied.

    Placeholder paths a recipe leaves unset (dataset folders, teacher checkpoints) become
    "": a tool that reads no data or weights does not need them.
    """
    spec = importlib.util.spec_from_file_location("tool_config", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(path))))
    spec.loader.exec_module(module)
    config = module.get_config()
    apply_sets(config, sets)
    if config.data.get("data_dir") is None:
        config.data.data_dir = ""
    if "folder" in config.data and config.data.folder.get("root") is None:
        config.data.folder.root = ""
    for teacher in config.teachers.values():
        if teacher.get("checkpoint") is None:
            teacher.checkpoint = ""
    return config
