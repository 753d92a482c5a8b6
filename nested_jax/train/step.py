"""Pure train / eval steps (module level, jitted once by the loop)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from nested_jax.model.blocks import ONLINE_VARIANTS
from nested_jax.model.online import online_forward
from nested_jax.ops.losses import token_cross_entropy


def token_losses(fn, params, tokens_BxT1, step, fast=None):
    """Per-token CE [B, T], metrics and the final fast state: the online segment scan for
    variants with CMS levels (DESIGN §2.4), the plain full-sequence forward otherwise.
    `fast` continues a streaming fast state (model.online.reset = "never")."""
    if fn.cfg.variant in ONLINE_VARIANTS:
        _, aux = online_forward(fn, params, tokens_BxT1, step=step, fast=fast)
        return aux["ce"], aux["metrics"], strip_kv(aux["fast"])
    logits = fn.bind(params)(tokens_BxT1[:, :-1])
    return token_cross_entropy(logits, tokens_BxT1[:, 1:]), {}, None


def strip_kv(fast):
    """The attention buffer is per sequence; streaming keeps everything else."""
    carry = {k: v for k, v in fast["carry"].items() if k != "kv"}
    return {**fast, "carry": carry}


def streams(cfg) -> bool:
    return cfg.variant in ONLINE_VARIANTS and cfg.online.reset == "never"


def lm_loss(fn, params, tokens_BxT1, step=0):
    """Mean next-token loss (the outer objective)."""
    return token_losses(fn, params, tokens_BxT1, step)[0].mean()


def init_train_state(params, tx, fast=None) -> dict:
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
    if fast is not None:
        state["fast"] = fast
    return state


def loss_and_grads(params, tokens_BxT1, step, fast=None, *, fn):
    """((mean loss, (metrics, final fast state)), grads) of one batch. Data parallelism
    (nested_jax.train.parallel) runs this per device inside shard_map."""

    def loss_fn(p):
        ce, metrics, new_fast = token_losses(fn, p, tokens_BxT1, step, fast)
        return ce.mean(), (metrics, new_fast)

    return jax.value_and_grad(loss_fn, has_aux=True)(params)


def train_step(state: dict, batch: dict, *, fn, tx, lr_schedule, seed: int, grad_fn=None):
    """One optimizer update. Randomness (if any) derives from fold_in(seed, step).
    `grad_fn` (same contract as `loss_and_grads`) replaces the gradient computation, e.g.
    by its shard_map data-parallel form; the optimizer update stays global (GSPMD)."""
    step = state["step"]
    rng = jax.random.fold_in(jax.random.key(seed), step)
    del rng  # no stochastic layers yet; kept so restarts stay reproducible when added

    if grad_fn is None:
        grad_fn = functools.partial(loss_and_grads, fn=fn)
    (loss, (metrics, fast)), grads = grad_fn(state["params"], batch["tokens"], step,
                                             state.get("fast"))
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads),
               "lr": lr_schedule(step)}
    new_state = {"params": params, "opt_state": opt_state, "step": step + 1}
    if "fast" in state:
        new_state["fast"] = jax.lax.stop_gradient(fast)
    return skip_nonfinite(state, new_state, metrics)


def skip_nonfinite(state: dict, new_state: dict, metrics: dict):
    """Non-finite guard: when the loss, the gradient or the updated parameters are not
    finite, keep the old params / optimizer / fast state (only the step advances, the batch
    is consumed) and report metrics["nonfinite"] = 1.0; the loop counts and aborts."""
    finite = [jnp.isfinite(metrics["loss"]), jnp.isfinite(metrics["grad_norm"])]
    finite += [jnp.isfinite(x).all() for x in jax.tree.leaves(new_state["params"])]
    ok = jnp.stack(finite).all()
    keep = lambda new, old: jnp.where(ok, new, old)  # noqa: E731
    out = {k: v if k == "step" else jax.tree.map(keep, v, state[k]) for k, v in new_state.items()}
    return out, {**metrics, "nonfinite": jnp.where(ok, 0.0, 1.0).astype(jnp.float32)}


def eval_step(params, tokens_BxT1, step, *, fn):
    """Sum of token losses and token count of one batch (summed over batches by the caller).
    Online variants run their online algorithm from a fresh fast state."""
    ce, _, _ = token_losses(fn, params, tokens_BxT1, step)
    return ce.sum(), jnp.asarray(ce.size, jnp.float32)
