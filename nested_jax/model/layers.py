"""Basic layers with explicit initialisation (no framework defaults).

Parameters are stored in float32; `dtype` is the compute dtype weights are cast to.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from nested_jax.ops import attention as attn_ops
from nested_jax.ops.norms import rms_norm


def normal(key, shape, std):
    return std * jax.random.normal(key, shape, jnp.float32)


class Dense(nnx.Module):
    """y = x W (+ b with bias=True, b = 0 at init); W ~ N(0, std²)."""

    def __init__(self, d_in: int, d_out: int, *, std: float, rngs: nnx.Rngs, dtype=jnp.float32,
                 bias: bool = False):
        self.kernel = nnx.Param(normal(rngs.params(), (d_in, d_out), std))
        if bias:
            self.bias = nnx.Param(jnp.zeros((d_out,), jnp.float32))
        self.dtype = dtype

    def __call__(self, x):
        y = jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        if hasattr(self, "bias"):
            y = y + self.bias[...].astype(self.dtype).reshape((1,) * (y.ndim - 1) + (-1,))
        return y


class RMSNorm(nnx.Module):
    def __init__(self, d: int, *, eps: float = 1e-6, dtype=jnp.float32):
        self.scale = nnx.Param(jnp.ones((d,), jnp.float32))
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x):
        scale = self.scale[...].reshape((1,) * (x.ndim - 1) + (-1,))
        return rms_norm(x, scale, self.eps).astype(self.dtype)


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
    """Multi-head RoPE attention, full causal or sliding-window, optional persistent tokens,
    grouped-query attention (n_kv_heads key/value heads shared by n_heads / n_kv_heads query
    heads each; 0 = n_heads), optional biases on the q, k, v projections (`qkv_bias`, as
    Qwen2), RoPE frequencies from `attn_ops.rope_frequencies` (`rope_scaling`: its keyword
    arguments, e.g. {"scaling": "llama3", "factor": 8.0, ...}), computed by `attn_ops.dot_attention` (cuDNN flash attention
    on a GPU where it applies, XLA elsewhere; `impl` "auto" | "xla" | "cudnn").

    `__call__(x, pos_T, kv=None)`: pos_T holds consecutive absolute positions. Without `kv`
    the T tokens attend among themselves. With a key/value buffer kv = {"k","v"}
    [B, T_max, n_kv_heads, K] (slot i holds absolute position i), the new keys/values are
    written at pos_T[0] and the queries attend to the filled slots: unfilled slots lie in
    the future and are masked by causality (cuDNN also stops at the last filled slot); with
    a sliding window only the window + T - 1 slots the queries can see (rounded up to 8) are
    read. Returns (y, kv).
    """

    def __init__(self, d: int, n_heads: int, head_dim: int, *, out_std: float, window: int = 0,
                 rope_base: float = 10000.0, n_persistent: int = 0, n_kv_heads: int = 0,
                 impl: str = "auto", qkv_bias: bool = False, rope_scaling: dict | None = None,
                 rngs: nnx.Rngs, dtype=jnp.float32):
        n_kv_heads = n_kv_heads or n_heads
        if n_kv_heads < 1 or n_heads % n_kv_heads:
            raise ValueError(f"n_kv_heads={n_kv_heads} must divide n_heads={n_heads}.")
        if impl not in attn_ops.IMPLEMENTATIONS:
            raise ValueError(f"attention impl {impl!r}; choose one of {attn_ops.IMPLEMENTATIONS}.")
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.window, self.rope_base, self.dtype, self.impl = window, rope_base, dtype, impl
        self.rope_scaling = tuple(sorted((rope_scaling or {}).items()))  # hashable, static
        # Same draws in the same order as before GQA: n_kv_heads = n_heads gives the same
        # parameters (checkpoints stay valid).
        self.wq = Dense(d, n_heads * head_dim, std=d**-0.5, rngs=rngs, dtype=dtype, bias=qkv_bias)
        self.wk = Dense(d, n_kv_heads * head_dim, std=d**-0.5, rngs=rngs, dtype=dtype,
                        bias=qkv_bias)
        self.wv = Dense(d, n_kv_heads * head_dim, std=d**-0.5, rngs=rngs, dtype=dtype,
                        bias=qkv_bias)
        self.wo = Dense(n_heads * head_dim, d, std=out_std, rngs=rngs, dtype=dtype)
        self.n_persistent = n_persistent
        if n_persistent:
            shape = (n_persistent, n_kv_heads, head_dim)
            self.persistent_k = nnx.Param(normal(rngs.params(), shape, 1.0))
            self.persistent_v = nnx.Param(normal(rngs.params(), shape, 1.0))

    def init_kv(self, batch: int, max_len: int) -> dict:
        z = jnp.zeros((batch, max_len, self.n_kv_heads, self.head_dim), self.dtype)
        return {"k": z, "v": z}

    def __call__(self, x_BxTxD, pos_T, kv: dict | None = None):
        b, t, _ = x_BxTxD.shape
        g, hd = self.n_kv_heads, self.head_dim
        inv_freq_K2 = attn_ops.rope_frequencies(hd, self.rope_base, **dict(self.rope_scaling))
        q_BxTxHxK = attn_ops.rope(self.wq(x_BxTxD).reshape(b, t, self.n_heads, hd), pos_T,
                                  inv_freq_K2=inv_freq_K2)
        k_BxTxGxK = attn_ops.rope(self.wk(x_BxTxD).reshape(b, t, g, hd), pos_T,
                                  inv_freq_K2=inv_freq_K2)
        v_BxTxGxK = self.wv(x_BxTxD).reshape(b, t, g, hd)
        k_pos_S = kv_len = None
        if kv is None:
            keys, values = k_BxTxGxK, v_BxTxGxK
        else:
            start = (0, pos_T[0], 0, 0)
            kv = {"k": jax.lax.dynamic_update_slice(kv["k"], k_BxTxGxK.astype(kv["k"].dtype),
                                                    start),
                  "v": jax.lax.dynamic_update_slice(kv["v"], v_BxTxGxK.astype(kv["v"].dtype),
                                                    start)}
            keys, values = kv["k"].astype(k_BxTxGxK.dtype), kv["v"].astype(v_BxTxGxK.dtype)
            t_max = keys.shape[1]
            first = jnp.zeros((), pos_T.dtype)
            span = -(-(self.window + t - 1) // 8) * 8  # the slots a query can see, rounded
            if self.window > 0 and span < t_max:  # up to 8 (cuDNN: even lengths); read those
                first = jnp.clip(pos_T[0] - self.window + 1, 0, t_max - span).astype(pos_T.dtype)
                keys = jax.lax.dynamic_slice_in_dim(keys, first, span, axis=1)
                values = jax.lax.dynamic_slice_in_dim(values, first, span, axis=1)
            k_pos_S = first + jnp.arange(keys.shape[1], dtype=pos_T.dtype)
            kv_len = pos_T[-1] + 1 - first  # slots filled up to the last query
        if self.n_persistent:
            pk = jnp.broadcast_to(self.persistent_k[...].astype(keys.dtype)[None],
                                  (b,) + self.persistent_k.shape)
            pv = jnp.broadcast_to(self.persistent_v[...].astype(values.dtype)[None],
                                  (b,) + self.persistent_v.shape)
            keys = jnp.concatenate([pk, keys], axis=1)
            values = jnp.concatenate([pv, values], axis=1)
        out = attn_ops.dot_attention(q_BxTxHxK, keys, values, q_pos_T=pos_T, k_pos_S=k_pos_S,
                                     window=self.window, n_prefix=self.n_persistent,
                                     kv_len=kv_len, implementation=self.impl)
        return self.wo(out.reshape(b, t, self.n_heads * hd)), kv


class CausalConv(nnx.Module):
    """Causal depthwise 1-D convolution of width W over time (per channel, no bias).

    `__call__(x, prev)` takes the previous W-1 inputs (zeros at the sequence start) so a
    sequence processed in segments gives exactly the full-sequence result.
    """

    def __init__(self, channels: int, width: int, *, rngs: nnx.Rngs):
        kernel = jnp.zeros((width, channels), jnp.float32).at[-1].set(1.0)  # starts as identity
        kernel = kernel + normal(rngs.params(), (width, channels), 0.02)
        self.kernel = nnx.Param(kernel)
        self.width = width

    def __call__(self, x_BxTxC, prev_BxWxC=None):
        b, t, c = x_BxTxC.shape
        w = self.width
        if prev_BxWxC is None:
            prev_BxWxC = jnp.zeros((b, w - 1, c), x_BxTxC.dtype)
        full = jnp.concatenate([prev_BxWxC.astype(x_BxTxC.dtype), x_BxTxC], axis=1)
        ker = self.kernel[...].astype(x_BxTxC.dtype)
        y = sum(full[:, i : i + t, :] * ker[i][None, None, :] for i in range(w))
        return y, full[:, t:, :]
