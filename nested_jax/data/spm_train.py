"""Train a SentencePiece tokenizer from manifest sources and measure its coverage."""

import collections
import json
import os
import time
from pathlib import Path

import numpy as np
import sentencepiece as spm

from nested_jax.data import tokenizer as tokenizer_lib
from nested_jax.data.sources import Source, read_docs
from nested_jax.data.text import normalize

MAX_SENTENCE_BYTES = 16384


def collect_sentences(sources: list[Source], split: str | None, sample_limit: int, seed: int) -> tuple[list, dict]:
    """Non-empty normalised lines of each source's documents in `split`, at most `sample_limit` per source."""
    rng = np.random.default_rng(seed)
    sentences, per_source = [], {}
    for src in sources:
        lines = []
        for doc in read_docs(src):
            if split is None or doc.split == split:
                lines.extend(line for line in normalize(doc.text, src.whitespace).split("\n") if line.strip())
        n_all = len(lines)
        if sample_limit and n_all > sample_limit:
            keep = np.sort(rng.choice(n_all, size=sample_limit, replace=False))
            lines = [lines[i] for i in keep]
        per_source[f"{src.domain}:{src.path}"] = {"lines": n_all, "used": len(lines)}
        sentences.extend(lines)
    if not sentences:
        raise ValueError(
            f"No training text: the inputs have no non-empty lines in split {split!r}. "
            "Fix: check --input/--manifest and --split (use --split all to take every split)."
        )
    return sentences, per_source


def coverage_stats(tok: tokenizer_lib.Tokenizer, texts: list[str]) -> dict:
    """Tokens per word, single-token word share, chars per token, byte-fallback share, piece lengths."""
    sp = tok.sp
    words = collections.Counter(w for t in texts for w in t.split())
    uniq = list(words)
    lens = dict(zip(uniq, map(len, sp.encode(uniq, num_threads=os.cpu_count() or 1))))
    n_words = sum(words.values())
    ids = tok.encode_batch(texts)
    n_tokens = sum(map(len, ids))
    n_bytes = sum(sum(1 for i in seq if sp.is_byte(i)) for seq in ids)
    hist = collections.Counter()
    for i in range(sp.get_piece_size()):
        if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i)):
            n = len(sp.id_to_piece(i).replace("\u2581", "")) or 1
            hist[str(n) if n < 16 else "16+"] += 1
    return {
        "eval_lines": len(texts),
        "eval_words": n_words,
        "tokens_per_word": sum(lens[w] * c for w, c in words.items()) / max(n_words, 1),
        "single_token_word_share": sum(c for w, c in words.items() if lens[w] == 1) / max(n_words, 1),
        "at_most_2_token_word_share": sum(c for w, c in words.items() if lens[w] <= 2) / max(n_words, 1),
        "chars_per_token": sum(map(len, texts)) / max(n_tokens, 1),
        "byte_fallback_token_share": n_bytes / max(n_tokens, 1),
        "piece_length_histogram": dict(sorted(hist.items(), key=lambda kv: (kv[0] == "16+", len(kv[0]), kv[0]))),
    }


def _spm_train(sentences, out_prefix, vocab_size, model_type, character_coverage,
               input_sentence_size, num_threads) -> None:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_prefix=str(out_prefix), vocab_size=vocab_size,
        model_type=model_type, character_coverage=character_coverage, byte_fallback=True,
        pad_id=tokenizer_lib.PAD_ID, unk_id=tokenizer_lib.UNK_ID, bos_id=tokenizer_lib.BOS_ID,
        eos_id=tokenizer_lib.EOS_ID, normalization_rule_name="identity", remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, split_digits=True, input_sentence_size=input_sentence_size,
        shuffle_input_sentence=True, max_sentence_length=MAX_SENTENCE_BYTES, hard_vocab_limit=False,
        num_threads=num_threads or os.cpu_count() or 1, minloglevel=2)


def train_tokenizer(sources: list[Source], out_prefix: str | os.PathLike, *, vocab_size: int,
                    model_type: str = "unigram", character_coverage: float = 0.9995,
                    sample_limit: int = 0, input_sentence_size: int = 0, split: str | None = "train",
                    seed: int = 0, num_threads: int | None = None, eval_lines: int = 20000,
                    command: str = "") -> dict:
    """Train `{out_prefix}.model/.vocab`, write `{out_prefix}.json` (coverage stats + sha256), return it."""
    if model_type not in ("unigram", "bpe"):
        raise ValueError(f"Unknown model type {model_type!r}; use 'unigram' or 'bpe'.")
    if vocab_size < 300:
        raise ValueError(f"vocab_size {vocab_size} is too small: byte_fallback needs 256 byte pieces + 4 specials. Fix: --vocab-size 300 or more.")
    out_prefix = Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    sentences, per_source = collect_sentences(sources, split, sample_limit, seed)
    t_read = time.time() - t0
    too_long = sum(len(s.encode("utf-8")) > MAX_SENTENCE_BYTES for s in sentences)
    spm.set_random_generator_seed(seed)
    t1 = time.time()
    try:
        _spm_train(sentences, out_prefix, vocab_size, model_type, character_coverage,
                   input_sentence_size, num_threads)
    except RuntimeError as e:  # SentencePiece refuses the input (e.g. too little text)
        raise ValueError(f"SentencePiece cannot train on this input: {e}. Fix: give more text or "
                         "a smaller --vocab-size.") from None
    t_train = time.time() - t1
    tok = tokenizer_lib.SentencePieceTokenizer(f"{out_prefix}.model")
    # Coverage is measured on held-out text: the valid split when training on train, else the training lines.
    eval_split = "valid" if split == "train" else split
    try:
        held_out, _ = collect_sentences(sources, eval_split, eval_lines, seed + 1)
    except ValueError:
        held_out = sentences[:eval_lines]
    stats = {
        "model": f"{out_prefix.name}.model",
        "sha256": tok.sha256,
        "vocab_size": tok.vocab_size,
        "model_type": model_type,
        "special_ids": {"pad": tok.pad_id, "unk": tok.unk_id, "bos": tok.bos_id, "eos": tok.eos_id},
        "settings": {"character_coverage": character_coverage, "sample_limit": sample_limit,
                     "input_sentence_size": input_sentence_size, "split": split, "seed": seed,
                     "normalization": "identity", "byte_fallback": True, "split_digits": True,
                     "newlines": "split into lines, joined by <0x0A> (nested_jax.data.tokenizer)"},
        "inputs": per_source,
        "training_sentences": len(sentences),
        "sentences_over_max_length_skipped": too_long,
        "coverage": {"eval_split": eval_split, **coverage_stats(tok, held_out)},
        "seconds": {"read": round(t_read, 1), "train": round(t_train, 1)},
        "command": command,
    }
    Path(f"{out_prefix}.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats
