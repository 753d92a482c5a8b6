"""Titans neural-memory branch (Titans §3–4; docs/memories.md): projections → causal conv →
SiLU → ℓ2 (q, k) → per-token, per-head gates θ, η, α → chunked memory (linear or 2-layer MLP) → output.

The memory's initial state (W0, or W1/W2 for the MLP) is a trained parameter; its running
state is carried across segments in `state` so online training sees one long memory.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from nested_jax.model.layers import CausalConv, Dense, RMSNorm, normal
from nested_jax.ops import memory as mem_ops
from nested_jax.ops import norms, titans_fused
from nested_jax.ops.scan import call_chunk


# The data-dependent gates (θ, η, α) start from small weights, so that at initialisation each
# gate sits near its configured bias value (theta_init, eta_init, alpha_init) for every token.
GATE_INIT_SCALE = 0.1
MEMORIES = ("linear", "mlp")  # model.titans.memory
DEPTHS = (2, 3, 4)  # model.titans.depth of the MLP memory (Titans §5.5)


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


# The Titans memory's q/k (and v) ℓ2 normalisation keeps its historical ε (its recorded
# per-token losses, tests/test_variant_losses.py, were made with it).
QK_L2_EPS = 1e-6


def l2norm(x):
    return norms.l2norm(x, QK_L2_EPS)


class TitansMemory(nnx.Module):
    def __init__(self, cfg, *, out_std: float, rngs: nnx.Rngs, dtype=jnp.float32,
                 retrieval: bool = False):
        t = cfg.titans
        d, h = cfg.d_model, cfg.n_heads
        k = cfg.head_dim or d // h
        self.h, self.k, self.dtype = h, k, dtype
        self.kind, self.chunk_size = t.memory, t.chunk_size
        self.theta_max, self.remat_group = t.theta_max, t.remat_group
        self.unroll_max = cfg.unroll_chunks
        self.fused = titans_fused.model_uses_kernels(cfg)  # the chunk scan as kernels
        self.v_norm = t.v_norm
        self.residual_norm = t.memory == "mlp" and t.residual_norm
        self.depth = 1 if t.memory == "linear" else t.depth
        self.wq = Dense(d, h * k, std=d**-0.5, rngs=rngs, dtype=dtype)
        self.wk = Dense(d, h * k, std=d**-0.5, rngs=rngs, dtype=dtype)
        self.wv = Dense(d, h * k, std=d**-0.5, rngs=rngs, dtype=dtype)
        self.conv_q = CausalConv(h * k, t.conv_width, rngs=rngs)
        self.conv_k = CausalConv(h * k, t.conv_width, rngs=rngs)
        self.conv_v = CausalConv(h * k, t.conv_width, rngs=rngs)
        self.w_gates = Dense(d, 3 * h, std=GATE_INIT_SCALE * d**-0.5, rngs=rngs,
                             dtype=jnp.float32)
        # Biases: θ ≈ theta_init·theta_max, η ≈ eta_init, α (forgetting) ≈ alpha_init.
        bias = jnp.concatenate([
            jnp.full((h,), _logit(t.theta_init)), jnp.full((h,), _logit(t.eta_init)),
            jnp.full((h,), _logit(t.alpha_init))])
        self.gate_bias = nnx.Param(bias.astype(jnp.float32))
        if self.kind == "linear":
            self.w0 = nnx.Param(jnp.zeros((h, k, k), jnp.float32))
        elif self.kind == "mlp":
            if not 2 <= self.depth <= 4:
                raise ValueError(f"model.titans.depth={self.depth}; choose 2, 3 or 4 layers "
                                 "(Titans §5.5; memory='linear' is depth 1).")
            f = t.hidden_mult * k
            dims = [k] + [f] * (self.depth - 1) + [k]
            for i in range(self.depth):  # w1 … w_L; the last layer starts small (M ≈ 0)
                std = (0.1 if i == self.depth - 1 else 1.0) * dims[i] ** -0.5
                setattr(self, f"w{i + 1}",
                        nnx.Param(normal(rngs.params(), (h, dims[i], dims[i + 1]), std)))
            if self.residual_norm:  # per-head LayerNorm affine of k + LN(core)
                # LN output of norm ≈ 1 like the ℓ2-normalised targets (a unit scale makes it
                # √k, which the inner loop keeps fighting by growing the fast weights).
                s0 = k**-0.5 if self.v_norm else 1.0
                self.ln_scale = nnx.Param(jnp.full((h, k), s0, jnp.float32))
                self.ln_bias = nnx.Param(jnp.zeros((h, k), jnp.float32))
        else:
            raise ValueError(f"model.titans.memory={self.kind!r}; choose 'linear' or 'mlp'.")
        self.out_norm = RMSNorm(k, eps=cfg.norm_eps, dtype=dtype)
        self.wo = Dense(h * k, d, std=out_std, rngs=rngs, dtype=dtype)
        if retrieval:  # MAC: read-only queries of the segment-start memory (Titans Eq. 21)
            self.wq_r = Dense(d, h * k, std=d**-0.5, rngs=rngs, dtype=dtype)
            self.wo_r = Dense(h * k, d, std=d**-0.5, rngs=rngs, dtype=dtype)

    def layers(self) -> tuple:
        """The MLP memory's initial weights (w1, …, w_L)."""
        return tuple(getattr(self, f"w{i + 1}") for i in range(self.depth))

    def init_state(self, batch: int) -> dict:
        bcast = lambda a: jnp.broadcast_to(a[None], (batch,) + a.shape)  # noqa: E731
        w = (bcast(self.w0[...]),) if self.kind == "linear" else tuple(
            bcast(a[...]) for a in self.layers())
        conv = jnp.zeros((batch, self.conv_q.width - 1, self.h * self.k), self.dtype)
        return {"w": w, "s": jax.tree.map(jnp.zeros_like, w),
                "conv_q": conv, "conv_k": conv, "conv_v": conv}

    def retrieve(self, x_BxTxD, state: dict):
        """h_t = M*_{t-1}(q_t): the memory as it stands (no write), queried by the tokens
        (Titans §4.1, Eq. 21); one retrieved vector of width d per token."""
        b, t, _ = x_BxTxD.shape
        q = self.wq_r(x_BxTxD).reshape(b, t, self.h, self.k).transpose(0, 2, 1, 3)
        q = l2norm(jax.nn.silu(q))
        if self.kind == "linear":
            y = jnp.einsum("bhtk,bhkv->bhtv", q.astype(jnp.float32), state["w"][0])
        else:
            ln = (self.ln_scale[...], self.ln_bias[...]) if self.residual_norm else None

            def one(w, q, ln):
                return mem_ops.mlp_read(w, q, residual_norm=ln)

            y = jax.vmap(jax.vmap(one), in_axes=(0, 0, None))(state["w"], q, ln)
        y = self.out_norm(y.astype(x_BxTxD.dtype).transpose(0, 2, 1, 3))
        return self.wo_r(y.reshape(b, t, self.h * self.k))

    def __call__(self, x_BxTxD, state: dict | None = None):
        b, t, _ = x_BxTxD.shape
        if state is None:
            state = self.init_state(b)
        q, cq = self.conv_q(self.wq(x_BxTxD), state["conv_q"])
        k, ck = self.conv_k(self.wk(x_BxTxD), state["conv_k"])
        v, cv = self.conv_v(self.wv(x_BxTxD), state["conv_v"])
        heads = lambda a: a.reshape(b, t, self.h, self.k).transpose(0, 2, 1, 3)  # noqa: E731
        q = l2norm(jax.nn.silu(heads(q)))
        k = l2norm(jax.nn.silu(heads(k)))
        v = jax.nn.silu(heads(v))
        if self.v_norm:
            v = l2norm(v)
        logits = self.w_gates(x_BxTxD.astype(jnp.float32)) + self.gate_bias[...][None, None, :]
        g = jax.nn.sigmoid(logits).reshape(b, t, 3, self.h).transpose(2, 0, 3, 1)  # [3,B,H,T]
        theta, eta, alpha = self.theta_max * g[0], g[1], g[2]
        chunk = call_chunk(self.chunk_size, t)
        if self.kind == "linear":
            run = mem_ops.batched(mem_ops.titans_linear, state_has_batch=True)
            y, (w, s) = run(q, k, v, theta, eta, alpha, state["w"][0], state["s"][0],
                            chunk_size=chunk, remat_group=self.remat_group,
                            unroll_max=self.unroll_max)
            w, s = (w,), (s,)
        elif self.fused and titans_fused.fits_call(t, chunk):
            ln = (self.ln_scale[...], self.ln_bias[...]) if self.residual_norm else None
            y, (w, s) = titans_fused.titans_mlp_heads(q, k, v, theta, eta, alpha, state["w"],
                                                      state["s"], ln, chunk)
        else:
            def one(q, k, v, th, et, al, w, s, ln):
                return mem_ops.titans_mlp(q, k, v, th, et, al, w, s, chunk,
                                          remat_group=self.remat_group, residual_norm=ln,
                                          unroll_max=self.unroll_max)
            ln = (self.ln_scale[...], self.ln_bias[...]) if self.residual_norm else None
            run = jax.vmap(jax.vmap(one), in_axes=(0,) * 8 + (None,))  # LN params per head only
            y, (w, s) = run(q, k, v, theta, eta, alpha, state["w"], state["s"], ln)
        y = self.out_norm(y.transpose(0, 2, 1, 3)).reshape(b, t, self.h * self.k)
        new_state = {"w": tuple(w), "s": tuple(s), "conv_q": cq, "conv_k": ck, "conv_v": cv}
        return self.wo(y), new_state
