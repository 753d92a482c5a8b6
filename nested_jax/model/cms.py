"""Continuum Memory System (docs/memories.md, "CMS"): a chain of residual MLP levels with
fast weights.

Level ℓ: y = x + GELU(RMSNorm(x) W1) W2, or with `mlp="swiglu"` a transformer's SwiGLU MLP
x + (silu(RMSNorm(x) W1) ⊙ RMSNorm(x) W3) W2 (`nested_jax.ops.cms.level_apply`). Its slow (meta)
parameters live here; the per-sequence fast state adds a stop-gradient delta per batch row,
so reads use meta + delta and the outer gradient reaches the meta parameters through the
reads. The updates (teach signal → inner optimizer) are `nested_jax.ops.cms.update_level`,
driven by the segment scan in `nested_jax.model.online`.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from nested_jax.model.layers import normal
from nested_jax.ops.cms import level_apply, level_apply_rows


CMS_MLPS = ("gelu", "swiglu")


class CMS(nnx.Module):
    """Levels in order fast → slow; `names` and `hidden` from config.model.cms."""

    def __init__(self, d: int, names: tuple, hidden: int, *, out_std: float, rngs: nnx.Rngs,
                 eps: float = 1e-6, dtype=jnp.float32, mlp: str = "gelu"):
        if mlp not in CMS_MLPS:
            raise ValueError(f"model.cms.mlp={mlp!r}; choose one of {CMS_MLPS}.")
        self.names = tuple(names)
        self.eps, self.dtype = eps, dtype

        def level():
            p = {"scale": nnx.Param(jnp.ones((d,), jnp.float32)),
                 "w1": nnx.Param(normal(rngs.params(), (d, hidden), d**-0.5)),
                 "w2": nnx.Param(normal(rngs.params(), (hidden, d), out_std))}
            if mlp == "swiglu":  # up projection W3 (w1 is the gate)
                p["w3"] = nnx.Param(normal(rngs.params(), (d, hidden), d**-0.5))
            return nnx.Dict(p)

        self.levels = nnx.Dict({n: level() for n in self.names})

    def meta(self) -> dict:
        return {n: {k: v[...] for k, v in self.levels[n].items()} for n in self.names}

    def __call__(self, x_BxTxD, fast: dict | None = None, probes: dict | None = None):
        """Returns (y, level_inputs): level_inputs[name] is that level's input (for inner grads).

        `probes[name]` (zeros) is added to the level's output so that d loss / d probe is the
        teach signal δ = ∂L/∂(level output).
        """
        meta = self.meta()
        inputs = {}
        for n in self.names:
            inputs[n] = x_BxTxD
            if fast is None:
                x_BxTxD = level_apply(meta[n], x_BxTxD, self.eps, self.dtype)
            else:  # per-row weights meta + delta: the outer gradient reaches meta through
                # the read, none flows into the delta (built from stop-gradient quantities)
                x_BxTxD = level_apply_rows(meta[n], fast[n], x_BxTxD, self.eps, self.dtype)
            if probes is not None and n in probes:  # outer-loop-only levels have no probe
                x_BxTxD = x_BxTxD + probes[n].astype(x_BxTxD.dtype)
        return x_BxTxD, inputs
