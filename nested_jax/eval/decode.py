"""Incremental decoding for every variant (the engine behind `python -m nested_jax.generate`).

Exact by construction. The carried state (attention key/value buffer, Titans and
self-modifying memories with their conv tails, CMS fast weights) is kept at the last
completed *read block* boundary b; a read block is the smallest unit the model's sequence
mixers compute in, so that running it alone gives what the training pass computes:

    transformer, hope_attention   1 token (attention with the key/value cache; CMS levels
                                  are per-token MLPs)
    titans                        titans.chunk_size (the memory reads chunk-start states),
                                  the MAC segment in mode "mac"
    hope_hybrid                   the Titans chunk inside a segment, min(chunk, segment)
    hope                          lcm of the self-modifying memories' chunks in a segment

To predict token n the block [b, b + block) is run from the state at b, positions ≥ n
padded, and the logits at n - 1 are read: every layer is causal (tested with gradients),
so the padding cannot change that position. When the block fills, its carry becomes the
new boundary state. Cost per token: one block forward (attention over the cache) and the
LM head on one row; O(1) carried state besides the key/value buffer. The whole loop
(sampling included) runs on the device in one `lax.while_loop`; known prompt tokens are
advanced in the same loop, up to `prefill` tokens per iteration.

Fast state of HOPE variants:
  frozen (default)  CMS levels keep their meta weights (`online_forward(update=False)`);
                    the Titans / self-modifying memories still run, as in every forward.
  memorize          CMS levels keep learning from the text read and written: each completed
                    segment of online.segment_len tokens (its next-token targets known) goes
                    through the online training scan (`online_forward(update=True)`) from the
                    fast state at the segment's start — the same teach signals, inner
                    optimizers and period cadence as training, so decoding equals
                    `online_forward(update=True)` over the whole text. Inside a segment the
                    CMS weights are fixed, and reads advance block by block as above.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nested_jax.data.tokenizer import EOS_ID
from nested_jax.model.online import init_fast, online_forward
from nested_jax.model.variants import get as get_variant


# A prompt's known tokens are advanced PREFILL_TOKENS per loop iteration, then
# MID_ADVANCE_UNITS read units, then one unit: three compiled advance sizes cover any prompt
# length with few iterations (a long prompt in 256-token steps, its tail in ≤ 16 + 15 steps).
PREFILL_TOKENS = 256
MID_ADVANCE_UNITS = 16

def block_len(model_cfg) -> int:
    """Tokens per read block (module docstring; the variant's `read_block`)."""
    return get_variant(model_cfg.variant).read_block(model_cfg)


def _recurrent(carry: dict) -> dict:
    """The per-block recurrent part of a carry (memories, conv tails): no kv, no CMS."""
    return {k: v for k, v in carry.items() if k not in ("kv", "cms")}


def sample_logits(logits_BxV, key, temperature, top_k, top_p):
    """One token per row from softmax(logits / temperature), restricted to the top_k
    tokens (0 = all) and then to the smallest set whose probability reaches top_p
    (nucleus; 1 = all). All three may be traced values."""
    x = logits_BxV.astype(jnp.float32) / jnp.maximum(temperature, 1e-6)
    v = x.shape[-1]
    srt = -jnp.sort(-x, axis=-1)  # descending
    k = jnp.where(top_k > 0, jnp.minimum(top_k, v), v)
    rank = jnp.arange(v)[None, :]
    srt = jnp.where(rank < k, srt, -jnp.inf)
    probs = jax.nn.softmax(srt, axis=-1)
    keep = (jnp.cumsum(probs, axis=-1) - probs) < top_p  # mass before it < p (first kept)
    keep = keep & (rank < k)
    threshold = jnp.min(jnp.where(keep, srt, jnp.inf), axis=-1, keepdims=True)
    x = jnp.where(x >= threshold, x, -jnp.inf)
    return jax.random.categorical(key, x, axis=-1).astype(jnp.int32)


@dataclasses.dataclass
class Generation:
    tokens: np.ndarray        # [B, n] generated ids (an EOS that stopped a row included)
    logprobs: np.ndarray      # [B, n] model log-prob (temperature 1) of each generated id
    n_new: np.ndarray         # [B] ids generated per row before it stopped
    stopped: list             # per row: "eos" or "max_new_tokens"
    prefill_s: float
    decode_s: float
    compile_s: float
    logits: np.ndarray | None = None  # [B, n, V] with want_logits (the tests' tie checks)
    state: dict | None = None         # final carried state (device arrays)

    @property
    def tokens_per_sec(self) -> float:
        return float(self.n_new.sum()) / max(self.decode_s, 1e-9)


class Cursor(NamedTuple):
    """The decode loop's state. Tokens tok_buf[:, :n] are known; the read carry is at block
    boundary b. Frozen: `state` is that carry (rc unused, seg = b). Memorize: `state` is the
    online fast state at the segment boundary seg ≤ b and `rc` the recurrent states at b;
    both share the key/value buffer in state["carry"]."""

    state: dict
    rc: dict
    tok_buf: jax.Array   # [B, buf_len] token ids
    n: jax.Array         # known tokens
    b: jax.Array         # read-block boundary of the carry
    seg: jax.Array       # segment boundary of the fast state (memorize)
    done: jax.Array      # [B] rows that stopped at EOS
    lp_buf: jax.Array    # [B, buf_len] log-probs of generated tokens
    lg_buf: jax.Array    # [B, buf_len or 0, V] logits (want_logits: the decode tests' checks)

    @classmethod
    def start(cls, state, rc, tok_buf, n: int, vocab: int = 0) -> "Cursor":
        """A cursor at position 0 with n known tokens; vocab > 0 keeps every logit row."""
        batch, m = tok_buf.shape
        zero = jnp.int32(0)
        return cls(state, rc, tok_buf, jnp.int32(n), zero, zero, jnp.zeros((batch,), bool),
                   jnp.zeros((batch, m), jnp.float32),
                   jnp.zeros((batch, m if vocab else 0, vocab), jnp.float32))


class Decoder:
    """Incremental decoder of one model. Buffers are sized for `max_len` tokens (prompt +
    generation), so every prompt and generation length up to it shares one compilation.

    `memorize`: CMS levels learn from the text as it is read and written (HOPE variants;
    see the module docstring). `step`: the checkpoint step (sets the scheduled teach scale
    of memorisation, as in training). `prefill`: most prompt tokens advanced per loop
    iteration (tests pass 1 for a smaller program)."""

    def __init__(self, fn, params, *, max_len: int, memorize: bool = False, step: int = 0,
                 prefill: int = PREFILL_TOKENS, eos_id: int = EOS_ID):
        cfg = fn.cfg
        self.online = get_variant(cfg.variant).online
        if memorize and not self.online:
            raise ValueError(f"variant {cfg.variant!r} has no CMS levels: nothing to memorise "
                             "into (HOPE variants only).")
        self.fn, self.params, self.cfg = fn, params, cfg
        self.memorize, self.step, self.eos_id = bool(memorize), int(step), int(eos_id)
        self.block = block_len(cfg)
        self.max_len = int(max_len)
        # Advance unit: the read block (frozen) or the segment (memorize: CMS updates).
        unit = int(cfg.online.segment_len) if self.memorize else self.block
        self.unit = unit
        # Advance sizes, largest first: known tokens are advanced `prefill` at a time, then
        # 16 units, then unit by unit. Frozen: the one-block advance is the read step itself.
        big = max(1, min(int(prefill), self.max_len - 1) // unit)
        sizes = sorted({unit * r for r in (big, MID_ADVANCE_UNITS, 1) if r <= big}, reverse=True)
        self.sizes = tuple(x for x in sizes if self.memorize or x > unit)
        self.buf_len = self.max_len + max(self.sizes + (unit,)) + 1  # slices never run off
        self.kv_len = self.max_len + self.block  # a block at b ≤ max_len - 2 fits
        self._compiled: dict = {}

    def _logit_width(self, want_logits: bool) -> int:
        return int(self.cfg.vocab_size) if want_logits else 0

    # ------------------------------------------------------------------ state advance
    def _advance_frozen(self, model, carry, tok_BxN, start):
        """Carry after the N tokens (a multiple of the block) at positions start..; no
        CMS writes."""
        b, n = tok_BxN.shape
        if not self.online:  # one forward (titans: chunks of C)
            _, carry, _ = model.run_blocks(model.embed(tok_BxN),
                                           start + jnp.arange(n, dtype=jnp.int32), carry)
            return carry
        r = self.block  # online variants: chunk sizes follow the call length, so per block
        blocks = tok_BxN.reshape(b, n // r, r).swapaxes(0, 1)

        def body(c, xs):
            tok, i = xs
            pos = start + i * r + jnp.arange(r, dtype=jnp.int32)
            return model.run_blocks(model.embed(tok), pos, c)[1], None

        carry, _ = jax.lax.scan(body, carry, (blocks, jnp.arange(n // r, dtype=jnp.int32)))
        return carry

    def _advance_online(self, params, state, toks_BxN1, start):
        """Fast state after the N tokens at `start` (N a multiple of the segment, targets =
        the tokens shifted by one): the online training scan with CMS updates."""
        _, aux = online_forward(self.fn, params, toks_BxN1, step=self.step, update=True,
                                fast=state, start=start, kv=state["carry"].get("kv"))
        return aux["fast"]

    def _init_state(self, model, batch):
        if self.memorize:
            state = init_fast(model, self.cfg, batch, self.kv_len)
            return state, _recurrent(state["carry"])
        return model.init_carry(batch, self.kv_len), {}

    # ---------------------------------------------------------------------- the loop
    def _loop(self, params, cur: "Cursor", n_end, key, temperature, top_k, top_p, *,
              greedy: bool, want_logits: bool, stop_at_eos: bool) -> "Cursor":
        """Advance the cursor (`Cursor`) until token n_end - 1 is known or every row stopped:
        known runs first (prefill), then one sampled token per read step."""
        model = self.fn.bind(params)
        blk, mem = self.block, self.memorize
        cur = cur._replace(done=jnp.zeros_like(cur.done), lp_buf=jnp.zeros_like(cur.lp_buf),
                           lg_buf=jnp.zeros_like(cur.lg_buf))  # per call: this call's tokens

        def read_carry(c):
            return {**c.state["carry"], **c.rc} if mem else c.state

        def with_kv(state, new_carry):
            if "kv" not in new_carry:
                return state
            if mem:
                return {**state, "carry": {**state["carry"], "kv": new_carry["kv"]}}
            return {**state, "kv": new_carry["kv"]}

        def adv(size):
            def go(c):
                if mem:
                    toks = jax.lax.dynamic_slice_in_dim(c.tok_buf, c.seg, size + 1, axis=1)
                    state = self._advance_online(params, c.state, toks, c.seg)
                    seg = c.seg + size
                    return c._replace(state=state, rc=_recurrent(state["carry"]), b=seg, seg=seg)
                toks = jax.lax.dynamic_slice_in_dim(c.tok_buf, c.b, size, axis=1)
                state = self._advance_frozen(model, c.state, toks, c.b)
                return c._replace(state=state, b=c.b + size, seg=c.b + size)
            return go

        def sample(c, lg):
            if greedy:
                tok = jnp.argmax(lg, axis=-1).astype(jnp.int32)
            else:
                tok = sample_logits(lg, jax.random.fold_in(key, c.n), temperature, top_k, top_p)
            lp = jnp.take_along_axis(jax.nn.log_softmax(lg, -1), tok[:, None], axis=-1)[:, 0]
            tok = jnp.where(c.done, self.eos_id, tok)
            lp = jnp.where(c.done, 0.0, lp)
            n = c.n
            put = lambda buf, x: jax.lax.dynamic_update_slice_in_dim(  # noqa: E731
                buf, x[:, None], n, axis=1)
            c = c._replace(tok_buf=put(c.tok_buf, tok), lp_buf=put(c.lp_buf, lp), n=c.n + 1)
            if want_logits:
                c = c._replace(lg_buf=put(c.lg_buf, lg))
            if stop_at_eos:
                c = c._replace(done=c.done | (tok == self.eos_id))
            return c

        def step(c):
            """Forward the block [b, b + blk) (positions ≥ n padded). If it is complete and
            known (prompt), it becomes the read state; otherwise token n is sampled from the
            logits at n - 1 and, when n - 1 was the block's last position, the block's carry
            becomes the read state too. The block's key/value slots are always kept: every
            later forward rewrites them before they are read."""
            n, b = c.n, c.b
            toks = jax.lax.dynamic_slice_in_dim(c.tok_buf, b, blk, axis=1)
            h, new_carry, _ = model.run_blocks(model.embed(toks),
                                               b + jnp.arange(blk, dtype=jnp.int32),
                                               read_carry(c))
            row = jnp.clip(n - 1 - b, 0, blk - 1)
            lg = model.logits(jax.lax.dynamic_slice_in_dim(h, row, 1, axis=1))[:, 0]
            lg = lg.astype(jnp.float32)
            c = c._replace(state=with_kv(c.state, new_carry))

            def commit(c):
                if mem:
                    c = c._replace(rc=_recurrent(new_carry))
                else:
                    c = c._replace(state={**new_carry})
                return c._replace(b=c.b + blk)

            def token(c):
                c = sample(c, lg)
                return jax.lax.cond((n - b) == blk, commit, lambda c: c, c)

            return jax.lax.cond(n > b + blk, commit, token, c)

        def body(c):
            base = c.seg if mem else c.b
            branch = len(self.sizes)  # `step`, unless a complete known run can be advanced
            for i in reversed(range(len(self.sizes))):
                branch = jnp.where(c.n > base + self.sizes[i], i, branch)
            return jax.lax.switch(branch, [adv(x) for x in self.sizes] + [step], c)

        def cond(c):
            pending = (c.n > c.seg + self.unit) if mem else (c.n > c.b + blk)  # known, unread
            return pending | ((c.n < n_end) & ~jnp.all(c.done))

        return jax.lax.while_loop(cond, body, cur._replace(seg=cur.seg if mem else cur.b))

    def _fn_for(self, batch, greedy, want_logits, stop_at_eos):
        key = (batch, greedy, want_logits, stop_at_eos)
        if key not in self._compiled:
            donate = () if jax.default_backend() == "cpu" else (1,)  # the cursor; CPU cannot donate
            loop = jax.jit(functools.partial(self._loop, greedy=greedy, want_logits=want_logits,
                                             stop_at_eos=stop_at_eos), donate_argnums=donate)
            init = jax.jit(lambda p: self._init_state(self.fn.bind(p), batch))
            t0 = time.perf_counter()
            state, rc = init(self.params)
            cur = Cursor.start(state, rc, jnp.zeros((batch, self.buf_len), jnp.int32), 1,
                               self._logit_width(want_logits))
            args = (self.params, cur, jnp.int32(1), jax.random.key(0), jnp.float32(1.0),
                    jnp.int32(0), jnp.float32(1.0))
            compiled = loop.lower(*args).compile()
            self._compiled[key] = (init, compiled, time.perf_counter() - t0)
        return self._compiled[key]

    # ------------------------------------------------------------------------ public
    def generate(self, prompts_BxP, max_new_tokens: int, *, temperature: float = 0.0,
                 top_k: int = 0, top_p: float = 1.0, seed: int = 0, stop_at_eos: bool = True,
                 want_logits: bool = False, keep_state: bool = False) -> Generation:
        """Continue every row of `prompts_BxP` (equal lengths P ≥ 1) by up to
        `max_new_tokens` ids. temperature 0 = greedy (deterministic); otherwise the sample
        of token n uses the key fold_in(PRNGKey(seed), n), so a seed reproduces it."""
        prompts = np.asarray(prompts_BxP, np.int32)
        if prompts.ndim != 2 or prompts.shape[1] < 1:
            raise ValueError("prompts must be a [batch, length ≥ 1] array of token ids.")
        batch, p = prompts.shape
        if p + max_new_tokens > self.max_len:
            raise ValueError(f"{p} prompt + {max_new_tokens} new tokens exceed the decoder's "
                             f"max_len {self.max_len}.")
        greedy = float(temperature) <= 0.0
        init, compiled, compile_s = self._fn_for(batch, greedy, want_logits, stop_at_eos)
        tok_buf = np.full((batch, self.buf_len), self.eos_id, np.int32)
        tok_buf[:, :p] = prompts
        samp = (jax.random.key(seed), jnp.float32(max(temperature, 0.0)), jnp.int32(top_k),
                jnp.float32(top_p))
        state, rc = init(self.params)
        jax.block_until_ready(state)
        t0 = time.perf_counter()
        # Prefill: advance every complete known block (n_end = p generates nothing).
        cur = compiled(self.params, Cursor.start(state, rc, jnp.asarray(tok_buf), p,
                                                 self._logit_width(want_logits)),
                       jnp.int32(p), *samp)
        jax.block_until_ready(cur.state)
        t1 = time.perf_counter()
        cur = compiled(self.params, cur, jnp.int32(p + max_new_tokens), *samp)
        tok_buf = np.asarray(cur.tok_buf)
        t2 = time.perf_counter()
        end = int(cur.n)
        state, lp_buf, lg_buf = cur.state, cur.lp_buf, cur.lg_buf
        toks = tok_buf[:, p:end]
        n_new, stopped = [], []
        for row in toks:
            hit = np.flatnonzero(row == self.eos_id) if stop_at_eos else np.array([], int)
            n_new.append(int(hit[0]) + 1 if hit.size else len(row))
            stopped.append("eos" if hit.size else "max_new_tokens")
        return Generation(
            tokens=toks, logprobs=np.asarray(lp_buf)[:, p:end], n_new=np.asarray(n_new),
            stopped=stopped, prefill_s=t1 - t0, decode_s=t2 - t1, compile_s=compile_s,
            logits=np.asarray(lg_buf)[:, p:end] if want_logits else None,
            state=state if keep_state else None)
