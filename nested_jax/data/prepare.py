"""The `prepare` pipeline: read -> normalise -> filter -> exact dedup -> tokenise (+EOS) -> pack -> shards."""

import json
import multiprocessing
import os
import shutil
import time
import uuid
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nested_jax.data import packing
from nested_jax.data.sources import SPLITS, Manifest, Source, read_docs
from nested_jax.data.text import content_hash, is_english, normalize
from nested_jax.data.tokenizer import Tokenizer, load_tokenizer

_CHARS_PER_CHUNK = 8_000_000  # texts handed to the tokeniser at once
_READ_CHARS = 64_000_000      # raw text read and cleaned at once (a source is read in such batches)


def clean(args: tuple) -> tuple[str, str, str]:
    """(text, hash, verdict) for one document; verdict is 'kept', 'too_short', 'too_long' or 'not_english'."""
    text, whitespace, min_chars, max_chars, english = args
    text = normalize(text, whitespace)
    if len(text) < max(min_chars, 1):
        return "", "", "too_short"
    if max_chars and len(text) > max_chars:
        return "", "", "too_long"
    if english and not is_english(text):
        return "", "", "not_english"
    return text, content_hash(text), "kept"


def _clean_all(src: Source, docs: list, pool) -> list:
    jobs = [(d.text, src.whitespace, src.min_chars, src.max_chars, src.english) for d in docs]
    if pool is None or len(jobs) < 64:
        return [clean(j) for j in jobs]
    return list(pool.imap(clean, jobs, chunksize=max(1, len(jobs) // 64)))


def _batches(docs, max_chars: int = _READ_CHARS):
    """Consecutive lists of documents of about max_chars characters (a source is not held whole)."""
    batch, size = [], 0
    for d in docs:
        batch.append(d)
        size += len(d.text)
        if size >= max_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _tokenize(tok: Tokenizer, texts: list[str], threads: int, bar) -> list[np.ndarray]:
    """Encode texts (EOS appended) in chunks of about _CHARS_PER_CHUNK characters; one int32
    array per text (a tenth of the memory of Python lists of ints)."""
    out, chunk, size = [], [], 0
    for t in texts + [None]:
        if t is not None:
            chunk.append(t)
            size += len(t)
        if chunk and (t is None or size >= _CHARS_PER_CHUNK):
            out.extend(np.asarray(ids, dtype=np.int32)
                       for ids in tok.encode_batch(chunk, add_eos=True, num_threads=threads))
            bar.update(size)
            chunk, size = [], 0
    return out


def prepare(manifest: Manifest, out_dir: str | os.PathLike, *, tokenizer: str | Tokenizer = "novels_2k",
            row_len: int = 0, shard_rows: int = 0, workers: int = 1, threads: int = 0,
            progress: bool = True) -> dict:
    """Build `out_dir/{domain}/{split}/shard_*.npy` and `out_dir/stats.json`; return the stats.

    workers: processes for cleaning (1 = in this process; >1 spawns, so the caller's main
    module needs an `if __name__ == "__main__":` guard). threads: tokeniser threads (0 = all cores).
    Deterministic: the same manifest, inputs and tokenizer give byte-identical shards.
    The directory is written under a temporary name and renamed at the end.
    """
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else load_tokenizer(tokenizer)
    row_len = row_len or manifest.row_len
    shard_rows = shard_rows or manifest.shard_rows
    threads = threads or os.cpu_count() or 1
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{uuid.uuid4().hex[:12]}")
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.time()

    # 1) Read, clean, filter and deduplicate (first occurrence wins, in manifest order).
    for src in manifest.sources:
        src.check_readers()  # a missing optional reader (pyarrow, zstandard) fails before any work
    seen: set[str] = set()
    groups: dict[tuple[str, str], list[str]] = {}
    filtering = []
    ctx = multiprocessing.get_context("spawn")
    pool = ctx.Pool(workers) if workers > 1 else None
    try:
        for src in tqdm(manifest.sources, desc="read+clean", unit="source", disable=not progress):
            counts = {"read": 0, "too_short": 0, "too_long": 0, "not_english": 0, "duplicate": 0, "kept": 0}
            for docs in _batches(read_docs(src)):
                counts["read"] += len(docs)
                for doc, (text, h, verdict) in zip(docs, _clean_all(src, docs, pool)):
                    if verdict == "kept" and h in seen:
                        verdict = "duplicate"
                    counts[verdict] += 1
                    if verdict == "kept":
                        seen.add(h)
                        groups.setdefault((src.domain, doc.split), []).append(text)
            filtering.append({"domain": src.domain, "path": src.path, **counts})
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    if not groups:
        raise ValueError(
            f"Manifest {manifest.name!r} produced no documents (all inputs empty or filtered out: {filtering}). "
            "Fix: check the paths and relax min_chars/max_chars/english."
        )
    t_clean = time.time() - t0

    # 2) Tokenise each domain/split, pack into rows, write shards.
    domains: dict[str, dict] = {}
    total_chars = sum(len(t) for texts in groups.values() for t in texts)
    with tqdm(total=total_chars, desc="tokenise+pack", unit="char", unit_scale=True, disable=not progress) as bar:
        for (domain, split) in sorted(groups, key=lambda k: (k[0], SPLITS.index(k[1]))):
            texts = groups[(domain, split)]
            docs = _tokenize(tok, texts, threads, bar)
            rows, dropped = packing.pack(docs, row_len)
            names = packing.write_shards(rows, tmp / domain / split, shard_rows)
            domains.setdefault(domain, {})[split] = {
                "documents": len(texts), "chars": sum(map(len, texts)), "tokens": sum(map(len, docs)),
                "rows": len(rows), "tokens_packed": int(rows.size), "tokens_dropped": dropped,
                "shards": names,
            }
    t_tok = time.time() - t0 - t_clean

    stats = {
        "format": packing.FORMAT,
        "name": manifest.name,
        "tokenizer": {"name": tok.name, "sha256": tok.sha256, "vocab_size": tok.vocab_size, "eos_id": tok.eos_id},
        "row_len": row_len,
        "shard_rows": shard_rows,
        "dtype": "int32",
        "weights": {d: w for d, w in manifest.weights().items() if d in domains},
        "corpus_sha256": manifest.corpus_sha256(),
        "domains": domains,
        "filtering": filtering,
        "manifest": manifest.to_dict(),
        "seconds": {"read_clean_dedup": round(t_clean, 1), "tokenise_pack_write": round(t_tok, 1)},
    }
    (tmp / packing.STATS_FILE).write_text(json.dumps(stats, indent=2) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, out_dir)
    except OSError:  # another process wrote out_dir meanwhile: keep theirs (same inputs, same bytes)
        if not (out_dir / packing.STATS_FILE).is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return stats
