"""Language-model losses."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_cross_entropy(logits_BxTxV: jax.Array, targets_BxT: jax.Array) -> jax.Array:
    """Per-token next-token cross-entropy in float32, shape [B, T]."""
    logits = logits_BxTxV.astype(jnp.float32)
    logz_BxT = jax.nn.logsumexp(logits, axis=-1)
    tgt_BxT = jnp.take_along_axis(logits, targets_BxT[..., None], axis=-1)[..., 0]
    return logz_BxT - tgt_BxT


def mean_cross_entropy(logits_BxTxV, targets_BxT, weights_BxT=None) -> jax.Array:
    """Mean next-token cross-entropy (optionally weighted)."""
    ce = token_cross_entropy(logits_BxTxV, targets_BxT)
    if weights_BxT is None:
        return ce.mean()
    w = weights_BxT.astype(jnp.float32)
    return (ce * w).sum() / jnp.maximum(w.sum(), 1.0)
