"""Language-model losses."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def token_cross_entropy(logits_BxTxV: jax.Array, targets_BxT: jax.Array) -> jax.Array:
    """Per-token next-token cross-entropy in float32, shape [B, T]."""
    logits = logits_BxTxV.astype(jnp.float32)
    logz_BxT = jax.nn.logsumexp(logits, axis=-1)
    tgt_BxT = jnp.take_along_axis(logits, targets_BxT[..., None], axis=-1)[..., 0]
    return logz_BxT - tgt_BxT


@jax.custom_vjp
def ce_and_hidden_grad(h_BxSxD, w_VxD, targets_BxS):
    """Per-token CE of logits = h wᵀ, and g = ∂ce_t/∂h_t (the teach signal at the head input).

    The backward pass reuses g: for a cotangent c on ce, ∂/∂h = c[..., None]·g, so the LM head
    costs three matmuls (logits, g, ∂w) although the forward also returns g — the same as a
    plain CE forward and backward. g itself is treated as non-differentiable (it feeds only
    stop-gradient inner updates).
    """
    ce, g, _ = _ce_hidden_fwd_impl(h_BxSxD, w_VxD, targets_BxS)
    return ce, g


def _ce_hidden_fwd_impl(h, w, targets):
    logits = jnp.einsum("bsd,vd->bsv", h, w.astype(h.dtype), preferred_element_type=jnp.float32)
    logz = jax.nn.logsumexp(logits, axis=-1)
    tgt = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    probs = jnp.exp(logits - logz[..., None])
    dlogits = probs - jax.nn.one_hot(targets, logits.shape[-1], dtype=jnp.float32)
    g = jnp.einsum("bsv,vd->bsd", dlogits.astype(h.dtype), w.astype(h.dtype),
                   preferred_element_type=jnp.float32)
    return logz - tgt, g, dlogits


def _ce_hidden_fwd(h, w, targets):
    ce, g, dlogits = _ce_hidden_fwd_impl(h, w, targets)
    return (ce, g), (h, w, g, dlogits, targets)


def _ce_hidden_bwd(res, cts):
    h, w, g, dlogits, targets = res
    ct_ce, _ = cts  # the cotangent of g is ignored (see docstring)
    dh = (ct_ce[..., None] * g).astype(h.dtype)
    dw = jnp.einsum("bsv,bsd->vd", (dlogits * ct_ce[..., None]).astype(h.dtype), h,
                    preferred_element_type=jnp.float32).astype(w.dtype)
    return dh, dw, np.zeros(targets.shape, jax.dtypes.float0)


ce_and_hidden_grad.defvjp(_ce_hidden_fwd, _ce_hidden_bwd)
