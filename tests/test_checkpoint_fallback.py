"""A damaged latest checkpoint falls back to the newest intact one (vkd_jax.checkpoint)."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vkd_jax import checkpoint, errors


def _state(value):
    return {"w": jnp.full((64, 64), float(value)), "step": jnp.int32(value)}


def _saved(directory, steps):
    manager = checkpoint.checkpoint_manager(str(directory), max_to_keep=5)
    for step in steps:
        checkpoint.save_state(manager, step, _state(step))
    manager.wait_until_finished()
    return manager


def _damage(directory, step):
    """Cuts every array file of ``step`` to 0 bytes (a partial copy from a bucket)."""
    cut = 0
    for root, _, files in os.walk(os.path.join(directory, str(step))):
        if os.path.basename(root) == "d":
            for name in files:
                open(os.path.join(root, name), "w").close()
                cut += 1
    assert cut, "no array files found: the checkpoint layout changed"


def test_a_damaged_latest_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, caplog):
    _saved(tmp_path, (1, 2, 3)).close()
    _damage(tmp_path, 3)
    manager = checkpoint.checkpoint_manager(str(tmp_path), max_to_keep=5)
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), _state(0))
    with caplog.at_level("WARNING"):
        state, step = checkpoint.restore_state(manager, abstract)
    assert step == 2 and int(state["step"]) == 2
    np.testing.assert_array_equal(np.asarray(state["w"]), np.full((64, 64), 2.0))
    assert "Checkpoint at step 3" in caplog.text and "cannot be restored" in caplog.text
    # The damaged step is gone, so training can save step 3 again.
    assert manager.all_steps() == [1, 2]
    checkpoint.save_state(manager, 3, _state(3))
    manager.wait_until_finished()
    manager.close()


def test_no_intact_checkpoint_names_the_folder_to_delete(tmp_path):
    _saved(tmp_path, (1, 2)).close()
    _damage(tmp_path, 1)
    _damage(tmp_path, 2)
    manager = checkpoint.checkpoint_manager(str(tmp_path), max_to_keep=5)
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), _state(0))
    with pytest.raises(errors.CheckpointError, match=r"no intact checkpoint .*steps 2, 1.*delete"):
        checkpoint.restore_state(manager, abstract)
    assert sorted(manager.all_steps()) == [1, 2]  # Nothing deleted when nothing restores.


def test_a_state_of_another_layout_is_named_as_such_and_never_deleted(tmp_path):
    """Checkpoints of the per-leaf optax state (before train_step.FlatOptimizer) do not
    resume into today's state: the error says it is the layout, not damage, and names the
    folder; nothing is deleted."""
    import optax

    from vkd_jax import config_lib, train_step

    params = {"a": jnp.ones((3, 2)), "b": jnp.ones((2,))}
    manager = checkpoint.checkpoint_manager(str(tmp_path), max_to_keep=5)
    checkpoint.save_state(manager, 4, {"params": params, "opt": optax.adamw(1e-3).init(params)})
    manager.wait_until_finished()
    tx, _ = train_step.make_optimizer(config_lib.default_config().optim, 10)
    abstract = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), {"params": params, "opt": tx.init(params)}
    )
    with pytest.raises(errors.CheckpointError, match="another layout") as info:
        checkpoint.restore_state(manager, abstract)
    assert str(tmp_path) in str(info.value)
    assert manager.all_steps() == [4]
