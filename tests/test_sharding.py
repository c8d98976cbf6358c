"""Tests of the mesh and process-local -> global batch helpers on emulated CPU devices.

CI runs with XLA_FLAGS=--xla_force_host_platform_device_count=4; run alone, this
module asks for 4 devices itself (effective only if JAX is not yet initialized).
"""

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    )

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.sharding import PartitionSpec  # noqa: E402

from vkd_jax import sharding  # noqa: E402

needs_devices = pytest.mark.skipif(
    jax.device_count() < 2,
    reason="needs >= 2 devices (XLA_FLAGS=--xla_force_host_platform_device_count=4)",
)


def test_make_mesh_all_devices_by_default():
    mesh = sharding.make_mesh()
    assert mesh.axis_names == ("data",)
    assert mesh.devices.size == jax.device_count()


@needs_devices
def test_make_mesh_subset_and_errors():
    assert sharding.make_mesh(2).devices.size == 2
    with pytest.raises(ValueError, match="devices"):
        sharding.make_mesh(jax.device_count() + 1)
    with pytest.raises(ValueError):
        sharding.make_mesh(0)


def test_shardings_specs():
    mesh = sharding.make_mesh()
    assert sharding.data_sharding(mesh).spec == PartitionSpec("data")
    assert sharding.replicated(mesh).spec == PartitionSpec()


def test_local_batch_size():
    n = jax.device_count()
    assert sharding.local_batch_size(8 * n) == 8 * n  # One process holds the whole batch.
    if n > 1:
        with pytest.raises(ValueError, match="divisible"):
            sharding.local_batch_size(8 * n + 1)
    # A mesh over fewer devices divides by its own size.
    assert sharding.local_batch_size(3, mesh=sharding.make_mesh(1)) == 3


@needs_devices
def test_to_global_shards_batch_over_devices():
    mesh = sharding.make_mesh()
    n = mesh.devices.size
    rng = np.random.default_rng(0)
    batch = {
        "video": rng.normal(size=(2 * n, 3, 4, 4, 3)).astype(np.float32),
        "label": np.arange(2 * n, dtype=np.int32),
    }
    out = sharding.to_global(batch, mesh)
    for key, value in batch.items():
        arr = out[key]
        assert isinstance(arr, jax.Array)
        assert arr.shape == value.shape and arr.dtype == value.dtype
        assert arr.sharding.is_equivalent_to(sharding.data_sharding(mesh), arr.ndim)
        shards = sorted(arr.addressable_shards, key=lambda s: s.index[0].start)
        assert len(shards) == n
        for i, shard in enumerate(shards):
            # Device i holds rows [2i, 2i + 2).
            np.testing.assert_array_equal(np.asarray(shard.data), value[2 * i : 2 * i + 2])
        np.testing.assert_array_equal(np.asarray(arr), value)
        np.testing.assert_array_equal(sharding.to_host(arr), value)  # And back.
    assert isinstance(sharding.to_host(out["label"]), np.ndarray)
