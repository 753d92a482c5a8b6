"""Language-model shell: embedding → L stacked blocks (lax.scan) → RMSNorm → tied head."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from nested_jax.model.blocks import BLOCKS
from nested_jax.model.layers import Dense, Embed, RMSNorm
from nested_jax.model.variants import get as get_variant

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(cfg):
    if cfg.dtype not in DTYPES:
        raise ValueError(f"model.dtype={cfg.dtype!r}; choose one of {sorted(DTYPES)}.")
    return DTYPES[cfg.dtype]


class LM(nnx.Module):
    """Decoder-only LM. Blocks are stacked on a leading layer axis and run with lax.scan."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        get_variant(cfg.variant)  # a clear error for an unknown name
        dtype = compute_dtype(cfg)
        block_cls = BLOCKS[cfg.variant]
        self.cfg = cfg
        self.embed = Embed(cfg.vocab_size, cfg.d_model, std=cfg.init_std, rngs=rngs, dtype=dtype)

        @nnx.split_rngs(splits=cfg.n_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make_blocks(r):
            return block_cls(cfg, rngs=r, dtype=dtype)

        self.blocks = make_blocks(rngs)
        self.final_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, dtype=dtype)
        if not cfg.tie_embeddings:
            self.head = Dense(cfg.d_model, cfg.vocab_size, std=cfg.init_std, rngs=rngs, dtype=dtype)
        self.remat = cfg.remat

    # ---------------------------------------------------------------- per-sequence state
    def init_carry(self, batch: int, max_len: int) -> dict:
        """Per-layer state for the segment scan, stacked on a leading layer axis."""
        graphdef, layer_state = nnx.split(self.blocks)
        return jax.vmap(lambda st: nnx.merge(graphdef, st).init_carry(batch, max_len))(layer_state)

    def cms_meta(self) -> dict:
        """CMS meta parameters, stacked over layers ({} for variants without CMS)."""
        if not hasattr(self.blocks, "cms"):
            return {}
        return self.blocks.cms.meta()

    # ------------------------------------------------------------------------ forward
    def run_blocks(self, x_BxTxD, pos_T=None, carry=None, probes=None, remat=None,
                   unroll_layers=None):
        """Blocks + final norm. Returns (h, new_carry, aux), per-layer outputs stacked.
        remat: checkpoint each block (None: model.remat); the online scan passes False and
        checkpoints whole segments instead (`nested_jax.model.online.online_forward`).
        unroll_layers: unroll the layer scan when n_layers <= this (None: model.unroll_layers)."""
        if pos_T is None:
            pos_T = jnp.arange(x_BxTxD.shape[1], dtype=jnp.int32)
        graphdef, layer_state = nnx.split(self.blocks)

        def body(x, xs):
            st, c, p = xs
            x, c, aux = nnx.merge(graphdef, st)(x, pos_T, c, p)
            return x, (c, aux)

        if self.remat if remat is None else remat:
            body = jax.checkpoint(body)
        n = self.cfg.n_layers
        limit = self.cfg.unroll_layers if unroll_layers is None else unroll_layers
        unroll = n if n <= limit else 1  # small stacks: no loop overhead
        x, (new_carry, aux) = jax.lax.scan(body, x_BxTxD, (layer_state, carry, probes),
                                           unroll=unroll)
        return self.final_norm(x), new_carry, aux

    def hidden(self, tokens_BxT, pos_T=None):
        """Final hidden states [B, T, D] of the plain full-sequence forward."""
        return self.run_blocks(self.embed(tokens_BxT), pos_T)[0]

    def head_weight(self):
        """The LM head as a [V, D] matrix (the embedding when tied)."""
        if self.cfg.tie_embeddings:
            return self.embed.embedding[...]
        return self.head.kernel[...].T

    def logits(self, x_BxTxD):
        if self.cfg.tie_embeddings:
            return self.embed.attend(x_BxTxD)
        return self.head(x_BxTxD).astype(jnp.float32)

    def logits_with_carry(self, tokens_BxS, pos_S, carry):
        """Logits of a piece of text at positions pos_S that continues the per-layer state
        `carry` (chunked scoring of long inputs): (logits, new_carry, aux)."""
        h, carry, aux = self.run_blocks(self.embed(tokens_BxS), pos_S, carry)
        return self.logits(h), carry, aux

    def __call__(self, tokens_BxT, pos_T=None):
        return self.logits(self.hidden(tokens_BxT, pos_T))


def build_model(cfg, seed: int) -> LM:
    return LM(cfg, rngs=nnx.Rngs(params=seed))


class Functional:
    """A model as (graphdef, template): `bind(params)` rebuilds the module from a pure dict.

    Training keeps parameters as a plain nested dict (what Optax updates and Orbax saves);
    only the module structure is captured here.
    """

    def __init__(self, model: nnx.Module):
        self.graphdef, self._template = nnx.split(model)
        self.cfg = model.cfg

    def params(self, model: nnx.Module | None = None) -> dict:
        state = self._template if model is None else nnx.split(model)[1]
        return nnx.to_pure_dict(state)

    def bind(self, params: dict) -> nnx.Module:
        state = jax.tree.map(lambda x: x, self._template)
        nnx.replace_by_pure_dict(state, params)
        return nnx.merge(self.graphdef, state)


def init_params(cfg, seed: int) -> tuple[Functional, dict]:
    """Build the model once; return its functional form and float32 parameters."""
    model = build_model(cfg, seed)
    fn = Functional(model)
    return fn, fn.params(model)


def abstract_model(cfg) -> Functional:
    """Functional form without allocating parameters (for restores)."""
    return Functional(nnx.eval_shape(lambda: build_model(cfg, 0)))
