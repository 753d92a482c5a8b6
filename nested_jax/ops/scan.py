"""Scans over chunks with rematerialisation in groups (ttt-lm-jax style).

`chunked_scan(step, carry, xs, remat_group)` behaves like `jax.lax.scan(step, carry, xs)`
but saves only every `remat_group`-th carry for the backward pass: the outer scan
runs over groups, each group body is a rematerialised inner scan. Activation memory
is then O(N / remat_group) carries plus one group's residuals.
"""

from __future__ import annotations

from typing import Any, Callable

import jax

def _unroll(n: int, unroll_max: int) -> int:
    """Scans of at most `unroll_max` steps are unrolled (model.unroll_chunks): on CPU the
    loop's per-op overhead dominates short scans (e.g. the 2-4 chunks of one online segment);
    on the GPU (H100 compile) an unrolled chunk scan drops the per-chunk residual writes and
    loop-carry copies, 1.12M → 0.68M device ops per pilot `hope` step at 16
    (benchmarks/RESULTS.md, "The GPU program"). Longer scans stay loops."""
    return n if n <= unroll_max else 1


def chunked_scan(
    step: Callable[[Any, Any], tuple[Any, Any]],
    carry: Any,
    xs: Any,
    remat_group: int = 0,
    unroll_max: int = 1,
) -> tuple[Any, Any]:
    """`lax.scan(step, carry, xs)` with the N steps rematerialised in groups.

    remat_group <= 0: plain scan, no remat. remat_group >= 1 must divide N. Scans (of groups)
    of at most `unroll_max` steps are unrolled (1: a loop).
    """
    n = jax.tree.leaves(xs)[0].shape[0]
    if remat_group <= 0:
        return jax.lax.scan(step, carry, xs, unroll=_unroll(n, unroll_max))
    if n % remat_group:
        raise ValueError(
            f"remat_group={remat_group} must divide the number of chunks {n}; "
            "pick a divisor or 0 to disable grouped remat."
        )
    groups = n // remat_group
    xs_g = jax.tree.map(lambda a: a.reshape((groups, remat_group) + a.shape[1:]), xs)

    @jax.checkpoint
    def group_body(c, xg):
        return jax.lax.scan(step, c, xg)

    carry, ys_g = jax.lax.scan(group_body, carry, xs_g, unroll=_unroll(groups, unroll_max))
    ys = jax.tree.map(lambda a: a.reshape((n,) + a.shape[2:]), ys_g)
    return carry, ys


def call_chunk(chunk: int, length: int) -> int:
    """The chunk a call of `length` tokens scans in: min(chunk, length). A call shorter
    than the configured chunk is one chunk (a decode block, a short prompt); training
    lengths are multiples of the chunk (train/validate.py checks it)."""
    return min(int(chunk), int(length))


def nearest_divisor(n: int, near: int) -> int:
    """The divisor of n closest to `near` (the smaller one on a tie): the value a config
    error suggests when a chunk or segment does not divide a length."""
    return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: abs(d - max(near, 1)))
