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
  fast (per-sequence HOPE/CMS state)     its batch-row axis over ("data", "fsdp"), like
                                         the batch; other leaves replicated
  step                                   replicated

With mesh.fsdp = 1 (the default) everything but the batch and the fast state is
replicated: plain data parallelism.
"""

from __future__ import annotations

import re

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from nested_jax.train.mesh import BATCH_AXES

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


def row_specs(abstract_BxF, abstract_B1xF):
    """Specs that put each leaf's batch-row axis on BATCH_AXES. The row axis is the one
    whose size changes between the same tree built for batch B and for batch B + 1;
    leaves without one (counters) are replicated."""

    def spec(a, b):
        diff = [d for d, (x, y) in enumerate(zip(a.shape, b.shape)) if x != y]
        if not diff:
            return P()
        if len(diff) != 1:
            raise ValueError(f"fast-state leaf {a.shape} vs {b.shape}: no single batch axis")
        s = [None] * len(a.shape)
        s[diff[0]] = BATCH_AXES
        return P(*s)

    return jax.tree.map(spec, abstract_BxF, abstract_B1xF)


def state_specs(abstract_state: dict, mesh: Mesh, *, min_size: int = 0, fast_B1=None) -> dict:
    """PartitionSpecs of the whole train state (see the table above). `fast_B1` is the
    abstract fast state built for batch B + 1 (needed when the state has "fast")."""
    specs = {k: jax.tree.map(lambda _: P(), v) for k, v in abstract_state.items()}
    specs["params"] = tree_fsdp_specs(abstract_state["params"], mesh, min_size)
    specs["opt_state"] = tree_fsdp_specs(abstract_state["opt_state"], mesh, min_size)
    if "fast" in abstract_state:
        if fast_B1 is None:
            raise ValueError("state_specs: the state has a fast state; pass fast_B1.")
        specs["fast"] = row_specs(abstract_state["fast"], fast_B1)
    return specs


def named(specs, mesh: Mesh):
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                        is_leaf=lambda x: isinstance(x, P))

