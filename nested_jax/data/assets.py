"""Paths to the data and tokenizers vendored in `nested_jax/assets`, and readers for them."""

import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
from collections.abc import Iterator
from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
DATA_DIR = ASSETS_DIR / "data"
TOKENIZERS_DIR = ASSETS_DIR / "tokenizers"

# Logical name -> path under DATA_DIR (compressed exactly as in the shared data folder).
FILES = {
    "novels": "novels100/novels.jsonl.xz",
    "wikitext2_valid": "wikitext2/valid.txt.xz",
    "gsm8k_train": "gsm8k/train.jsonl.xz",
    "gsm8k_test": "gsm8k/test.jsonl.xz",
    "piqa_valid": "piqa/valid.jsonl.xz",
    "piqa_valid_labels": "piqa/valid-labels.lst.xz",
    "hellaswag_val": "hellaswag/hellaswag_val_full.txt.bz2",
    "winogrande_dev": "winogrande/dev.jsonl.xz",
    "arc_easy_test": "arc/ARC-Easy-Test.jsonl.xz",
    "arc_easy_dev": "arc/ARC-Easy-Dev.jsonl.xz",
    "arc_challenge_test": "arc/ARC-Challenge-Test.jsonl.xz",
    "arc_challenge_dev": "arc/ARC-Challenge-Dev.jsonl.xz",
    "boolq_val": "boolq/val.jsonl.xz",
    "siqa_dev": "siqa/dev.jsonl.xz",
    "siqa_dev_labels": "siqa/dev-labels.lst.xz",
    "commonsenseqa_dev": "commonsenseqa/dev_rand_split.jsonl.xz",
    "openbookqa_test": "openbookqa/test.jsonl.xz",
    "openbookqa_dev": "openbookqa/dev.tsv.xz",
}
NOVEL_SPLITS = ("train", "valid")
_FIX = (
    "Fix: restore it with `git checkout -- nested_jax/assets` (the files are tracked in git; "
    "see nested_jax/assets/MANIFEST.md for sources and sha256), or reinstall the package."
)


def file_sha256(path: str | os.PathLike, bufsize: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes: the one hash of tokenizers, checkpoints and releases."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(bufsize):
            h.update(block)
    return h.hexdigest()


def data_path(name_or_relpath: str) -> Path:
    """Path of a vendored data file, by logical name (see FILES) or path under assets/data."""
    rel = FILES.get(name_or_relpath, name_or_relpath)
    path = DATA_DIR / rel
    if not path.is_file():
        known = ", ".join(sorted(FILES))
        hint = "" if name_or_relpath in FILES or "/" in name_or_relpath else f" Known names: {known}."
        raise FileNotFoundError(f"Vendored data file missing: {path}.{hint} {_FIX}")
    return path


def resolve(path: str | os.PathLike) -> Path:
    """Resolve 'assets:<relpath>' to the vendored file; other paths are returned as is."""
    s = str(path)
    if s.startswith("assets:"):
        return data_path(s[len("assets:"):])
    return Path(s).expanduser()


def open_text(path: str | os.PathLike) -> io.TextIOBase:
    """Open a (possibly .xz/.bz2/.gz compressed) UTF-8 text file for reading."""
    p = resolve(path)
    if not p.is_file():
        raise FileNotFoundError(f"Input file not found: {p}. Fix: check the path (or use 'assets:<relpath>').")
    opener = {".xz": lzma.open, ".bz2": bz2.open, ".gz": gzip.open}.get(p.suffix)
    if opener is None:
        return open(p, "rt", encoding="utf-8", newline="")
    return opener(p, "rt", encoding="utf-8", newline="")


def read_jsonl(path: str | os.PathLike, opener=None) -> Iterator[dict]:
    """Yield one dict per non-empty line of a (compressed) JSON-lines file, streamed line by
    line; `opener` (default `open_text`) opens it as text."""
    with (opener or open_text)(path) as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{lineno}: not valid JSON ({e}).") from None


def novels(split: str | None = None) -> Iterator[dict]:
    """Yield the novel records (`id`, `author`, `split`, `text`, ...) of one split (or all if None)."""
    if split is not None and split not in NOVEL_SPLITS:
        raise ValueError(f"Unknown novels split {split!r}; the corpus has {NOVEL_SPLITS} (or None for all).")
    for rec in read_jsonl(data_path("novels")):
        if split is None or rec["split"] == split:
            yield rec


def wikitext2_valid() -> str:
    """The WikiText-2 (tokenized) validation text, as one string."""
    with open_text(data_path("wikitext2_valid")) as f:
        return f.read()


def gsm8k(split: str) -> Iterator[dict]:
    """Yield GSM8K records {"question", "answer"} of split 'train' or 'test'."""
    if split not in ("train", "test"):
        raise ValueError(f"Unknown GSM8K split {split!r}; the vendored files are 'train' and 'test'.")
    yield from read_jsonl(data_path(f"gsm8k_{split}"))


def shipped_tokenizers() -> list[str]:
    """Names of the tokenizers shipped in assets/tokenizers (those with a .model file)."""
    if not TOKENIZERS_DIR.is_dir():
        return []
    return sorted(p.stem for p in TOKENIZERS_DIR.glob("*.model"))
