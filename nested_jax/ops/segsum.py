"""The stable segment sum behind every chunk's decay products (docs/memories.md, "Chunked
dual form"): products of per-token gates between two positions of a chunk, taken as the exp
of a masked cumulative sum of their logs (no difference of cumulative sums, so no
cancellation, and -inf gates stay -inf instead of becoming NaN)."""

from __future__ import annotations

import jax.numpy as jnp


def segsum(x_xC):
    """out[..., t, i] = Σ_{i < l ≤ t} x[..., l] for i ≤ t and -inf above the diagonal, so
    exp(out)[t, i] = Π_{i < l ≤ t} exp(x_l) (1 on the diagonal, 0 above it)."""
    C = x_xC.shape[-1]
    strict_CxC = jnp.tril(jnp.ones((C, C), bool), -1)
    x_xCxC = jnp.where(strict_CxC, x_xC[..., :, None], 0.0)
    cs_xCxC = jnp.cumsum(x_xCxC, axis=-2)
    return jnp.where(jnp.tril(jnp.ones((C, C), bool)), cs_xCxC, -jnp.inf)
