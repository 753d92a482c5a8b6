"""Needle in a haystack and passkey retrieval at true token lengths, from real novel text.

A prompt is built in MODEL tokens, exactly `length` long:

    [EOS] intro? haystack[:i] needle haystack[i:] \\n question        then the answer " KEY"

The haystack is a run of sentences of the valid-split novels, starting at a seeded
random paragraph; the needle goes in at the sentence boundary nearest to depth·H
(H = haystack tokens). Scored two ways: greedy generation of the key (exact match of
the first run of digits; decoding re-runs the forward) and ranking the true key against
`distractors` random keys of the same length by Σ log-prob (correct iff strictly best).
"""

from __future__ import annotations

import dataclasses
import functools
import re

import numpy as np

from nested_jax.eval.domains import documents
from nested_jax.eval.errors import EvalError
from nested_jax.eval.memo import Memorizer, MemoOptions
from nested_jax.eval.progress import bar
from nested_jax.eval.scoring import encode_pair, greedy_decode, score_requests

DEFAULT_LENGTHS = (2048, 4096, 8192, 16384, 32768, 65536)
DEFAULT_DEPTHS = (0, 25, 50, 75, 100)


@dataclasses.dataclass(frozen=True)
class Template:
    name: str
    intro: str
    needle: str      # with {key}
    question: str    # the answer " {key}" follows it
    digits: int


TEMPLATES = {
    "niah": Template(
        "niah", "",
        "The special magic number is {key}.",
        "What is the special magic number mentioned in the text above? "
        "The special magic number is", 7),
    "passkey": Template(
        "passkey",
        "There is an important info hidden inside a lot of irrelevant text. Find it and "
        "memorize it. I will quiz you about the important information there.",
        "The pass key is {key}. Remember it. {key} is the pass key.",
        "What is the pass key? The pass key is", 5),
}


@dataclasses.dataclass
class Sample:
    prompt: list          # token ids, len == length
    answer: list          # ids of " KEY" after the prompt
    distractors: list     # ids of " OTHER" for each distractor key
    key: str
    length: int
    depth: float          # requested, in [0, 1]
    depth_actual: float   # needle start / haystack tokens
    needle_index: int     # index of the needle's first token in the prompt
    needle: list          # needle ids


_SENT = re.compile(r"(?<=[.!?])\s+(?=[\"'“‘(A-Z])")


@functools.lru_cache(maxsize=1)
def _paragraphs() -> tuple:
    """Paragraphs (blank-line separated; hard line wraps kept) of the valid novels,
    whitespace-normalised as `prepare` does."""
    out = []
    for text in documents("novels", "valid"):
        out.extend(p.strip() for p in re.split(r"\n\s*\n", text) if p.strip())
    return tuple(out)


def _haystack(tok, n_tokens: int, rng) -> tuple[list[int], list[int]]:
    """(ids, sentence-boundary offsets) of ≥ n_tokens of consecutive novel text."""
    paras = _paragraphs()
    i = int(rng.integers(len(paras)))
    ids, bounds = [], [0]
    nl = [tok.newline_id, tok.newline_id]  # paragraphs are separated by a blank line
    while len(ids) < n_tokens:
        if ids:
            ids.extend(nl)
            bounds.append(len(ids))
        for s in _SENT.split(paras[i % len(paras)]):
            ids.extend(tok.encode(s))
            bounds.append(len(ids))
            if len(ids) >= n_tokens:
                break
        i += 1
    ids = ids[:n_tokens]
    bounds = sorted({b for b in bounds if b <= n_tokens} | {n_tokens})
    return ids, bounds


def _key(rng, digits: int) -> str:
    return str(int(rng.integers(10 ** (digits - 1), 10 ** digits)))


def make_sample(tok, template: Template, length: int, depth: float, rng,
                distractors: int = 4) -> Sample:
    """One prompt of exactly `length` tokens with the needle at `depth` (0..1)."""
    key = _key(rng, template.digits)
    others: list[str] = []
    while len(others) < distractors:
        k = _key(rng, template.digits)
        if k != key and k not in others:
            others.append(k)
    needle = tok.encode(template.needle.format(key=key))
    intro = tok.encode(template.intro) + [tok.newline_id] if template.intro else []
    q_ids, answer = encode_pair(tok, template.question, " " + key)
    dis = [encode_pair(tok, template.question, " " + k)[1] for k in others]
    head = [tok.eos_id] + intro
    tail = [tok.newline_id] + q_ids
    h = length - len(head) - len(needle) - len(tail)
    if h < 1:
        raise EvalError(f"length {length} is too short for the {template.name} template "
                        f"({length - h + 1} tokens without haystack). Fix: pass --lengths of at "
                        f"least {length - h + 1} tokens.")
    hay, bounds = _haystack(tok, h, rng)
    cut = min(bounds, key=lambda b: (abs(b - depth * h), b))
    prompt = head + hay[:cut] + needle + hay[cut:] + tail
    assert len(prompt) == length, (len(prompt), length)
    return Sample(prompt, answer, dis, key, length, float(depth), cut / h, len(head) + cut, needle)


def first_digits(text: str) -> str:
    m = re.search(r"\d+", text)
    return m.group(0) if m else ""


def _score_cell(model, tok, samples, *, fast=None, batch_size: int, batch_tokens: int) -> dict:
    """Greedy exact match and distractor ranking for a list of samples (one padded length
    for every forward: prompt + answer tokens, rounded as the model needs)."""
    n_new = max(len(s.answer) for s in samples) + 1
    fixed = model.fit(max(len(s.prompt) for s in samples) + n_new)
    reqs, spans = [], []
    for s in samples:
        spans.append((len(reqs), 1 + len(s.distractors)))
        reqs.extend((s.prompt, c) for c in [s.answer] + s.distractors)
    got = score_requests(model, reqs, max_len=fixed, batch_size=batch_size,
                         batch_tokens=batch_tokens, fast=fast, fixed_len=fixed)
    gen = greedy_decode(model, [s.prompt for s in samples], n_new, fast=fast,
                        batch_size=max(1, min(batch_size, batch_tokens // fixed)), fixed_len=fixed)
    rows = []
    for s, (k, m), g in zip(samples, spans, gen):
        lp = got.logprob[k:k + m]
        text = tok.decode(g)
        rows.append({"key": s.key, "generated": text, "greedy": first_digits(text) == s.key,
                     "rank": bool(m == 1 or lp[0] > lp[1:].max()),
                     "margin": float(lp[0] - (lp[1:].max() if m > 1 else 0.0)),
                     "logprob": float(lp[0]), "depth_actual": round(s.depth_actual, 4)})
    return {"n": len(rows), "greedy_acc": float(np.mean([r["greedy"] for r in rows])),
            "rank_acc": float(np.mean([r["rank"] for r in rows])),
            "mean_margin": float(np.mean([r["margin"] for r in rows])), "samples": rows}


def build_samples(tok, template: Template, lengths, depths, n: int, seed: int,
                  distractors: int) -> dict:
    """{(length, depth): [Sample]}, seeded per cell so a cell does not depend on the others."""
    out = {}
    for length in lengths:
        for depth in depths:
            rng = np.random.default_rng([seed, length, round(depth * 100)])
            out[(length, depth)] = [make_sample(tok, template, length, depth / 100.0, rng,
                                                distractors) for _ in range(n)]
    return out


def run(model, tok, *, task: str, lengths, depths, samples: int, seed: int, distractors: int,
        batch_size: int, batch_tokens: int, memo: MemoOptions, progress: bool = True) -> dict:
    """Metrics per (length, depth) cell, per length, and overall."""
    template = TEMPLATES[task]
    cells_in = build_samples(tok, template, lengths, depths, samples, seed, distractors)
    mem = Memorizer(model, memo)
    cells = []
    with bar(len(cells_in), f"{task}", progress) as pb:
        for (length, depth), ss in cells_in.items():
            cell = {"length": length, "depth": depth,
                    **_score_cell(model, tok, ss, batch_size=batch_size,
                                  batch_tokens=batch_tokens)}
            if mem.active:
                per = []
                for s in ss:
                    ids = s.prompt + s.answer if memo.use_correct_answer else s.prompt
                    fast = mem.memorize(ids, pad_id=tok.eos_id)
                    per.append(_score_cell(model, tok, [s], fast=fast,
                                           batch_size=min(batch_size, 1 + distractors),
                                           batch_tokens=batch_tokens))
                rows = [r for p in per for r in p["samples"]]
                cell["memorized"] = {
                    "n": len(rows), "greedy_acc": float(np.mean([r["greedy"] for r in rows])),
                    "rank_acc": float(np.mean([r["rank"] for r in rows])),
                    "mean_margin": float(np.mean([r["margin"] for r in rows])), "samples": rows}
            elif memo.enabled:
                cell["memorized"] = {k: v for k, v in cell.items() if k not in ("length", "depth")}
            cells.append(cell)
            pb.update(1)
    out = {"template": dataclasses.asdict(template), "lengths": list(lengths),
           "depths": list(depths), "samples_per_cell": samples, "distractors": distractors,
           "cells": cells}
    for key in ("greedy_acc", "rank_acc"):
        out[f"overall_{key}"] = float(np.mean([c[key] for c in cells]))
        if memo.enabled:
            out[f"overall_memorized_{key}"] = float(np.mean([c["memorized"][key] for c in cells]))
    out["by_length"] = {str(L): {k: float(np.mean([c[k] for c in cells if c["length"] == L]))
                                 for k in ("greedy_acc", "rank_acc")} for L in lengths}
    if memo.enabled:
        out["memorize"] = mem.report()
    return out


def plot_heatmap(result: dict, path: str, title: str) -> None:
    """Depth × length heatmaps (greedy exact match, distractor ranking; memorised too)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths, depths = result["lengths"], result["depths"]
    panels = [("greedy_acc", "greedy exact match"), ("rank_acc", "key ranked first")]
    memorized = "memorized" in result["cells"][0]
    if memorized:
        panels += [("m:greedy_acc", "memorised: greedy"), ("m:rank_acc", "memorised: ranked")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (key, name) in zip(axes[0], panels):
        grid = np.zeros((len(depths), len(lengths)))
        for c in result["cells"]:
            v = c["memorized"][key[2:]] if key.startswith("m:") else c[key]
            grid[depths.index(c["depth"]), lengths.index(c["length"])] = v
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto", origin="upper")
        ax.set_xticks(range(len(lengths)), [f"{L // 1024}k" if L >= 1024 else str(L)
                                            for L in lengths])
        ax.set_yticks(range(len(depths)), [f"{d}%" for d in depths])
        ax.set_xlabel("context length (tokens)")
        if ax is axes[0][0]:
            ax.set_ylabel("needle depth")
        ax.set_title(name, fontsize=10)
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
