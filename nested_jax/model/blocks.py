"""Blocks of every variant (README "Models"; docs/architecture.md) behind one interface:

    block(x, pos_T, carry=None, probes=None) -> (x, carry, aux)
    block.init_carry(batch, max_len) -> carry   (per-sequence state carried across segments)

carry=None is the plain full-sequence forward (fresh memories, CMS meta weights). In the
online segment scan the carry holds the attention key/value buffer ("kv"), the Titans
or self-modifying memory state ("titans" / "selfmod") and the CMS fast deltas ("cms");
aux["cms_inputs"] holds each CMS level's input (for its inner gradient).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from nested_jax.model.cms import CMS
from nested_jax.model.layers import Attention, RMSNorm, SwiGLU
from nested_jax.model.selfmod import SelfModTitans
from nested_jax.model.titans import TitansMemory
from nested_jax.model.variants import Tiling, Variant
from nested_jax.ops.scan import call_chunk

_TITANS_CHUNK = Tiling("Titans memory", "titans.chunk_size", "titans.remat_group")
_SELFMOD_CHUNKS = (
    Tiling("self-modifying memory", "selfmod.chunk_size", "selfmod.remat_group"),
    Tiling("self-modifying output memory", "selfmod.chunk_size_mem", "selfmod.remat_group",
           unset_field="selfmod.chunk_size"))
_MAC_SEGMENT = Tiling("Titans MAC attention", "titans.mac_segment", scope=True)


def ffn_width(d_model: int, d_ff: int) -> int:
    """d_ff, or the SwiGLU default 8/3·d rounded up to a multiple of 64."""
    if d_ff > 0:
        return d_ff
    return int(-(-(8 * d_model // 3) // 64) * 64)


def rope_scaling(cfg) -> dict:
    """The model config's RoPE scaling as `attn_ops.rope_frequencies` keywords ({}: none)."""
    if cfg.rope_scaling == "none":
        return {}
    return {"scaling": cfg.rope_scaling, "factor": cfg.rope_factor,
            "low_freq_factor": cfg.rope_low_freq_factor,
            "high_freq_factor": cfg.rope_high_freq_factor,
            "original_max_len": cfg.rope_original_max_len}


def _get(carry, key):
    return None if carry is None else carry.get(key)


class _Base(nnx.Module):
    spec: Variant  # what the variant is (model/variants.py); each block class declares it
    has_attention = False

    def _attention(self, cfg, out_std, rngs, dtype, n_persistent=0):
        d, h = cfg.d_model, cfg.n_heads
        self.attn_norm = RMSNorm(d, eps=cfg.norm_eps, dtype=dtype)
        impl = cfg.attention_impl
        if impl == "auto" and self.spec.online:
            # The online step differentiates (outer loss) through the inner jax.vjp of the
            # teach signal; jax's cuDNN attention has no derivative of its own forward rule,
            # so these blocks stay on XLA (validate.finalize_config rejects "cudnn" for them).
            impl = "xla"
        self.attn = Attention(d, h, cfg.head_dim or d // h, out_std=out_std,
                              window=cfg.attention_window, rope_base=cfg.rope_base,
                              n_persistent=n_persistent, n_kv_heads=cfg.n_kv_heads,
                              impl=impl, qkv_bias=cfg.attention_bias,
                              rope_scaling=rope_scaling(cfg), rngs=rngs, dtype=dtype)
        self.has_attention = True

    def _cms(self, cfg, out_std, rngs, dtype):
        c = cfg.cms
        self.cms = CMS(cfg.d_model, tuple(c.names), c.hidden or c.hidden_mult * cfg.d_model,
                       out_std=out_std, rngs=rngs, eps=cfg.norm_eps, dtype=dtype, mlp=c.mlp)

    def _attend(self, x, pos_T, carry, new):
        y, kv = self.attn(self.attn_norm(x), pos_T, _get(carry, "kv"))
        if carry is not None:
            new["kv"] = kv
        return x + y.astype(x.dtype)

    def _run_cms(self, x, carry, probes, new, aux):
        x, inputs = self.cms(x, _get(carry, "cms"), probes)
        if carry is not None:
            new["cms"] = carry["cms"]
        aux["cms_inputs"] = inputs
        return x

    def init_carry(self, batch: int, max_len: int) -> dict:
        carry = {}
        if self.has_attention:
            carry["kv"] = self.attn.init_kv(batch, max_len)
        if hasattr(self, "titans"):
            carry["titans"] = self.titans.init_state(batch)
        if hasattr(self, "selfmod"):
            carry["selfmod"] = self.selfmod.init_state(batch)
        if hasattr(self, "cms"):
            carry["cms"] = jax.tree.map(
                lambda m: jnp.zeros((batch,) + m.shape, jnp.float32), self.cms.meta())
        return carry


def _out_std(cfg):
    return cfg.init_std / (2 * cfg.n_layers) ** 0.5


class TransformerBlock(_Base):
    """Transformer++: x + Attn(norm x), then x + SwiGLU(norm x)."""

    spec = Variant("transformer", "Transformer++ baseline", "paper", hf_export="direct")

    def __init__(self, cfg, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self._attention(cfg, _out_std(cfg), rngs, dtype)
        self.mlp_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, dtype=dtype)
        self.mlp = SwiGLU(cfg.d_model, ffn_width(cfg.d_model, cfg.d_ff), out_std=_out_std(cfg),
                          rngs=rngs, dtype=dtype)

    def __call__(self, x, pos_T, carry=None, probes=None):
        new = {}
        x = self._attend(x, pos_T, carry, new)
        x = x + self.mlp(self.mlp_norm(x)).astype(x.dtype)
        return x, (new if carry is not None else None), {}


TITANS_MODES = ("mag", "mal", "mac")


class TitansBlock(_Base):
    """Titans baseline: attention (full or sliding window, persistent tokens) and the
    Titans neural memory as a gate (MAG, Titans §4.2), as a layer before attention (MAL,
    §4.3) or as context (MAC, §4.1), then SwiGLU.

    MAC, per segment of `titans.mac_segment` tokens (a scan: each segment needs the memory
    the previous one left): retrieve h_t = M*_{i-1}(q_t) for every token (no write), attend
    causally over [persistent, h, segment] — h_j and x_j are interleaved so token j sees the
    retrieved h_j' and tokens x_j' for j' ≤ j only — write the attention output y into the
    memory and read it after the write, o = y ⊗ σ(M*_i(y)) (gated as in MAG)."""

    spec = Variant("titans", "Titans baseline", "paper", memory="titans", groups=("titans",),
                   tilings=(_MAC_SEGMENT, _TITANS_CHUNK), titans_mode=True)

    def __init__(self, cfg, *, rngs: nnx.Rngs, dtype=jnp.float32):
        t = cfg.titans
        if t.mode not in TITANS_MODES:
            raise ValueError(f"model.titans.mode={t.mode!r}; choose one of {TITANS_MODES}.")
        self.mode = t.mode
        self.mac_segment = t.mac_segment
        self._attention(cfg, _out_std(cfg), rngs, dtype, n_persistent=t.persistent_tokens)
        self.mem_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, dtype=dtype)
        self.titans = TitansMemory(cfg, out_std=_out_std(cfg), rngs=rngs, dtype=dtype,
                                   retrieval=self.mode == "mac")
        if self.mode in ("mag", "mac"):
            self.gate_norm_a = RMSNorm(cfg.d_model, eps=cfg.norm_eps, dtype=dtype)
            self.gate_norm_m = RMSNorm(cfg.d_model, eps=cfg.norm_eps, dtype=dtype)
        self.mlp_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, dtype=dtype)
        self.mlp = SwiGLU(cfg.d_model, ffn_width(cfg.d_model, cfg.d_ff), out_std=_out_std(cfg),
                          rngs=rngs, dtype=dtype)

    def _mac(self, x_BxTxD, state):
        """Memory as context over segments of mac_segment tokens (class docstring)."""
        b, t, d = x_BxTxD.shape
        seg = call_chunk(self.mac_segment, t)
        if t % seg:
            raise ValueError(f"model.titans.mac_segment={seg} must divide the {t} tokens of a "
                             "call; pick a divisor of the sequence (and online segment) length.")
        if state is None:
            state = self.titans.init_state(b)
        pos_2S = jnp.arange(2 * seg, dtype=jnp.int32)

        def one_segment(st, x_BxSxD):
            h = self.titans.retrieve(self.mem_norm(x_BxSxD), st)  # segment-start memory
            z = jnp.stack([h.astype(x_BxSxD.dtype), self.attn_norm(x_BxSxD)], axis=2)
            y, _ = self.attn(z.reshape(b, 2 * seg, d), pos_2S)  # [h_1, x_1, h_2, x_2, …]
            y = y[:, 1::2]  # outputs at the segment's own tokens
            m, st = self.titans(self.mem_norm(y), st)  # write y, read after the write
            return st, self.gate_norm_a(y) * jax.nn.sigmoid(self.gate_norm_m(m))

        xs = x_BxTxD.reshape(b, t // seg, seg, d).swapaxes(0, 1)
        state, o = jax.lax.scan(one_segment, state, xs)
        return o.swapaxes(0, 1).reshape(b, t, d), state

    def __call__(self, x, pos_T, carry=None, probes=None):
        new = {}
        if self.mode == "mac":
            o, new["titans"] = self._mac(x, _get(carry, "titans"))
            x = x + o.astype(x.dtype)
            if carry is not None and "kv" in carry:  # MAC attends within its segments only:
                new["kv"] = carry["kv"]  # the buffer passes through (same carry structure)
        elif self.mode == "mal":
            m, new["titans"] = self.titans(self.mem_norm(x), _get(carry, "titans"))
            x = x + m.astype(x.dtype)
            x = self._attend(x, pos_T, carry, new)
        else:
            h = self.attn_norm(x)
            a, kv = self.attn(h, pos_T, _get(carry, "kv"))
            if carry is not None:
                new["kv"] = kv
            m, new["titans"] = self.titans(self.mem_norm(x), _get(carry, "titans"))
            gated = self.gate_norm_a(a) * jax.nn.sigmoid(self.gate_norm_m(m))
            x = x + gated.astype(x.dtype)
        x = x + self.mlp(self.mlp_norm(x)).astype(x.dtype)
        return x, (new if carry is not None else None), {}


class HopeBlock(_Base):
    """Paper HOPE: x + SelfModTitans(norm x), then the CMS chain."""

    spec = Variant("hope", "NL §8.3 HOPE: self-modifying Titans → CMS", "paper", online=True,
                   attention=False, memory="selfmod", groups=("selfmod", "cms", "online"),
                   tilings=_SELFMOD_CHUNKS)

    def __init__(self, cfg, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.sm_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, dtype=dtype)
        self.selfmod = SelfModTitans(cfg, out_std=_out_std(cfg), rngs=rngs, dtype=dtype)
        self._cms(cfg, _out_std(cfg), rngs, dtype)

    def __call__(self, x, pos_T, carry=None, probes=None):
        new, aux = {}, {}
        o, new["selfmod"] = self.selfmod(self.sm_norm(x), _get(carry, "selfmod"))
        x = x + o.astype(x.dtype)
        x = self._run_cms(x, carry, probes, new, aux)
        return x, (new if carry is not None else None), aux


class HopeAttentionBlock(_Base):
    """Paper HOPE-Attention: x + Attn(norm x), then the CMS chain."""

    spec = Variant("hope_attention", "NL HOPE-Attention: attention → CMS", "paper", online=True,
                   groups=("cms", "online"), hf_export="stacked")

    def __init__(self, cfg, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self._attention(cfg, _out_std(cfg), rngs, dtype)
        self._cms(cfg, _out_std(cfg), rngs, dtype)

    def __call__(self, x, pos_T, carry=None, probes=None):
        new, aux = {}, {}
        x = self._attend(x, pos_T, carry, new)
        x = self._run_cms(x, carry, probes, new, aux)
        return x, (new if carry is not None else None), aux


class HopeHybridBlock(_Base):
    """The reproduction's default: attention → Titans memory → CMS chain (all residual)."""

    spec = Variant("hope_hybrid", "the reproduction's default: attention → Titans → CMS",
                   "choice", online=True, memory="titans", groups=("titans", "cms", "online"),
                   tilings=(_TITANS_CHUNK,))

    def __init__(self, cfg, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self._attention(cfg, _out_std(cfg), rngs, dtype)
        self.mem_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, dtype=dtype)
        self.titans = TitansMemory(cfg, out_std=_out_std(cfg), rngs=rngs, dtype=dtype)
        self._cms(cfg, _out_std(cfg), rngs, dtype)

    def __call__(self, x, pos_T, carry=None, probes=None):
        new, aux = {}, {}
        x = self._attend(x, pos_T, carry, new)
        m, new["titans"] = self.titans(self.mem_norm(x), _get(carry, "titans"))
        x = x + m.astype(x.dtype)
        x = self._run_cms(x, carry, probes, new, aux)
        return x, (new if carry is not None else None), aux


BLOCKS = {cls.spec.name: cls for cls in (TransformerBlock, TitansBlock, HopeBlock,
                                         HopeAttentionBlock, HopeHybridBlock)}
