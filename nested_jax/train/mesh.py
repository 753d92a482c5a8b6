"""Device mesh from config: axes ("data", "fsdp") with AxisType.Auto."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P


def make_mesh(mesh_cfg) -> Mesh:
    n = jax.device_count()
    fsdp = mesh_cfg.fsdp if mesh_cfg.fsdp > 0 else 1
    data = mesh_cfg.data if mesh_cfg.data > 0 else n // fsdp
    if data * fsdp != n:
        raise ValueError(
            f"mesh.data={mesh_cfg.data} × mesh.fsdp={mesh_cfg.fsdp} must use all {n} devices "
            f"(got {data}×{fsdp}); use -1 for 'all remaining devices'."
        )
    devices = np.asarray(jax.devices()).reshape(data, fsdp)
    return Mesh(devices, ("data", "fsdp"), axis_types=(AxisType.Auto, AxisType.Auto))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batch rows split over every device (data and fsdp axes)."""
    return NamedSharding(mesh, P(("data", "fsdp")))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def global_batch(local_np, mesh: Mesh):
    """Assemble the global batch array from this process's rows."""
    return jax.make_array_from_process_local_data(batch_sharding(mesh), local_np)
