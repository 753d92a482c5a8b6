"""The next-token loss of any variant, as training computes it (one home for train and eval):
the online segment scan for variants with CMS levels (docs/memories.md, "Online training"),
the plain full-sequence forward otherwise."""

from __future__ import annotations

from typing import NamedTuple

import jax

from nested_jax.model.online import online_forward, strip_kv, update_metrics
from nested_jax.model.variants import get as get_variant
from nested_jax.ops.losses import token_cross_entropy


class Losses(NamedTuple):
    loss: jax.Array          # mean next-token loss (the outer objective)
    ce_BxT: jax.Array        # per-token losses
    metrics: dict            # online variants: teach_scale and cms/<layer>/<level>/updates
    fast: dict | None        # final fast state without the key/value buffer (online only)


def token_losses(fn, params, tokens_BxT1, step, fast=None) -> Losses:
    """The loss of one batch as training computes it. `fast` continues a streaming fast state
    (model.online.reset = "never", docs/streaming.md)."""
    if get_variant(fn.cfg.variant).online:
        loss, aux = online_forward(fn, params, tokens_BxT1, step=step, fast=fast)
        metrics = {**aux["metrics"], **update_metrics(aux["cms_updates"])}
        return Losses(loss, aux["ce"], metrics, strip_kv(aux["fast"]))
    logits = fn.bind(params)(tokens_BxT1[:, :-1])
    ce = token_cross_entropy(logits, tokens_BxT1[:, 1:])
    return Losses(ce.mean(), ce, {}, None)


def lm_loss(fn, params, tokens_BxT1, step=0):
    """Mean next-token loss (the outer objective) from a fresh fast state."""
    return token_losses(fn, params, tokens_BxT1, step).loss


def streams(model_cfg) -> bool:
    """Whether the fast state streams across training steps (and is checkpointed)."""
    return get_variant(model_cfg.variant).online and model_cfg.online.reset == "never"
