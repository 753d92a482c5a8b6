"""Rotary position embeddings and causal (optionally sliding-window) attention."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def rope(x_BxTxHxK: jax.Array, pos_T: jax.Array, base: float = 10000.0) -> jax.Array:
    """Rotary embedding (rotate-half convention) at absolute positions `pos_T`."""
    k = x_BxTxHxK.shape[-1]
    if k % 2:
        raise ValueError(f"RoPE needs an even head dim, got {k}.")
    inv_freq = 1.0 / (base ** (jnp.arange(0, k, 2, dtype=jnp.float32) / k))
    ang_TxK2 = pos_T.astype(jnp.float32)[:, None] * inv_freq[None, :]
    cos = jnp.cos(ang_TxK2)[None, :, None, :]
    sin = jnp.sin(ang_TxK2)[None, :, None, :]
    x = x_BxTxHxK.astype(jnp.float32)
    x1, x2 = x[..., : k // 2], x[..., k // 2 :]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BxTxHxK.dtype)


def attention_mask(q_pos_T: jax.Array, k_pos_S: jax.Array, window: int = 0,
                   k_valid_S: jax.Array | None = None) -> jax.Array:
    """Boolean [T, S] mask: key s visible to query t iff causal (and inside the window)."""
    q = q_pos_T[:, None]
    k = k_pos_S[None, :]
    mask = k <= q
    if window > 0:
        mask = mask & (q - k < window)
    if k_valid_S is not None:
        mask = mask & k_valid_S[None, :]
    return mask


def causal_attention(
    q_BxTxHxK: jax.Array,
    k_BxSxHxK: jax.Array,
    v_BxSxHxK: jax.Array,
    mask_TxS: jax.Array,
) -> jax.Array:
    """Softmax attention in float32 with a boolean [T, S] mask; returns [B, T, H, K]."""
    scale = q_BxTxHxK.shape[-1] ** -0.5
    logits_BxHxTxS = jnp.einsum(
        "bthk,bshk->bhts", q_BxTxHxK, k_BxSxHxK, preferred_element_type=jnp.float32
    ) * scale
    logits_BxHxTxS = jnp.where(mask_TxS[None, None], logits_BxHxTxS, -1e30)
    probs = jax.nn.softmax(logits_BxHxTxS, axis=-1)
    # A query with no visible key (only possible with padding) gets zeros, not NaN.
    probs = jnp.where(mask_TxS[None, None].any(-1, keepdims=True), probs, 0.0)
    out = jnp.einsum("bhts,bshk->bthk", probs.astype(v_BxSxHxK.dtype), v_BxSxHxK)
    return out
