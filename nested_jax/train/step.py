"""Pure train / eval steps (module level, jitted once by the loop)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from nested_jax.model.loss import token_losses
from nested_jax.model.online import fast_axes


def init_train_state(params, tx, fast=None) -> dict:
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
    if fast is not None:
        state["fast"] = fast
    return state


def loss_and_grads(params, tokens_BxT1, step, fast=None, *, fn, accum: int = 1):
    """((mean loss, (metrics, final fast state)), grads) of one batch. Data parallelism
    (nested_jax.train.parallel) runs this per device inside shard_map. accum > 1
    (train.grad_accum): the rows run in `accum` equal slices one after another (a scan:
    activation memory of one slice), losses, metrics and gradients averaged — equal slices
    make that the mean over all rows, the same update; the fast state's rows follow
    their tokens."""
    if accum > 1:
        return _accumulated(params, tokens_BxT1, step, fast, fn=fn, accum=accum)

    frozen = tuple(getattr(fn.cfg, "freeze", ()) or ())

    def loss_fn(p):
        if frozen:  # model.freeze: no gradient flows into these leaves (their weight-gradient
            p = _stop_frozen(p, frozen)  # work is never done; the optimizer masks them too)
        out = token_losses(fn, p, tokens_BxT1, step, fast)
        return out.loss, (out.metrics, out.fast)

    return jax.value_and_grad(loss_fn, has_aux=True)(params)


def _accumulated(params, tokens_BxT1, step, fast, *, fn, accum: int):
    """`loss_and_grads` over `accum` row slices (its docstring)."""
    b = tokens_BxT1.shape[0]
    if b % accum:
        raise ValueError(f"train.grad_accum={accum} must divide the {b} rows of a batch.")

    def split(x, axis):  # [.., B, ..] → [accum, .., B/accum, ..] (slice k: rows k·B/k …)
        x = jnp.moveaxis(x, axis, 0)
        x = x.reshape((accum, x.shape[0] // accum) + x.shape[1:])
        return jnp.moveaxis(x, 1, axis + 1)

    def merge(x, axis):  # inverse of split
        x = jnp.moveaxis(x, axis + 1, 1)
        x = x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])
        return jnp.moveaxis(x, 0, axis)

    def batch_axis(axes):
        return axes.index("batch") if "batch" in axes else None

    axes = None if fast is None else fast_axes(fast)

    def map_fast(f, tree):  # apply f(leaf, batch axis) where the leaf has one
        return jax.tree.map(lambda x, a: x if batch_axis(a) is None else f(x, batch_axis(a)),
                            tree, axes)

    tok_k = split(tokens_BxT1, 0)
    # fast-state leaves with rows are sliced like the tokens; the others (the token counter)
    # are the same for every slice
    fast_k = None if fast is None else map_fast(split, jax.tree.map(
        lambda x, a: x if batch_axis(a) is not None else jnp.broadcast_to(x, (accum,) + x.shape),
        fast, axes))

    def one(acc, xs):
        tok, f = xs
        (loss, (metrics, new_fast)), grads = loss_and_grads(params, tok, step, f, fn=fn)
        return jax.tree.map(jnp.add, acc, grads), (loss, metrics, new_fast)

    zeros = jax.tree.map(jnp.zeros_like, params)
    grads, (loss_k, metrics_k, new_fast_k) = jax.lax.scan(one, zeros, (tok_k, fast_k))
    grads = jax.tree.map(lambda g: g / accum, grads)
    metrics = jax.tree.map(lambda m: m.mean(0), metrics_k)
    new_fast = None
    if fast is not None:
        new_fast = jax.tree.map(
            lambda x, a: x[-1] if batch_axis(a) is None else merge(x, batch_axis(a)),
            new_fast_k, axes)
    return (loss_k.mean(), (metrics, new_fast)), grads


def _stop_frozen(params, patterns):
    """`params` with jax.lax.stop_gradient on the leaves `model.freeze` names."""
    from nested_jax.train.optim import frozen_labels

    labels = frozen_labels(params, patterns)
    return jax.tree.map(lambda x, lab: jax.lax.stop_gradient(x) if lab == "frozen" else x,
                        params, labels)


def train_step(state: dict, batch: dict, *, fn, tx, lr_schedule, grad_fn=None, accum: int = 1):
    """One optimizer update (the model has no stochastic layer: a step is a function of the
    state and the batch alone, so a restart reproduces it). `grad_fn` (same contract as
    `loss_and_grads`) replaces the gradient computation, e.g. by its shard_map data-parallel
    form; the optimizer update stays global (GSPMD). accum: train.grad_accum
    (`loss_and_grads`)."""
    step = state["step"]
    if grad_fn is None:
        grad_fn = functools.partial(loss_and_grads, fn=fn, accum=accum)
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
    ce = token_losses(fn, params, tokens_BxT1, step).ce_BxT
    return ce.sum(), jnp.asarray(ce.size, jnp.float32)
