"""Log-likelihood of continuations given contexts, batched and length-bucketed.

A request is (context ids, continuation ids). Its score is Σ log p(continuation token |
everything before it): the quantity lm-evaluation-harness calls the loglikelihood, plus
`is_greedy` (every continuation token is the argmax). Sequences are right-padded to a
bucket length (a multiple of the model's segment length for online variants) and the
padded positions are masked; right padding never changes a causal model's scores.
"""

from __future__ import annotations

import dataclasses

import numpy as np

PAD_ID = 0
_LADDER = (16, 24, 32, 48)  # × powers of two: 16, 24, 32, 48, 64, 96, 128, 192, ...


def pad_len(n: int, model=None) -> int:
    """Bucketed length ≥ n: the next value of 16·{1, 1.5, 2, 3}·4^k, then what the model
    needs (`model.fit`: a multiple of the segment length of online variants)."""
    n = max(int(n), 1)
    scale = 1
    while True:
        for v in _LADDER:
            if v * scale >= n:
                b = v * scale
                return b if model is None else model.fit(b)
        scale *= 4


@dataclasses.dataclass
class Scored:
    """Per-request results, in request order."""

    logprob: np.ndarray   # [N] Σ log p over the continuation tokens
    greedy: np.ndarray    # [N] bool: every continuation token is the argmax
    n_tokens: np.ndarray  # [N] continuation tokens scored
    truncated: int        # requests whose context was cut on the left to fit max_len


def encode_pair(tok, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-evaluation-harness tokenisation: trailing spaces of the context move to the
    continuation; the continuation's ids are enc(context + continuation) after enc(context)."""
    n_spaces = len(context) - len(context.rstrip(" "))
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    ctx = tok.encode(context)
    whole = tok.encode(context + continuation)
    cont = whole[len(ctx):]
    if whole[:len(ctx)] != ctx or not cont:  # merge across the boundary: encode apart
        cont = tok.encode(continuation)
    return ctx, cont


def _batches(order, lengths, model, max_rows: int, batch_tokens: int, fixed_len=None):
    """Consecutive groups of `order` (sorted longest first) sharing one bucket length."""
    i = 0
    while i < len(order):
        t = fixed_len or pad_len(lengths[order[i]] - 1, model)
        rows = max(1, min(max_rows, batch_tokens // t))
        j = i + 1
        while j < len(order) and j - i < rows:
            j += 1
        yield order[i:j], t, rows
        i = j


def score_requests(model, requests, *, max_len: int, batch_size: int = 16,
                   batch_tokens: int = 32768, fast=None, progress=None,
                   prefix: list[int] | None = None, fixed_len: int | None = None) -> Scored:
    """Score (context ids, continuation ids) pairs with `model` (eval.models).

    Each sequence is prefix + context + continuation, cut on the left to max_len + 1 tokens
    (the continuation is kept whole unless it alone exceeds max_len: then its first max_len
    tokens are scored); `prefix` defaults to none. `fast`: read with this fast
    state (memorised scoring). `progress`: a tqdm bar advanced per request.
    `fixed_len`: pad every batch to this many input tokens (one compiled shape) instead of
    bucketing; ≥ max_len and a length the model accepts (model.fit(fixed_len) == fixed_len).
    """
    if fixed_len is not None and (model.fit(fixed_len) != fixed_len or fixed_len < max_len):
        raise ValueError(f"fixed_len {fixed_len} must be ≥ max_len {max_len} and equal "
                         f"model.fit(fixed_len) = {model.fit(fixed_len)}.")
    prefix = list(prefix or [])
    seqs, starts, truncated = [], [], 0
    for ctx, cont in requests:
        if not cont:
            raise ValueError("empty continuation: nothing to score.")
        cont = list(cont)
        full = prefix + list(ctx) + cont
        if len(full) > max_len + 1:
            if len(cont) > max_len:  # keep ≥ 1 token of context: score what fits
                cont = cont[:max_len]
                full = (prefix + list(ctx))[-1:] + cont
            else:
                full = full[len(full) - (max_len + 1):]
            truncated += 1
        seqs.append(full)
        starts.append(len(full) - len(cont))
    n = len(seqs)
    lengths = [len(s) for s in seqs]
    order = sorted(range(n), key=lambda k: -lengths[k])
    logprob = np.zeros(n, np.float64)
    greedy = np.zeros(n, bool)
    for idx, t, rows in _batches(order, lengths, model, batch_size, batch_tokens, fixed_len):
        tokens = np.full((rows, t + 1), PAD_ID, np.int32)
        mask = np.zeros((rows, t), np.float32)
        for r, k in enumerate(idx):
            tokens[r, :lengths[k]] = seqs[k]
            mask[r, :lengths[k] - 1] = 1.0
        logp, am = model.run(tokens, mask, fast=fast, want_argmax=True)
        for r, k in enumerate(idx):
            lo, hi = starts[k] - 1, lengths[k] - 1  # targets lo..hi-1 are the continuation
            logprob[k] = float(np.sum(logp[r, lo:hi], dtype=np.float64))
            greedy[k] = bool(np.all(am[r, lo:hi] == np.asarray(seqs[k][lo + 1:hi + 1])))
        if progress is not None:
            progress.update(len(idx))
    n_tokens = np.array([lengths[k] - starts[k] for k in range(n)], np.int32)
    return Scored(logprob=logprob, greedy=greedy, n_tokens=n_tokens, truncated=truncated)


def pick(logprob: np.ndarray, norm: np.ndarray | None = None) -> int:
    """argmax of logprob (or logprob / norm); ties go to the first choice, as np.argmax."""
    x = logprob if norm is None else logprob / np.asarray(norm, np.float64)
    return int(np.argmax(x))


def greedy_decode(model, prompts: list[list[int]], n_new: int, *, fast=None,
                  batch_size: int = 8, fixed_len: int | None = None) -> list[list[int]]:
    """Greedy generation by re-running the forward: n_new tokens after each prompt. Every
    step uses one padded length (fixed_len, or the bucket of the longest prompt + n_new)."""
    t = fixed_len or pad_len(max(len(p) for p in prompts) + n_new, model)
    rows = min(batch_size, len(prompts))  # every call has this many rows (one shape)
    out = []
    for i in range(0, len(prompts), rows):
        group = [list(p) for p in prompts[i:i + rows]]
        gen = [[] for _ in group]
        for _ in range(n_new):
            cur = [p + g for p, g in zip(group, gen)]
            tokens = np.full((rows, t + 1), PAD_ID, np.int32)
            mask = np.zeros((rows, t), np.float32)
            for r, c in enumerate(cur):
                tokens[r, :len(c)] = c
                mask[r, :len(c) - 1] = 1.0  # real targets feed the teach signal
            _, am = model.run(tokens, mask, fast=fast, want_argmax=True)
            for r, c in enumerate(cur):
                gen[r].append(int(am[r, len(c) - 1]))
        out.extend(gen)
    return out
