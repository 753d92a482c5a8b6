"""Token windows of the four continual-learning domains, built from the vendored text.

Domains and splits are those of the data package's presets (so eval windows are text
the `sample`/`full` training mixtures hold out): novels (valid = 5 novels), wikipedia
(WikiText-2 valid, 20 % of articles by title hash), math (GSM8K train / test), code (the
running Python's standard library, 5 % of files by path hash). Documents are whitespace-
normalised, end with EOS and are cut into windows of T + 1 tokens with stride T.
"""

from __future__ import annotations

import functools

import numpy as np

from nested_jax.data import presets, sources
from nested_jax.data.text import normalize
from nested_jax.eval.errors import EvalError

DOMAINS = ("novels", "wikipedia", "math", "code")
_SOURCES = {
    "novels": [presets.NOVELS],
    "wikipedia": [presets.WIKIPEDIA],
    "math": [presets.MATH_TRAIN, presets.MATH_VALID],
    "code": [presets.CODE],
}


def parse_domains(spec: str) -> list[str]:
    names = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [n for n in names if n not in DOMAINS]
    if bad or not names:
        raise EvalError(f"unknown domain(s) {bad or [spec]}. Valid domains: {', '.join(DOMAINS)}. "
                        "Fix: e.g. --domains novels,wikipedia,math,code.")
    return names


@functools.lru_cache(maxsize=len(DOMAINS))
def _raw(domain: str) -> tuple:
    """(split, text, source) of every document of a domain (read once per process)."""
    out = []
    for d in _SOURCES[domain]:
        src = sources.Source.from_dict({k: v for k, v in d.items() if k not in ("weight", "limit")})
        out.extend((doc.split, doc.text, src) for doc in sources.read_docs(src))
    return tuple(out)


@functools.lru_cache(maxsize=2 * len(DOMAINS))
def documents(domain: str, split: str) -> tuple:
    """Texts of one domain and split ('train' / 'valid'), normalised and length-filtered as
    `prepare` does, in a deterministic order."""
    out = []
    for sp, raw, src in _raw(domain):
        if sp != split:
            continue
        text = normalize(raw, src.whitespace)
        if len(text) >= src.min_chars and not (src.max_chars and len(text) > src.max_chars):
            out.append(text)
    return tuple(out)


def _windows(tok, docs, seq_len: int, n: int) -> np.ndarray:
    stream: list[int] = []
    need = n * seq_len + 1
    for text in docs:
        stream.extend(tok.encode(text, add_eos=True))
        if len(stream) >= need:
            break
    have = (len(stream) - 1) // seq_len
    if have < n:
        raise EvalError(f"only {have} windows of {seq_len + 1} tokens available, {n} asked. "
                        "Fix: lower --windows (or --seq-len).")
    arr = np.asarray(stream[:need], np.int32)
    return np.stack([arr[i * seq_len:i * seq_len + seq_len + 1] for i in range(n)])


def eval_windows(tok, domain: str, seq_len: int, n: int) -> np.ndarray:
    """The first n windows [n, seq_len + 1] of the domain's held-out split."""
    return _windows(tok, documents(domain, "valid"), seq_len, n)


def train_windows(tok, domain: str, seq_len: int, n: int, seed: int) -> np.ndarray:
    """n windows of the domain's train split: documents in a seeded order, windows shuffled."""
    docs = documents(domain, "train")
    order = np.random.default_rng([seed, DOMAINS.index(domain)]).permutation(len(docs))
    wins = _windows(tok, [docs[i] for i in order], seq_len, n)
    return wins[np.random.default_rng(seed).permutation(n)]
