"""The next-token loss of any variant, as training computes it (one home for train and eval):
the online segment scan for variants with CMS levels (docs/memories.md, "Online training"),
the plain full-sequence forward otherwise."""

from __future__ import annotations

from nested_jax.model.online import online_forward, strip_kv
from nested_jax.model.variants import get as get_variant
from nested_jax.ops.losses import token_cross_entropy


def token_losses(fn, params, tokens_BxT1, step, fast=None):
    """(ce_BxT, metrics, final fast state without the key/value buffer or None). `fast`
    continues a streaming fast state (model.online.reset = "never", docs/streaming.md)."""
    if get_variant(fn.cfg.variant).online:
        _, aux = online_forward(fn, params, tokens_BxT1, step=step, fast=fast)
        return aux["ce"], aux["metrics"], strip_kv(aux["fast"])
    logits = fn.bind(params)(tokens_BxT1[:, :-1])
    return token_cross_entropy(logits, tokens_BxT1[:, 1:]), {}, None


def lm_loss(fn, params, tokens_BxT1, step=0):
    """Mean next-token loss (the outer objective) from a fresh fast state."""
    return token_losses(fn, params, tokens_BxT1, step)[0].mean()


def streams(model_cfg) -> bool:
    """Whether the fast state streams across training steps (and is checkpointed)."""
    return get_variant(model_cfg.variant).online and model_cfg.online.reset == "never"
