"""Transformer++ block: pre-RMSNorm, RoPE attention, SwiGLU MLP."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from nested_jax.model.layers import Attention, RMSNorm, SwiGLU


def ffn_width(d_model: int, d_ff: int) -> int:
    """d_ff, or the SwiGLU default 8/3·d rounded up to a multiple of 64."""
    if d_ff > 0:
        return d_ff
    return int(-(-(8 * d_model // 3) // 64) * 64)


class TransformerBlock(nnx.Module):
    def __init__(self, cfg, *, rngs: nnx.Rngs, dtype=jnp.float32):
        d, h = cfg.d_model, cfg.n_heads
        k = cfg.head_dim or d // h
        out_std = cfg.init_std / (2 * cfg.n_layers) ** 0.5
        self.attn_norm = RMSNorm(d, eps=cfg.norm_eps, dtype=dtype)
        self.attn = Attention(d, h, k, out_std=out_std, window=cfg.attention_window,
                              rope_base=cfg.rope_base, rngs=rngs, dtype=dtype)
        self.mlp_norm = RMSNorm(d, eps=cfg.norm_eps, dtype=dtype)
        self.mlp = SwiGLU(d, ffn_width(d, cfg.d_ff), out_std=out_std, rngs=rngs, dtype=dtype)

    def __call__(self, x_BxTxD, pos_T):
        y, _ = self.attn(self.attn_norm(x_BxTxD), pos_T)
        x_BxTxD = x_BxTxD + y.astype(x_BxTxD.dtype)
        return x_BxTxD + self.mlp(self.mlp_norm(x_BxTxD)).astype(x_BxTxD.dtype)
