"""HOPE's self-modifying Titans branch (NL §8; docs/memories.md, "Self-modifying
Titans"), per head, around ops.selfmod.

x → causal conv → heads; q from a fixed (outer-trained) projection (or the in-context M_q
with `adaptive_q`); the residual-MLP memories' initial states M_□,0 are trained parameters
(all of them meta-learned, NL §8.1); their running states (and momenta) are carried across
segments. The NL Table 6 ablation switches (`mem_read`, `dgd`, `retention`, `inner_k`,
`inner_v`, `adaptive_q`, `momentum`) come from config.model.selfmod.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from nested_jax.model.layers import CausalConv, Dense, RMSNorm
from nested_jax.ops import selfmod as sm_ops, selfmod_fused
from nested_jax.ops.scan import call_chunk


class SelfModTitans(nnx.Module):
    def __init__(self, cfg, *, out_std: float, rngs: nnx.Rngs, dtype=jnp.float32):
        s = cfg.selfmod
        d, h = cfg.d_model, cfg.n_heads
        k = cfg.head_dim or d // h
        self.h, self.k, self.dtype = h, k, dtype
        self.chunk_size, self.chunk_size_mem = s.chunk_size, s.chunk_size_mem or s.chunk_size
        self.eta_scale, self.momentum, self.remat_group = s.eta_scale, s.momentum, s.remat_group
        self.unroll_max = cfg.unroll_chunks
        self.fused = selfmod_fused.model_uses_kernels(cfg)  # the chunk scans as kernels
        self.v_norm = s.v_norm
        self.adaptive_q = s.adaptive_q
        self.switches = dict(mem_read=s.mem_read, dgd=s.dgd, retention=s.retention,
                             frozen=tuple(n for n, on in (("k", s.inner_k), ("v", s.inner_v))
                                          if not on))
        self.w_in = Dense(d, h * k, std=d**-0.5, rngs=rngs, dtype=dtype)
        self.conv = CausalConv(h * k, s.conv_width, rngs=rngs)
        if not self.adaptive_q:
            self.wq = Dense(h * k, h * k, std=(h * k) ** -0.5, rngs=rngs, dtype=dtype)
        keys = jax.random.split(rngs.params(), h)
        per_head = [sm_ops.init_selfmod_params(kk, k, s.hidden_mult * k, alpha_init=s.alpha_init,
                                               adaptive_q=self.adaptive_q)
                    for kk in keys]
        stacked = jax.tree.map(lambda *a: jnp.stack(a), *per_head)
        self.mems = nnx.Dict({n: nnx.Dict({p: nnx.Param(v) for p, v in m.items()})
                              for n, m in stacked.items()})
        self.out_norm = RMSNorm(k, eps=cfg.norm_eps, dtype=dtype)
        self.wo = Dense(h * k, d, std=out_std, rngs=rngs, dtype=dtype)

    def params0(self) -> dict:
        return {n: {p: v[...] for p, v in m.items()} for n, m in self.mems.items()}

    def init_state(self, batch: int) -> dict:
        p0 = self.params0()
        bcast = lambda a: jnp.broadcast_to(a[None], (batch,) + a.shape)  # noqa: E731
        mems = jax.tree.map(bcast, p0)
        moms = {n: {"A": jnp.zeros_like(m["A"]), "B": jnp.zeros_like(m["B"])} for n, m in mems.items()}
        conv = jnp.zeros((batch, self.conv.width - 1, self.h * self.k), self.dtype)
        return {"mems": mems, "moms": moms, "conv": conv}

    def __call__(self, x_BxTxD, state: dict | None = None):
        b, t, _ = x_BxTxD.shape
        if state is None:
            state = self.init_state(b)
        u, conv = self.conv(self.w_in(x_BxTxD), state["conv"])
        heads = lambda a: a.reshape(b, t, self.h, self.k).transpose(0, 2, 1, 3)  # noqa: E731
        cs, csm = call_chunk(self.chunk_size, t), call_chunk(self.chunk_size_mem, t)

        def one(mems, moms, x, q):
            return sm_ops.selfmod_titans(
                mems, x, q, chunk_size=cs, chunk_size_mem=csm, eta_scale=self.eta_scale,
                momentum=self.momentum, mom0=moms, remat_group=self.remat_group,
                unroll_max=self.unroll_max,
                v_norm=self.v_norm, **self.switches)

        if self.fused and (cs, csm) == (self.chunk_size, self.chunk_size_mem):
            sw = self.switches  # whole chunks: the kernels (decoding's short calls: XLA below)
            y, (mems, moms) = selfmod_fused.selfmod_heads(
                state["mems"], state["moms"], heads(u), heads(self.wq(u)), chunk_size=cs,
                chunk_size_mem=csm, eta_scale=self.eta_scale, v_norm=self.v_norm,
                retention=sw["retention"], mem_read=sw["mem_read"])
        elif self.adaptive_q:  # q_t = M_q(x_t), learned in context
            y, (mems, moms) = jax.vmap(jax.vmap(lambda m, s, x: one(m, s, x, None)))(
                state["mems"], state["moms"], heads(u))
        else:
            y, (mems, moms) = jax.vmap(jax.vmap(one))(state["mems"], state["moms"], heads(u),
                                                      heads(self.wq(u)))
        y = self.out_norm(y.transpose(0, 2, 1, 3)).reshape(b, t, self.h * self.k)
        return self.wo(y), {"mems": mems, "moms": moms, "conv": conv}
