"""The user-facing errors live in one leaf module and stay importable from their old homes."""

import ast
import pathlib

from vkd_jax import errors


def test_errors_is_a_leaf_module():
    tree = ast.parse(pathlib.Path(errors.__file__).read_text())
    imported = [
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    ]
    assert not [name for name in imported if name and name.startswith("vkd_jax")], imported


def test_old_homes_re_export_the_same_classes():
    from vkd_jax import checkpoint, config_lib, export, train
    from vkd_jax.convert import common
    from vkd_jax.data import decode, video_folder

    assert config_lib.ConfigError is errors.ConfigError
    assert checkpoint.CheckpointError is errors.CheckpointError
    assert common.ConversionError is errors.ConversionError
    assert export.ExportError is errors.ExportError
    assert train.NonFiniteLossError is errors.NonFiniteLossError
    assert decode.VideoDecodeError is errors.VideoDecodeError
    assert video_folder.VideoDecodeError is errors.VideoDecodeError


def test_user_errors_are_the_reported_ones():
    for error in (
        errors.ConfigError,
        errors.ConfigChangedError,
        errors.CheckpointError,
        errors.ConversionError,
        errors.ExportError,
        errors.NonFiniteLossError,
        errors.WorkdirBusyError,
        errors.MissingExtraError,
        FileNotFoundError,
    ):
        assert issubclass(error, errors.USER_ERRORS), error
    # Caught per file, never meant to reach the command line without its path.
    assert not issubclass(errors.VideoDecodeError, errors.USER_ERRORS)
