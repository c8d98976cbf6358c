"""Device mesh, shardings, and process-local -> global arrays.

One code path from one CPU device to a pod: the batch is split over the mesh's
"data" axis, parameters are replicated (`replicated`), and every process feeds
only its own slice of the global batch (`to_global`).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(num_data_devices: int = -1) -> Mesh:
    """A 1-D mesh with axis "data".

    Args:
      num_data_devices: Devices on the data axis; -1 = all devices.

    Returns:
      A `jax.sharding.Mesh` over the first `num_data_devices` devices.
    """
    devices = jax.devices()
    if num_data_devices == -1:
        num_data_devices = len(devices)
    if not 1 <= num_data_devices <= len(devices):
        raise ValueError(
            f"mesh.data = {num_data_devices}, but there are {len(devices)} devices "
            "(use -1 for all)."
        )
    if num_data_devices < len(devices) and jax.process_count() > 1:
        # A subset would leave some processes without devices in the mesh.
        raise ValueError("Multi-process runs need the mesh over all devices (mesh.data = -1).")
    return Mesh(np.asarray(devices[:num_data_devices]), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of arrays whose leading (batch) dimension is split over "data"."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding of arrays copied on every device (parameters, scalars)."""
    return NamedSharding(mesh, PartitionSpec())


def replicated_key(key: jax.Array, mesh: Mesh) -> jax.Array:
    """``key`` (a typed PRNG key that every process holds alike) replicated over ``mesh``.

    Multi-process, ``jax.device_put`` refuses a key array for a sharding that spans other
    processes' devices; the key's raw data as a host array is accepted (and checked to
    be equal on every process), and is wrapped back into a key of the same
    implementation.
    """
    data = jax.device_put(np.asarray(jax.random.key_data(key)), replicated(mesh))
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(key))


def local_batch_size(global_batch_size: int, mesh: Mesh | None = None) -> int:
    """This process's share of the global batch.

    Args:
      global_batch_size: Examples per step over all processes.
      mesh: The mesh the batch is sharded over (default: all devices).

    Returns:
      global_batch_size // jax.process_count().

    Raises:
      ValueError: if the global batch does not split evenly over processes and devices.
    """
    num_devices = mesh.devices.size if mesh is not None else jax.device_count()
    num_processes = jax.process_count()
    if global_batch_size % num_devices or global_batch_size % num_processes:
        raise ValueError(
            f"The global batch size {global_batch_size} must be divisible by the number "
            f"of devices ({num_devices}) and of processes ({num_processes}); "
            "change train.batch_size / train.eval_batch_size."
        )
    return global_batch_size // num_processes


def batch_spec(
    global_batch_size: int, clip: tuple[int, int, int], mesh: Mesh
) -> dict[str, jax.ShapeDtypeStruct]:
    """The shapes, dtypes and shardings of a global training batch, as
    ``vkd_jax.data.pipeline.train_dataset`` and `to_global` make it: ``video`` float32
    ``(B, T, H, W, 3)``, ``label`` int32 ``(B,)``, both split over "data"."""
    data = data_sharding(mesh)
    return {
        "video": jax.ShapeDtypeStruct((global_batch_size, *clip, 3), np.float32, sharding=data),
        "label": jax.ShapeDtypeStruct((global_batch_size,), np.int32, sharding=data),
    }


def to_global(batch: dict[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles process-local batches into global arrays sharded over "data".

    Args:
      batch: Pytree of this process's arrays, each (b_local, ...) (NumPy or tf eager
        tensors converted to NumPy).
      mesh: The mesh.

    Returns:
      The same pytree of `jax.Array`s of shape (b_local * process_count, ...), sharded
      over the mesh's "data" axis along the leading dimension.
    """
    sharding = data_sharding(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch
    )


def to_host(x: Any) -> np.ndarray:
    """The whole (global) array ``x`` as NumPy on this host (the inverse of `to_global`).

    Multi-process, each process holds only its shards of a global array; they are
    gathered (every process must call this). A host or fully addressable array is copied.
    """
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))
