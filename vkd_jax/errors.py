"""The errors that name a user's input (a config, a path, a checkpoint, an install),
not a bug, and the tuple the command line turns into one line on stderr.

A leaf module: it imports nothing from vkd_jax, so any module can raise these without
pulling in another (``data/video_folder.py`` once imported ``config_lib``, and through it
half the package, only to raise ``ConfigError``). The classes keep their old homes as
re-exports (``config_lib.ConfigError``, ``checkpoint.CheckpointError``, ...), so
``except config_lib.ConfigError`` still catches them.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A config key or value the run cannot use (the CLI reports it in one line)."""


class ConfigChangedError(ConfigError):
    """A stage's folder holds a run made with other settings than the config asks for."""


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, or does not fit the configuration."""


class ConversionError(ValueError):
    """A checkpoint does not match the architecture it is converted to."""


class ExportError(RuntimeError):
    """A model cannot be exported to a format, or an artifact does not match the model."""


class NonFiniteLossError(FloatingPointError):
    """The loss or gradient became NaN/inf; the last checkpoint is intact."""


class WorkdirBusyError(RuntimeError):
    """Another run holds the workdir's lock (two runs in one workdir would mix their
    checkpoints, models and results)."""


class MissingExtraError(ImportError):
    """A module needs a dependency of an install extra that is not installed
    (``pip install 'vkd_jax[train]'``)."""


class VideoDecodeError(Exception):
    """A video could not be decoded into frames.

    Not in `USER_ERRORS`: the dataset builder and ``predict`` catch it per file and
    name the file; one reaching the command line without a path would be a bug.
    """


# What `vkd_jax.main` reports in one line and a non-zero exit, without a traceback
# (VKD_TRACEBACK=1 keeps it). Everything else is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    CheckpointError,
    ConversionError,
    ExportError,
    NonFiniteLossError,
    WorkdirBusyError,
    MissingExtraError,
    FileNotFoundError,
    NotADirectoryError,
)
