"""One line naming the extra to install when a module needs a package the core lacks.

``pip install vkd_jax`` brings the losses, models, CKA and converters (docs/reliability.md,
"Install matrix"); the command line, the input pipeline and TensorBoard logging need the
``train`` extra. Modules that need one wrap their third-party imports::

    with _deps.extra("train", __name__):
        import tensorflow as tf

so that importing them without it raises :class:`vkd_jax.errors.MissingExtraError`
("vkd_jax.data.pipeline needs tensorflow: pip install 'vkd_jax[train]'") instead of a
bare ``No module named 'tensorflow'`` that does not say what to install.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from typing import Any

from vkd_jax import errors


def message(module: str, missing: str, extra: str) -> str:
    return f"{module} needs {missing}, which vkd_jax's {extra!r} extra installs: " + (
        f"pip install 'vkd_jax[{extra}]'"
    )


@contextlib.contextmanager
def extra(name: str, module: str) -> Iterator[None]:
    """Turns a missing third-party package imported inside into `MissingExtraError`.

    Args:
      name: the extra that installs the packages imported inside (``"train"``).
      module: the importing module's ``__name__``, named in the message.
    """
    try:
        yield
    except ModuleNotFoundError as e:
        missing = (e.name or "").split(".")[0]
        if not missing or missing == "vkd_jax":
            raise  # Our own module missing is a bug, not an install.
        raise errors.MissingExtraError(message(module, missing, name)) from None


def require(package: str, extra_name: str, module: str) -> Any:
    """Imports ``package`` where it is used (``matplotlib`` for a figure), or raises
    `MissingExtraError` naming ``extra_name``."""
    with extra(extra_name, module):
        return importlib.import_module(package)
