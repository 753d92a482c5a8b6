"""The normalisations every module shares (one home each): RMSNorm's arithmetic and the ℓ2
normalisation of queries, keys and values (Titans §3.1: q and k are ℓ2-normalised; NL §8.3
for the self-modifying memories). Both compute in float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp

# ε inside the ℓ2 norm's square root: only guards an all-zero vector (an ℓ2-normalised input
# otherwise has norm 1 whatever its scale), so it is kept far below any real squared norm.
L2_EPS = 1e-12


def l2norm(x, eps: float = L2_EPS):
    """x / √(Σx² + eps) over the last axis, in float32, returned in x's dtype."""
    x32 = x.astype(jnp.float32)
    return (x32 * jax.lax.rsqrt(jnp.sum(x32 * x32, axis=-1, keepdims=True) + eps)).astype(x.dtype)


def rms_norm(x, scale, eps: float):
    """RMSNorm in float32: x / √(mean x² + eps) · scale (`scale` broadcasts on the last axis)."""
    x32 = x.astype(jnp.float32)
    return x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps) * scale
