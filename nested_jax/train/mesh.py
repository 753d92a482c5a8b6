"""Device mesh from config: axes ("data", "fsdp") with AxisType.Auto; batch placement."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")  # batch rows (and per-sequence fast state) split over both


def mesh_shape(mesh_cfg, n_devices: int) -> tuple[int, int]:
    """(data, fsdp) sizes; -1 means 'all remaining devices'."""
    if mesh_cfg.fsdp == -1 and mesh_cfg.data == -1:
        raise ValueError("mesh.data and mesh.fsdp cannot both be -1; set one of them.")
    fsdp = mesh_cfg.fsdp if mesh_cfg.fsdp > 0 else (n_devices // max(mesh_cfg.data, 1)
                                                    if mesh_cfg.fsdp == -1 else 1)
    data = mesh_cfg.data if mesh_cfg.data > 0 else n_devices // max(fsdp, 1)
    if data < 1 or fsdp < 1 or data * fsdp != n_devices:
        raise ValueError(
            f"mesh.data={mesh_cfg.data} × mesh.fsdp={mesh_cfg.fsdp} must use all {n_devices} "
            f"devices (got {data}×{fsdp}); use -1 for 'all remaining devices'.")
    return data, fsdp


def make_mesh(mesh_cfg, devices=None) -> Mesh:
    """Mesh over all devices of all processes (process-major order, so an "fsdp" group
    stays inside one host when fsdp <= local devices)."""
    devices = jax.devices() if devices is None else list(devices)
    data, fsdp = mesh_shape(mesh_cfg, len(devices))
    grid = np.asarray(devices).reshape(data, fsdp)
    return Mesh(grid, ("data", "fsdp"), axis_types=(AxisType.Auto, AxisType.Auto))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batch rows split over every device (data and fsdp axes)."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def global_batch(local_np, mesh: Mesh):
    """Assemble the global batch array from this process's rows (train batches: each
    process holds batch_size / process_count rows)."""
    return jax.make_array_from_process_local_data(batch_sharding(mesh), local_np)


def shard_full_batch(full_np, mesh: Mesh):
    """A batch every process holds whole (eval batches), placed row-sharded: each device
    takes its own rows, on one host or many."""
    full_np = np.asarray(full_np)
    sharding = batch_sharding(mesh) if full_np.shape[0] % mesh.size == 0 else replicated(mesh)
    return jax.make_array_from_callback(full_np.shape, sharding, lambda idx: full_np[idx])
