"""Teach signal helpers (NL §7.1; docs/memories.md, "CMS and the teach signal"): the
scheduled scale and per-token clipping."""

from __future__ import annotations

import jax.numpy as jnp


def teach_scale_at(step, base: float, warmup_steps: int, decay_start: int,
                   decay_duration: int):
    """The reproduction's schedule, as a jnp scalar of the (0-based) optimizer step:

      s = base · min(1, (step+1)/warmup)                                   if warmup > 0
            · max(0, 1 − min(1, (step+1 − decay_start)/decay_duration))     if step+1 > decay_start
    decay_duration <= 0 with decay_start > 0 switches the signal off at decay_start.
    """
    n = jnp.asarray(step, jnp.float32) + 1.0
    s = jnp.asarray(base, jnp.float32)
    if warmup_steps > 0:
        s = s * jnp.minimum(1.0, n / warmup_steps)
    if decay_start > 0:
        if decay_duration > 0:
            frac = jnp.clip((n - decay_start) / decay_duration, 0.0, 1.0)
        else:
            frac = (n > decay_start).astype(jnp.float32)
        s = s * jnp.where(n > decay_start, 1.0 - frac, 1.0)
    return s


def scale_and_clip(delta_BxTxD, scale, clip: float):
    """δ̃ = s·δ, then per token δ̃ ← δ̃ / max(1, ‖δ̃‖/c) (no clipping when c <= 0)."""
    d = delta_BxTxD * scale
    if clip and clip > 0:
        norm = jnp.sqrt(jnp.sum(d * d, axis=-1, keepdims=True))
        d = d / jnp.maximum(1.0, norm / clip)
    return d
