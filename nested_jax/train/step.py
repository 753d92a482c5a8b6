"""Pure train / eval steps (module level, jitted once by the loop)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from nested_jax.ops.losses import mean_cross_entropy, token_cross_entropy


def lm_loss(fn, params, tokens_BxT1):
    """Mean next-token loss of a full-sequence forward."""
    model = fn.bind(params)
    logits = model(tokens_BxT1[:, :-1])
    return mean_cross_entropy(logits, tokens_BxT1[:, 1:])


def init_train_state(params, tx) -> dict:
    return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}


def train_step(state: dict, batch: dict, *, fn, tx, lr_schedule, seed: int):
    """One optimizer update. Randomness (if any) derives from fold_in(seed, step)."""
    step = state["step"]
    rng = jax.random.fold_in(jax.random.key(seed), step)
    del rng  # Transformer++ is deterministic; variants with stochastic parts use it.
    loss, grads = jax.value_and_grad(lambda p: lm_loss(fn, p, batch["tokens"]))(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = {
        "loss": loss,
        "grad_norm": optax.tree.norm(grads),
        "lr": lr_schedule(step),
    }
    return {"params": params, "opt_state": opt_state, "step": step + 1}, metrics


def eval_step(params, tokens_BxT1, *, fn):
    """Sum of token losses and token count of one batch (summed over batches by the caller)."""
    model = fn.bind(params)
    logits = model(tokens_BxT1[:, :-1])
    ce = token_cross_entropy(logits, tokens_BxT1[:, 1:])
    return ce.sum(), jnp.asarray(ce.size, jnp.float32)
