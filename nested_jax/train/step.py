"""Pure train / eval steps (module level, jitted once by the loop)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from nested_jax.model.blocks import ONLINE_VARIANTS
from nested_jax.model.online import online_forward
from nested_jax.ops.losses import token_cross_entropy


def token_losses(fn, params, tokens_BxT1, step):
    """Per-token CE [B, T] and metrics: the online segment scan for variants with CMS
    levels (DESIGN §2.4), the plain full-sequence forward otherwise."""
    if fn.cfg.variant in ONLINE_VARIANTS:
        _, aux = online_forward(fn, params, tokens_BxT1, step=step)
        return aux["ce"], aux["metrics"]
    logits = fn.bind(params)(tokens_BxT1[:, :-1])
    return token_cross_entropy(logits, tokens_BxT1[:, 1:]), {}


def lm_loss(fn, params, tokens_BxT1, step=0):
    """Mean next-token loss (the outer objective)."""
    return token_losses(fn, params, tokens_BxT1, step)[0].mean()


def init_train_state(params, tx) -> dict:
    return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}


def train_step(state: dict, batch: dict, *, fn, tx, lr_schedule, seed: int):
    """One optimizer update. Randomness (if any) derives from fold_in(seed, step)."""
    step = state["step"]
    rng = jax.random.fold_in(jax.random.key(seed), step)
    del rng  # no stochastic layers yet; kept so restarts stay reproducible when added

    def loss_fn(p):
        ce, metrics = token_losses(fn, p, batch["tokens"], step)
        return ce.mean(), metrics

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads),
               "lr": lr_schedule(step)}
    return {"params": params, "opt_state": opt_state, "step": step + 1}, metrics


def eval_step(params, tokens_BxT1, step, *, fn):
    """Sum of token losses and token count of one batch (summed over batches by the caller)."""
    ce, _ = token_losses(fn, params, tokens_BxT1, step)
    return ce.sum(), jnp.asarray(ce.size, jnp.float32)
