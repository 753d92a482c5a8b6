"""A small self-contained trainer for evaluation protocols (continual learning, tests).

Optax AdamW (+ global-norm clip) on a parameter dict, with the training loss
(`nested_jax.model.loss.lm_loss`: the online segment scan from a fresh fast state for HOPE
variants, the plain next-token cross-entropy otherwise). It does not import nested_jax.train.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from nested_jax.model.loss import lm_loss


def adamw(lr: float, weight_decay: float = 0.0, clip: float = 1.0):
    """AdamW with the training default's betas (nested_jax/configs/default.py optim.b1, b2)."""
    from nested_jax.configs.default import get_config

    o = get_config().optim
    parts = [optax.clip_by_global_norm(clip)] if clip > 0 else []
    return optax.chain(*parts, optax.adamw(lr, b1=o.b1, b2=o.b2, weight_decay=weight_decay))


class Trainer:
    """trainer = Trainer(fn, params, lr=...); loss = trainer.step(tokens_BxT1)."""

    def __init__(self, fn, params, *, lr: float, weight_decay: float = 0.0, clip: float = 1.0,
                 start_step: int = 0):
        self.fn = fn
        self.tx = adamw(lr, weight_decay, clip)
        self.params = jax.tree.map(jnp.array, params)  # a copy: steps donate it
        self.opt_state = self.tx.init(self.params)
        self.count = int(start_step)

        def step(params, opt_state, tokens, count):
            loss, grads = jax.value_and_grad(lambda p: lm_loss(fn, p, tokens, count))(params)
            updates, opt_state = self.tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        self._step = jax.jit(step, donate_argnums=(0, 1))

    def step(self, tokens_BxT1) -> float:
        self.params, self.opt_state, loss = self._step(
            self.params, self.opt_state, jnp.asarray(tokens_BxT1, jnp.int32),
            jnp.asarray(self.count, jnp.int32))
        self.count += 1
        return loss
