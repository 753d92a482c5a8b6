"""Outer optimizers and learning-rate schedules (Optax)."""

from __future__ import annotations

import jax
import optax


def schedule(o, total_steps: int) -> optax.Schedule:
    warmup = max(0, min(o.warmup_steps, total_steps))
    if o.schedule == "constant":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, o.lr, max(warmup, 1)), optax.constant_schedule(o.lr)],
            [max(warmup, 1)],
        )
    if o.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=o.lr, warmup_steps=max(warmup, 1),
            decay_steps=max(total_steps, warmup + 1), end_value=o.lr * o.min_lr_ratio,
        )
    raise ValueError(f"optim.schedule={o.schedule!r}; choose 'cosine' or 'constant'.")


def decay_mask(params):
    """Weight decay only on matrices (ndim >= 2), not norms, biases or scalars.

    The embedding is 2-D and decays too, as in most LM recipes.
    """
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def build_optimizer(o, total_steps: int) -> optax.GradientTransformation:
    lr = schedule(o, total_steps)
    if o.name == "adamw":
        tx = optax.adamw(lr, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                         mask=decay_mask)
    else:
        raise ValueError(f"optim.name={o.name!r} is unknown; choose 'adamw'.")
    if o.grad_clip and o.grad_clip > 0:
        tx = optax.chain(optax.clip_by_global_norm(o.grad_clip), tx)
    return tx
