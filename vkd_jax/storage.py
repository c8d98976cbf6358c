"""Files on a local disk or in a bucket (``gs://``, ``s3://``): what stages read and write.

A workdir, a model directory or a data directory may be a local path or a bucket
URL, so that every host of a Cloud TPU pod or a cluster writes to and resumes from
the same place. Every file the project writes or reads by name goes through this
module, on `etils.epath` (the path layer Orbax and TFDS use): a bucket URL goes to
TensorFlow's file system when TensorFlow is installed, else to fsspec (``gcsfs``
for ``gs://``). Training checkpoints go to Orbax with the same URL, which writes
them to the bucket itself.

Paths stay strings; ``os.path.join`` and ``os.path.dirname`` work on URLs, but
``os.path.abspath`` and ``normpath`` do not (they fold ``gs://`` into ``gs:/``), so
use :func:`resolve`.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import shutil
from typing import Any

from etils import epath


def is_remote(path: str | os.PathLike) -> bool:
    """Whether `path` is a URL (``scheme://...``) rather than a local path."""
    return "://" in os.fspath(path)


def resolve(path: str | os.PathLike) -> str:
    """An absolute local path (``~`` expanded), or a URL unchanged."""
    path = os.fspath(path)
    if is_remote(path):
        return path.rstrip("/")
    return os.path.abspath(os.path.expanduser(path))


def _path(path: str | os.PathLike) -> epath.Path:
    return epath.Path(os.fspath(path))


def exists(path: str | os.PathLike) -> bool:
    return _path(path).exists()


def isfile(path: str | os.PathLike) -> bool:
    return _path(path).is_file()


def isdir(path: str | os.PathLike) -> bool:
    return _path(path).is_dir()


def makedirs(path: str | os.PathLike) -> None:
    _path(path).mkdir(parents=True, exist_ok=True)


def listdir(path: str | os.PathLike) -> list[str]:
    """Names (not paths) in directory `path`, sorted."""
    return sorted(p.name for p in _path(path).iterdir())


def walk(path: str | os.PathLike, *, followlinks: bool = False):
    """``os.walk`` for local or bucket paths: (directory, subdirectory names, file names);
    ``followlinks`` descends into linked local folders too (a bucket has no links)."""
    if not is_remote(path):
        yield from os.walk(path, followlinks=followlinks)
        return
    path = os.fspath(path)
    dirs, files = [], []
    for entry in _path(path).iterdir():
        (dirs if entry.is_dir() else files).append(entry.name)
    dirs.sort()
    yield path, dirs, sorted(files)
    for name in dirs:
        yield from walk(os.path.join(path, name))


def rmtree(path: str | os.PathLike) -> None:
    if is_remote(path):
        _path(path).rmtree()
    else:
        shutil.rmtree(path)


def remove(path: str | os.PathLike) -> None:
    """Deletes one file (local or gs://)."""
    _path(path).unlink()


def open(path: str | os.PathLike, mode: str = "r"):  # noqa: A001 - mirrors builtins.open
    """A file object for `path` ("r", "w", "a", with "b" for bytes)."""
    if not is_remote(path):
        return builtins.open(path, mode)
    return _path(path).open(mode)


def read_text(path: str | os.PathLike) -> str:
    with open(path) as f:
        return f.read()


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(read_text(path))


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes a whole file so that a reader never sees part of it.

    Locally through a temporary file and a rename; in a bucket directly (an object
    appears only when its upload completes).
    """
    path = os.fspath(path)
    if is_remote(path):
        with _path(path).open("wb") as f:
            f.write(data)
        return
    tmp = path + ".tmp"
    with builtins.open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes a whole text file; see :func:`write_bytes`."""
    write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, obj: Any, **kwargs: Any) -> None:
    """Writes `obj` as JSON (``json.dumps`` keyword arguments), whole or not at all."""
    write_text(path, json.dumps(obj, **kwargs))


def append_text(path: str | os.PathLike, text: str) -> None:
    """Appends to a text file (in a bucket: rewrites the object, so keep such files small)."""
    if not is_remote(path):
        with builtins.open(path, "a") as f:
            f.write(text)
        return
    old = read_text(path) if exists(path) else ""
    write_text(path, old + text)


def replace_dir(src: str, dst: str) -> None:
    """Moves the finished directory `src` to `dst`, replacing `dst` if it exists.

    Local to local is one atomic rename. Into a bucket (from a local folder or
    another bucket path) it copies object by object and then deletes `src`: `src`
    is complete before it starts, which is what the callers' "write a temporary
    directory, then move it" needs; a reader may see `dst` partly copied.
    """
    if exists(dst):
        rmtree(dst)
    if not is_remote(src) and not is_remote(dst):
        os.replace(src, dst)
    elif is_remote(src):
        _path(src).rename(dst)
    else:  # A local folder uploaded to a bucket.
        for directory, _, files in os.walk(src):
            target = os.path.join(dst, os.path.relpath(directory, src))
            makedirs(target)
            for name in files:
                with builtins.open(os.path.join(directory, name), "rb") as f_in:
                    with _path(os.path.join(target, name)).open("wb") as f_out:
                        shutil.copyfileobj(f_in, f_out)
        shutil.rmtree(src)


def savefig(fig: Any, path: str | os.PathLike, **kwargs: Any) -> None:
    """``fig.savefig(path, **kwargs)`` for local or bucket paths (format from the suffix)."""
    path = os.fspath(path)
    if not is_remote(path):
        fig.savefig(path, **kwargs)
        return
    buffer = io.BytesIO()
    fig.savefig(buffer, format=os.path.splitext(path)[1].lstrip(".") or "png", **kwargs)
    write_bytes(path, buffer.getvalue())
