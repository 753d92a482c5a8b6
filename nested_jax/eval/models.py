"""What the harnesses score with: per-token log-probs (and argmax) of a batch of sequences.

Two kinds, one interface (`run`, `memorize`, `fit`, `can_memorize`):
  PlainLM   full-sequence forward (transformer, titans, or any logits function: tests);
            sequences longer than `chunk` run as a scan over chunks with the key/value
            cache (the model's `segment`), so 64k-token prompts fit in memory.
  OnlineLM  the online segment scan of HOPE variants (`online_forward`): baseline scores
            with updates on (the model's own algorithm, fresh state per row), memorised
            scores read with a given fast state (`update=False`).

Fast states name their axes (`nested_jax.model.online.fast_axes`); `expand_fast` repeats a
one-row state over the rows of a batch along the "batch" axis.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from nested_jax.model.variants import get as get_variant
from nested_jax.model import online
from nested_jax.model.online import online_forward
from nested_jax.ops.losses import token_cross_entropy


def _logp_argmax(logits, targets):
    return -token_cross_entropy(logits, targets), jnp.argmax(logits, -1).astype(jnp.int32)


# Chunked scoring cuts inputs into chunks whose length is a multiple of 16, the base of the
# padded lengths scoring compiles for (eval.scoring.pad_len's 16·{1, 1.5, 2, 3}·4^k ladder).
CHUNK_QUANTUM = 16

class PlainLM:
    """apply_fn(params, tokens_BxT) -> logits [B, T, V]; no fast state.

    With `fn` (a Functional) and `chunk` > 0, inputs longer than `chunk` tokens run as a
    scan over chunks (model.segment with the key/value cache): the same scores, memory
    linear in the length instead of quadratic."""

    can_memorize = False

    def __init__(self, apply_fn, params=None, name: str = "plain", *, fn=None, chunk: int = 0,
                 multiple: int = 1):
        self.params, self.name = params, name
        self.multiple = int(multiple)  # lengths must be multiples of this (Titans chunks)
        self._step = math.lcm(CHUNK_QUANTUM, self.multiple)  # chunk sizes are multiples of this
        self.chunk = -(-int(chunk) // self._step) * self._step if fn is not None and chunk else 0

        def run(params, tokens_BxT1):
            return _logp_argmax(apply_fn(params, tokens_BxT1[:, :-1]), tokens_BxT1[:, 1:])

        def run_chunked(params, tokens_BxT1):
            model = fn.bind(params)
            b, t = tokens_BxT1.shape[0], tokens_BxT1.shape[1] - 1
            n = -(-t // self.chunk)  # equal chunks of at most `chunk` tokens
            c = t // n
            split = lambda a: a.reshape(b, n, c).swapaxes(0, 1)  # noqa: E731

            def body(carry, x):
                tok, tgt, i = x
                pos = (i * c + jnp.arange(c)).astype(jnp.int32)
                logits, carry, _ = model.logits_with_carry(tok, pos, carry)
                return carry, _logp_argmax(logits, tgt)

            xs = (split(tokens_BxT1[:, :-1]), split(tokens_BxT1[:, 1:]), jnp.arange(n))
            _, (lp, am) = jax.lax.scan(body, model.init_carry(b, t), xs)
            return lp.swapaxes(0, 1).reshape(b, t), am.swapaxes(0, 1).reshape(b, t)

        self._run = jax.jit(run)
        self._run_chunked = jax.jit(run_chunked)

    def fit(self, n: int) -> int:
        """Padded length for n input tokens: a multiple of `multiple`; above `chunk`, k equal
        chunks of at most `chunk` tokens (k = ⌈n / chunk⌉, so little padding)."""
        c, m = self.chunk, self.multiple
        if not c or n <= c:
            return -(-n // m) * m
        k = -(-n // c)
        per = -(-n // k)
        return k * (-(-per // self._step) * self._step)

    def run(self, tokens_BxT1, mask_BxT=None, fast=None, want_argmax=False):
        """(logp [B, T], argmax [B, T] or None) as numpy; `fast` must be None."""
        del mask_BxT
        if fast is not None:
            raise ValueError(f"{self.name} has no fast state to read with.")
        tokens = jnp.asarray(tokens_BxT1, jnp.int32)
        t = tokens.shape[1] - 1
        if self.chunk and t > self.chunk:
            if self.fit(t) != t:
                raise ValueError(f"{t} input tokens cannot be cut into equal chunks of at most "
                                 f"{self.chunk}; pad to model.fit(n) = {self.fit(t)} first.")
            logp, am = self._run_chunked(self.params, tokens)
        else:
            logp, am = self._run(self.params, tokens)
        return np.asarray(logp), (np.asarray(am) if want_argmax else None)

    def memorize(self, prompt_BxT1, mask_BxT, *, steps, fast=None, reset=True, teach_scale=None):
        raise ValueError(f"{self.name} has no CMS levels: memorisation is a no-op.")


def expand_fast(fast, rows: int):
    """Repeat a one-row fast state over `rows` batch rows (along each leaf's "batch" axis)."""
    def rep(x, axes):
        if "batch" not in axes or x.shape[axes.index("batch")] == rows:
            return x
        d = axes.index("batch")
        if x.shape[d] != 1:
            raise ValueError(f"cannot expand a fast state with {x.shape[d]} rows to {rows}.")
        return jnp.repeat(x, rows, axis=d)
    return jax.tree.map(rep, fast, online.fast_axes(fast))


class OnlineLM:
    """A HOPE variant scored with its online algorithm (docs/streaming.md, "Who keeps it")."""

    can_memorize = True

    def __init__(self, fn, params, step: int = 0, name: str = "online"):
        self.fn, self.params, self.step, self.name = fn, params, int(step), name
        self.segment_len = int(fn.cfg.online.segment_len)

        def run(params, tokens, mask, fast, *, update, argmax):
            _, aux = online_forward(fn, params, tokens, step=self.step, update=update,
                                    fast=fast, mask_BxT=mask, collect_argmax=argmax)
            return -aux["ce"], (aux["argmax"] if argmax else None)

        self._run = {(u, a): jax.jit(functools.partial(run, update=u, argmax=a))
                     for u in (True, False) for a in (True, False)}
        self._mem = jax.jit(functools.partial(online.memorize_pass, fn, step=self.step))

    def fit(self, n: int) -> int:
        """Padded length for n input tokens: a multiple of the segment length."""
        s = self.segment_len
        return -(-n // s) * s

    def run(self, tokens_BxT1, mask_BxT=None, fast=None, want_argmax=False):
        """Baseline (fast=None): online scan with CMS updates from a fresh state per row.
        With `fast`: read with that state (no writes), as memorised scoring does."""
        tokens = jnp.asarray(tokens_BxT1, jnp.int32)
        b, t = tokens.shape[0], tokens.shape[1] - 1
        if t % self.segment_len:
            raise ValueError(f"{t} input tokens is not a multiple of the segment length "
                             f"{self.segment_len}; pad to model.fit(n) first.")
        mask = jnp.ones((b, t), jnp.float32) if mask_BxT is None else jnp.asarray(mask_BxT,
                                                                                  jnp.float32)
        if fast is not None:
            fast = expand_fast(fast, b)
        logp, am = self._run[(fast is None, want_argmax)](self.params, tokens, mask, fast)
        return np.asarray(logp), (np.asarray(am) if want_argmax else None)

    def memorize(self, prompt_BxT1, mask_BxT, *, steps: int, fast=None, reset: bool = True,
                 teach_scale: float | None = None):
        """`steps` passes of the online scan over the prompt (`nested_jax.model.online.memorize`,
        jitted). `teach_scale` overrides the checkpoint step's scheduled scale.
        Returns (fast state without the attention buffer, {level: updates})."""
        scale = None if teach_scale is None else jnp.asarray(teach_scale, jnp.float32)
        return online.memorize(self.fn, self.params, jnp.asarray(prompt_BxT1, jnp.int32),
                               steps=steps, fast=fast, reset=reset,
                               mask_BxT=jnp.asarray(mask_BxT, jnp.float32), teach_scale=scale,
                               one_pass=self._mem)


def from_loaded(loaded, chunk: int = 2048):
    """The scoring model of a restored checkpoint (eval.restore.Loaded). Plain variants run
    inputs longer than `chunk` tokens chunk by chunk (0 = always the full forward)."""
    variant = get_variant(loaded.cfg.model.variant)
    if variant.online:
        return OnlineLM(loaded.fn, loaded.params, step=loaded.step, name=variant.name)
    fn = loaded.fn
    return PlainLM(lambda p, toks: fn.bind(p)(toks), loaded.params, name=variant.name, fn=fn,
                   chunk=chunk, multiple=variant.read_block(loaded.cfg.model))
