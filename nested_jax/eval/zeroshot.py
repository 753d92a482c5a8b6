"""Zero-shot multiple choice: acc (Σ log-prob of the continuation) and acc_norm (per byte)."""

from __future__ import annotations

import math

import numpy as np

from nested_jax.eval import tasks as tasks_lib
from nested_jax.eval.memo import Memorizer, MemoOptions
from nested_jax.eval.progress import bar
from nested_jax.eval.scoring import encode_pair, pick, score_requests


def _stderr(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else 0.0


def _accuracies(items, logprob: np.ndarray) -> dict:
    acc, acc_norm, gold_lp, k = [], [], [], 0
    for it in items:
        lp = logprob[k:k + it.n_choices]
        k += it.n_choices
        gold_lp.append(lp[it.gold])
        acc.append(pick(lp) == it.gold)
        acc_norm.append(pick(lp, it.norm_lengths()) == it.gold)
    n = len(items)
    a, an = float(np.mean(acc)), float(np.mean(acc_norm))
    return {"n": n, "acc": a, "acc_stderr": _stderr(a, n), "acc_norm": an,
            "acc_norm_stderr": _stderr(an, n), "gold_logprob": float(np.mean(gold_lp))}


def requests_for(tok, items) -> list[tuple[list[int], list[int]]]:
    return [encode_pair(tok, c, x) for it in items for c, x in zip(it.contexts, it.continuations)]


def evaluate_task(model, tok, items, *, max_len: int, batch_size: int, batch_tokens: int,
                  memo: MemoOptions | None = None, progress: bool = True, label: str = "",
                  fixed_len: int | None = None) -> dict:
    """Baseline (and memorised) accuracies of one task's items. `fixed_len`: pad every
    batch to this length (one compiled shape) instead of bucketing."""
    memo = memo or MemoOptions()
    prefix = [tok.eos_id]  # the training stream separates documents with EOS
    reqs = requests_for(tok, items)
    with bar(len(reqs), f"{label} baseline", progress) as pb:
        base = score_requests(model, reqs, max_len=max_len, batch_size=batch_size,
                              batch_tokens=batch_tokens, progress=pb, prefix=prefix,
                              fixed_len=fixed_len)
    out = _accuracies(items, base.logprob)
    out["truncated"] = base.truncated
    if not memo.enabled:
        return out
    mem = Memorizer(model, memo)
    if mem.active:
        logprob = np.zeros_like(base.logprob)
        k, rows = 0, max(it.n_choices for it in items)  # one item per batch, one shape
        with bar(len(items), f"{label} memorise", progress) as pb:
            for it in items:
                text = it.answer_text() if memo.use_correct_answer else it.memo
                fast = mem.memorize(prefix + tok.encode(text), pad_id=tok.eos_id)
                sl = slice(k, k + it.n_choices)
                got = score_requests(model, reqs[sl], max_len=max_len, batch_size=rows,
                                     batch_tokens=batch_tokens, fast=fast, prefix=prefix,
                                     fixed_len=fixed_len)
                logprob[sl] = got.logprob
                k += it.n_choices
                pb.update(1)
        memorized = _accuracies(items, logprob)
    else:
        memorized = {k: v for k, v in out.items() if k != "truncated"}
    out["memorized"] = memorized
    out["delta"] = {m: memorized[m] - out[m] for m in ("acc", "acc_norm")}
    out["memorize"] = mem.report()
    return out


def run(model, tok, *, task_names, limit: int, max_len: int, batch_size: int,
        batch_tokens: int, memo: MemoOptions, progress: bool = True,
        fixed_len: int | None = None) -> dict:
    """{task: metrics} plus the unweighted mean over tasks."""
    results = {}
    for name in task_names:
        items = tasks_lib.load_items(name, limit)
        results[name] = evaluate_task(model, tok, items, max_len=max_len, batch_size=batch_size,
                                      batch_tokens=batch_tokens, memo=memo, progress=progress,
                                      label=name, fixed_len=fixed_len)
    mean = {m: float(np.mean([r[m] for r in results.values()])) for m in ("acc", "acc_norm")}
    if memo.enabled:
        mean["memorized_acc"] = float(np.mean([r["memorized"]["acc"] for r in results.values()]))
        mean["memorized_acc_norm"] = float(np.mean([r["memorized"]["acc_norm"]
                                                    for r in results.values()]))
    return {"tasks": results, "mean": mean}
