"""Basic layers with explicit initialisation (no framework defaults).

Parameters are stored in float32; `dtype` is the compute dtype weights are cast to.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from nested_jax.ops import attention as attn_ops


def normal(key, shape, std):
    return std * jax.random.normal(key, shape, jnp.float32)


class Dense(nnx.Module):
    """y = x W (no bias); W ~ N(0, std²)."""

    def __init__(self, d_in: int, d_out: int, *, std: float, rngs: nnx.Rngs, dtype=jnp.float32):
        self.kernel = nnx.Param(normal(rngs.params(), (d_in, d_out), std))
        self.dtype = dtype

    def __call__(self, x):
        return jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))


class RMSNorm(nnx.Module):
    def __init__(self, d: int, *, eps: float = 1e-6, dtype=jnp.float32):
        self.scale = nnx.Param(jnp.ones((d,), jnp.float32))
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        inv = jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        scale = self.scale[...].reshape((1,) * (x.ndim - 1) + (-1,))
        return (x32 * inv * scale).astype(self.dtype)


class Embed(nnx.Module):
    """Token embedding; `attend` gives the tied LM head logits."""

    def __init__(self, vocab: int, d: int, *, std: float, rngs: nnx.Rngs, dtype=jnp.float32):
        self.embedding = nnx.Param(normal(rngs.params(), (vocab, d), std))
        self.dtype = dtype

    def __call__(self, tokens_BxT):
        return jnp.take(self.embedding[...], tokens_BxT, axis=0).astype(self.dtype)

    def attend(self, x_BxTxD):
        return jnp.einsum(
            "btd,vd->btv", x_BxTxD.astype(self.dtype), self.embedding[...].astype(self.dtype),
            preferred_element_type=jnp.float32,
        )


class SwiGLU(nnx.Module):
    """SwiGLU MLP: (silu(x W_gate) * x W_up) W_down."""

    def __init__(self, d: int, f: int, *, out_std: float, rngs: nnx.Rngs, dtype=jnp.float32):
        self.gate = Dense(d, f, std=d**-0.5, rngs=rngs, dtype=dtype)
        self.up = Dense(d, f, std=d**-0.5, rngs=rngs, dtype=dtype)
        self.down = Dense(f, d, std=out_std, rngs=rngs, dtype=dtype)

    def __call__(self, x):
        return self.down(jax.nn.silu(self.gate(x)) * self.up(x))


class Attention(nnx.Module):
    """Multi-head RoPE attention, full causal or sliding-window.

    `__call__(x, pos_T, cache=None)`: with a cache (dict k, v [B,S,H,K], pos [S], valid [S])
    the queries also attend to the cached keys; returns (y, (k, v)) of the new tokens so a
    caller can extend its cache.
    """

    def __init__(self, d: int, n_heads: int, head_dim: int, *, out_std: float, window: int = 0,
                 rope_base: float = 10000.0, rngs: nnx.Rngs, dtype=jnp.float32):
        self.n_heads, self.head_dim = n_heads, head_dim
        self.window, self.rope_base = window, rope_base
        self.wq = Dense(d, n_heads * head_dim, std=d**-0.5, rngs=rngs, dtype=dtype)
        self.wk = Dense(d, n_heads * head_dim, std=d**-0.5, rngs=rngs, dtype=dtype)
        self.wv = Dense(d, n_heads * head_dim, std=d**-0.5, rngs=rngs, dtype=dtype)
        self.wo = Dense(n_heads * head_dim, d, std=out_std, rngs=rngs, dtype=dtype)

    def __call__(self, x_BxTxD, pos_T, cache=None):
        b, t, _ = x_BxTxD.shape
        split = lambda y: y.reshape(b, t, self.n_heads, self.head_dim)
        q = attn_ops.rope(split(self.wq(x_BxTxD)), pos_T, self.rope_base)
        k = attn_ops.rope(split(self.wk(x_BxTxD)), pos_T, self.rope_base)
        v = split(self.wv(x_BxTxD))
        if cache is None:
            keys, values, k_pos, k_valid = k, v, pos_T, None
        else:
            keys = jnp.concatenate([cache["k"].astype(k.dtype), k], axis=1)
            values = jnp.concatenate([cache["v"].astype(v.dtype), v], axis=1)
            k_pos = jnp.concatenate([cache["pos"], pos_T])
            k_valid = jnp.concatenate([cache["valid"], jnp.ones((t,), bool)])
        mask = attn_ops.attention_mask(pos_T, k_pos, self.window, k_valid)
        out = attn_ops.causal_attention(q, keys, values, mask)
        return self.wo(out.reshape(b, t, self.n_heads * self.head_dim)), (k, v)
