"""Where every leaf of the train state lives on the mesh: a table, not code in the layers.

Mesh axes (nested_jax.train.mesh): "data" (replicas) × "fsdp" (parameter shards). Batch
rows are split over both axes; a parameter is split over "fsdp" only and replicated over
"data". The train state is {"params", "opt_state", "step", ["fast"]}:

  leaf                                   mesh axes
  params, ndim >= 2, size >= min_size    "fsdp" on the largest dim it divides (FSDP_RULES
                                         say which dims may be used), else replicated
  params, ndim < 2 (norms, biases)       replicated
  opt_state                              same rule as the parameter it mirrors (same
                                         path suffix, same shape); counts replicated
  fast (per-sequence HOPE/CMS state)     by its declared logical axes (FAST_AXES in
                                         nested_jax.model.online) under LOGICAL_RULES:
                                         "batch" over ("data", "fsdp") like the batch,
                                         "layers" and unnamed axes replicated
  step                                   replicated

With mesh.fsdp = 1 (the default) everything but the batch and the fast state is
replicated: plain data parallelism.
"""

from __future__ import annotations

import re

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from nested_jax.model.online import fast_axes, is_axes
from nested_jax.train.mesh import BATCH_AXES

# Logical axis → mesh axes (None = replicated), for arrays whose axes are named.
LOGICAL_RULES = {
    "batch": BATCH_AXES,
    "layers": None,  # lax.scan slices the stacked layer axis: keep it whole
}

# (regex searched in the leaf's path "a/b/c", leading dims that are never sharded).
# First match wins. Stacked blocks keep their layer axis whole: lax.scan slices it.
FSDP_RULES = (
    (r"(^|/)blocks/", 1),
    (r".*", 0),
)


def path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))
                    for k in path)


def fsdp_spec(path: str, shape: tuple, n_fsdp: int, min_size: int = 0) -> P:
    """PartitionSpec of one parameter (or optimizer leaf) under FSDP_RULES."""
    size = 1
    for s in shape:
        size *= s
    if n_fsdp <= 1 or len(shape) < 2 or size < max(min_size, 1):
        return P()
    skip = next(k for rx, k in FSDP_RULES if re.search(rx, path))
    dims = sorted(range(skip, len(shape)), key=lambda d: (-shape[d], d))
    for d in dims:
        if shape[d] >= n_fsdp and shape[d] % n_fsdp == 0:
            spec = [None] * len(shape)
            spec[d] = "fsdp"
            return P(*spec)
    return P()


def tree_fsdp_specs(tree, mesh: Mesh, min_size: int = 0):
    n = mesh.shape["fsdp"]
    return jax.tree_util.tree_map_with_path(
        lambda p, x: fsdp_spec(path_str(p), tuple(x.shape), n, min_size), tree)


def logical_spec(axes: tuple) -> P:
    """PartitionSpec of a leaf whose axes are named `axes` (None = an unnamed axis)."""
    return P(*(None if a is None else LOGICAL_RULES[a] for a in axes))


def fast_specs(abstract_fast):
    """Specs of the fast state, from the axes it declares (nested_jax.model.online.FAST_AXES)."""
    return jax.tree.map(logical_spec, fast_axes(abstract_fast), is_leaf=is_axes)


def state_specs(abstract_state: dict, mesh: Mesh, *, min_size: int = 0) -> dict:
    """PartitionSpecs of the whole train state (see the table above)."""
    specs = {k: jax.tree.map(lambda _: P(), v) for k, v in abstract_state.items()}
    specs["params"] = tree_fsdp_specs(abstract_state["params"], mesh, min_size)
    specs["opt_state"] = tree_fsdp_specs(abstract_state["opt_state"], mesh, min_size)
    if "fast" in abstract_state:
        specs["fast"] = fast_specs(abstract_state["fast"])
    return specs


def named(specs, mesh: Mesh):
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                        is_leaf=lambda x: isinstance(x, P))

