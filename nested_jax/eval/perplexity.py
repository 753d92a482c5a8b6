"""Perplexity of any text with lm-evaluation-harness's rolling-window definitions.

    python -m nested_jax.eval perplexity --checkpoint DIR --text a.txt b.jsonl.gz --field text \\
        [--stride N] [--learn-online] --output ppl.json
    python -m nested_jax.eval perplexity --checkpoint DIR --text wikitext2 --output wiki.json

Documents: a .txt file is one document; a .jsonl file has one document per line (the
string in --field, default "text"); .gz/.xz/.bz2 compression is read transparently.
`wikitext2` is the vendored WikiText-2 validation split (the tokenized release, with its
`<unk>`s): cut into its 60 articles, each detokenized with the harness's wikitext rules,
words and bytes counted on the article as stored (as the harness does).

Each document is scored on its own as the harness's `loglikelihood_rolling` does: the
token list, preceded by one prefix token, is cut into windows of L = train.seq_len input
tokens. The first window predicts its first L tokens; each later window ends `stride`
tokens further (default L: disjoint windows, the harness default) with L tokens of input,
and scores only the tokens not scored before, so every token is scored exactly once with
as much left context as the window allows (≥ L - stride tokens).

Prefix: EOS by default — the document separator every training document followed, i.e.
the models' "start of document" (they never saw BOS; the harness uses BOS when the
tokenizer defines one, else EOT, for the same purpose). `--prefix bos` conditions the
first token on BOS instead; `--prefix none` leaves the first token unscored.

Metrics, per file and overall (sums over documents, then the ratio, as the harness's
weighted_perplexity / bits_per_byte aggregations):
    word_perplexity = exp(-Σ logprob / #words)        #words = len(re.split(r"\\s+", doc))
    byte_perplexity = exp(-Σ logprob / #bytes)        #bytes of the UTF-8 text
    bits_per_byte   = -Σ logprob / #bytes / ln 2
    token_ce = -Σ logprob / #tokens, token_perplexity = exp(token_ce)

HOPE variants (CMS levels): by default the fast state is frozen (the online scan reads
the CMS meta weights, `online_forward(update=False)`, fresh per window). `--learn-online`
scores with the online scan with updates over each window (fresh per window): every
completed segment's next-token loss (the window's own text, context included) updates
the CMS levels before the next segment is scored — test-time learning, still causal.
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np

from nested_jax.eval.errors import EvalError

BUILTIN = ("wikitext2",)
PREFIXES = ("eos", "bos", "none")
_COMPRESSED = (".gz", ".xz", ".bz2")


# ----------------------------------------------------------------------------- documents
@dataclasses.dataclass
class Document:
    text: str           # what is tokenised and scored
    count_text: str     # what words and bytes are counted on (harness: the stored page)


def count_words(text: str) -> int:
    """lm-evaluation-harness's word count: len(re.split(r"\\s+", text))."""
    return len(re.split(r"\s+", text))


def count_bytes(text: str) -> int:
    return len(text.encode("utf-8"))


def wikitext_detokenize(text: str) -> str:
    """The harness's wikitext detokenizer (undo the tokenized release's spacing)."""
    s = text.replace("s '", "s'")
    s = re.sub(r"/' [0-9]/", r"/'[0-9]/", s)
    for a, b in ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."), (" : ", ": "), (" ; ", "; "),
                 (" . ", ". "), (" ! ", "! "), (" ? ", "? "), (" , ", ", ")):
        s = s.replace(a, b)
    s = re.sub(r"\(\s*([^\)]*?)\s*\)", r"(\1)", s)
    s = re.sub(r"\[\s*([^\]]*?)\s*\]", r"[\1]", s)
    s = re.sub(r"{\s*([^}]*?)\s*}", r"{\1}", s)
    s = re.sub(r"\"\s*([^\"]*?)\s*\"", r'"\1"', s)
    s = re.sub(r"'\s*([^']*?)\s*'", r"'\1'", s)
    for a, b in (("= = = =", "===="), ("= = =", "==="), ("= =", "=="),
                 (" " + chr(176) + " ", chr(176)), (" \n", "\n"), ("\n ", "\n"),
                 (" N ", " 1 "), (" 's", "'s")):
        s = s.replace(a, b)
    return s


_TITLE = re.compile(r"^ = [^=].* = $")


def wikitext_articles(raw: str) -> list[str]:
    """The stored pages of WikiText: a new page starts at each top-level ' = Title = ' line."""
    pages, cur = [], []
    for line in raw.splitlines(keepends=True):
        if _TITLE.match(line.rstrip("\n")):
            if any(x.strip() for x in cur):
                pages.append("".join(cur))
            cur = []  # (blank lines before the first title are dropped)
        cur.append(line)
    if any(x.strip() for x in cur):
        pages.append("".join(cur))
    return pages


def _strip_compression(path: str) -> str:
    for ext in _COMPRESSED:
        if path.endswith(ext):
            return path[: -len(ext)]
    return path


def read_documents(spec: str, field: str | None = None) -> list[Document]:
    """Documents of one --text entry (a built-in name or a file)."""
    import json
    import lzma
    import os

    from nested_jax.data import assets

    if spec in BUILTIN:
        try:
            raw = assets.wikitext2_valid()
        except FileNotFoundError as e:
            raise EvalError(str(e)) from None
        return [Document(wikitext_detokenize(p), p) for p in wikitext_articles(raw)]
    if not os.path.isfile(spec):
        what = "is a directory" if os.path.isdir(spec) else "does not exist"
        raise EvalError(f"--text {spec!r} {what}. Fix: pass a text file (.txt, .jsonl, "
                        f"optionally .gz/.xz/.bz2) or a built-in name ({', '.join(BUILTIN)}).")
    base = _strip_compression(spec)
    jsonl = base.endswith((".jsonl", ".ndjson"))
    docs = []
    try:
        with assets.open_text(spec) as f:
            if not jsonl:
                text = f.read()
                if "\x00" in text:
                    raise UnicodeDecodeError("utf-8", b"\x00", 0, 1, "NUL byte")
                docs = [Document(text, text)] if text.strip() else []
            else:
                name = field or "text"
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise EvalError(f"{spec}:{lineno} is not valid JSON ({e.msg}). Fix: pass "
                                        "a JSON-lines file (one object per line).") from None
                    if not isinstance(rec, dict) or name not in rec:
                        keys = sorted(rec) if isinstance(rec, dict) else type(rec).__name__
                        raise EvalError(f"{spec}:{lineno} has no field {name!r} (keys: {keys}). "
                                        "Fix: name the text field with --field NAME.")
                    value = rec[name]
                    if not isinstance(value, str):
                        raise EvalError(f"{spec}:{lineno}: field {name!r} is a "
                                        f"{type(value).__name__}, not a string. Fix: pass the "
                                        "text field with --field NAME.")
                    if value.strip():
                        docs.append(Document(value, value))
    except (UnicodeDecodeError, EOFError, OSError, ValueError, lzma.LZMAError) as e:
        raise EvalError(f"cannot read --text {spec!r} as UTF-8 text ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:120] if str(e) else 'unreadable'}). Fix: pass "
                        "a UTF-8 text file (.txt, .jsonl; .gz/.xz/.bz2 compressed is fine).") \
            from None
    if not docs:
        raise EvalError(f"--text {spec!r} holds no text. Fix: pass a file with some text"
                        + (f" in field {field or 'text'!r}." if jsonl else "."))
    return docs


# ------------------------------------------------------------------------------ windows
def rolling_windows(n: int, max_len: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows over a sequence s[0..n] whose targets s[1..n] are all to be scored (s[0] is
    the prefix, or the unscored first token): (start, end, n_scored) with inputs s[start:end],
    targets s[start+1:end+1], of which the last n_scored are scored. lm-evaluation-harness's
    get_rolling_token_windows with context_len = max_len - stride + 1."""
    if n <= 0:
        return []
    if not 1 <= stride <= max_len:
        raise ValueError(f"stride {stride} must be in 1..{max_len}.")
    end = min(max_len, n)
    out = [(0, end, end)]
    while end < n:
        new_end = min(end + stride, n)
        out.append((max(0, new_end - max_len), new_end, new_end - end))
        end = new_end
    return out


def prefix_id(tok, prefix: str) -> int | None:
    if prefix not in PREFIXES:
        raise EvalError(f"--prefix {prefix!r}; choose one of {', '.join(PREFIXES)}.")
    return {"eos": tok.eos_id, "bos": tok.bos_id, "none": None}[prefix]


# ------------------------------------------------------------------------------ scoring
def _fresh_fast(model):
    """A fresh one-row fast state without the key/value buffer (frozen HOPE scoring)."""
    import jax

    from nested_jax.model.online import init_fast, strip_kv

    fn = model.fn
    make = lambda p: strip_kv(init_fast(fn.bind(p), fn.cfg, 1, model.segment_len))  # noqa: E731
    return jax.jit(make)(model.params)


def score_token_lists(model, seqs: list[list[int]], *, max_len: int, stride: int,
                      batch_size: int = 8, memorize: bool = False, pad_id: int = 0,
                      progress: bool = False) -> list[np.ndarray]:
    """Per-token log-probs of every target s[1:] of every sequence s (rolling windows of
    `max_len` inputs; eval.models scoring model). Returns one float64 array per sequence."""
    from nested_jax.eval import progress as progress_lib

    t = model.fit(max_len)
    fast = None
    if model.can_memorize and not memorize:
        fast = _fresh_fast(model)
    reqs = [(i, w) for i, s in enumerate(seqs) for w in rolling_windows(len(s) - 1, max_len,
                                                                           stride)]
    out = [np.zeros(max(len(s) - 1, 0), np.float64) for s in seqs]
    with progress_lib.bar(len(reqs), "windows", enabled=progress) as pb:
        for lo in range(0, len(reqs), batch_size):
            group = reqs[lo:lo + batch_size]
            tokens = np.full((batch_size, t + 1), pad_id, np.int32)
            real = np.zeros((batch_size, t), np.float32)
            for r, (i, (start, end, _)) in enumerate(group):
                row = seqs[i][start:end + 1]
                tokens[r, :len(row)] = row
                real[r, :len(row) - 1] = 1.0  # teach signal (memorize) from real tokens only
            logp, _ = model.run(tokens, real, fast=fast)
            for r, (i, (start, end, k)) in enumerate(group):
                n_in = end - start
                out[i][end - k:end] = logp[r, n_in - k:n_in]
            pb.update(len(group))
    return out


def _summary(logprob: float, tokens: int, words: int, n_bytes: int) -> dict:
    nll = -float(logprob)
    return {
        "tokens": int(tokens), "words": int(words), "bytes": int(n_bytes),
        "logprob": float(logprob),
        "token_ce": nll / max(tokens, 1),
        "token_perplexity": math.exp(nll / max(tokens, 1)),
        "word_perplexity": math.exp(nll / max(words, 1)),
        "byte_perplexity": math.exp(nll / max(n_bytes, 1)),
        "bits_per_byte": nll / max(n_bytes, 1) / math.log(2),
    }


def evaluate(model, tok, sources: dict[str, list[Document]], *, max_len: int, stride: int,
             prefix: str = "eos", batch_size: int = 8, memorize: bool = False,
             progress: bool = False) -> dict:
    """{"files": {name: metrics}, "overall": metrics} for documents grouped by source."""
    pid = prefix_id(tok, prefix)
    head = [] if pid is None else [pid]
    files, tot = {}, np.zeros(4)
    for name, docs in sources.items():
        seqs = [head + tok.encode(d.text) for d in docs]
        lps = score_token_lists(model, seqs, max_len=max_len, stride=stride,
                                batch_size=batch_size, memorize=memorize, pad_id=tok.eos_id,
                                progress=progress)
        acc = np.array([sum(float(lp.sum()) for lp in lps), sum(len(lp) for lp in lps),
                        sum(count_words(d.count_text) for d in docs),
                        sum(count_bytes(d.count_text) for d in docs)])
        files[name] = {**_summary(*acc), "documents": len(docs),
                       "windows": sum(len(rolling_windows(len(s) - 1, max_len, stride))
                                      for s in seqs)}
        tot += acc
    return {"files": files, "overall": _summary(*tot)}


def table(metrics: dict) -> str:
    """A short console table: file → tokens, word ppl, byte ppl, bits per byte."""
    rows = [(n, m) for n, m in metrics["files"].items()]
    if len(rows) > 1:
        rows.append(("overall", metrics["overall"]))
    w = max(12, *(len(n) for n, _ in rows))
    lines = [f"{'file':<{w}}  {'tokens':>9}  {'word ppl':>10}  {'byte ppl':>9}  {'bpb':>7}"]
    for n, m in rows:
        lines.append(f"{n:<{w}}  {m['tokens']:>9d}  {m['word_perplexity']:>10.2f}  "
                     f"{m['byte_perplexity']:>9.4f}  {m['bits_per_byte']:>7.4f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- CLI
def add_arguments(p) -> None:
    from nested_jax.cli import DEFAULT_BATCH_SIZE, add_alias, int_at_least

    """Flags of `python -m nested_jax.eval perplexity`."""
    p.add_argument("--checkpoint", required=True, help="training workdir (or its checkpoints/)")
    p.add_argument("--step", type=int_at_least(0), default=None, help="checkpoint step (default: latest)")
    p.add_argument("--text", nargs="+", required=True,
                   help="text files (.txt, .jsonl; .gz/.xz/.bz2 ok) or built-ins: wikitext2")
    p.add_argument("--field", default=None, help=".jsonl: the field holding the text "
                   "(default 'text')")
    p.add_argument("--stride", type=int_at_least(0), default=0,
                   help="tokens between window ends (0 = the window length: disjoint windows, "
                        "the harness default); smaller gives every token more context")
    p.add_argument("--max-length", type=int_at_least(0), default=0,
                   help="window length in input tokens (0 = the checkpoint's train.seq_len)")
    p.add_argument("--prefix", choices=PREFIXES, default="eos",
                   help="token before each document (eos = document start, as in training; "
                        "none = the first token is not scored)")
    p.add_argument("--learn-online", action="store_true",
                   help="HOPE variants: score with the online scan with CMS updates over each "
                        "window (test-time learning); default: fast state frozen")
    add_alias(p, "--memorize", "--learn-online")
    p.add_argument("--output", "--out", dest="output", required=True, help="JSON file to write")
    p.add_argument("--tokenizer", default=None,
                   help="override the tokenizer (.model path); its sha256 must match")
    p.add_argument("--batch-size", type=int_at_least(1), default=DEFAULT_BATCH_SIZE,
                   help="windows per batch")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def command(a, argv) -> dict:
    """`python -m nested_jax.eval perplexity`: the output document (prints the table)."""
    from nested_jax.eval import models, output, restore

    if a.stride < 0 or a.max_length < 0 or a.batch_size < 1:
        raise EvalError(f"--stride {a.stride}, --max-length {a.max_length}, --batch-size "
                        f"{a.batch_size}: need stride ≥ 0, max-length ≥ 0, batch-size ≥ 1.")
    names = list(dict.fromkeys(a.text))
    sources = {n: read_documents(n, a.field) for n in names}
    loaded = restore.load(a.checkpoint, a.step, tokenizer=a.tokenizer)
    model = models.from_loaded(loaded)
    trained = int(loaded.cfg.train.seq_len)
    max_len = a.max_length or trained
    if model.fit(max_len) != max_len:
        raise EvalError(f"--max-length {max_len} is not a multiple of what "
                        f"{loaded.cfg.model.variant} computes in ({model.fit(1)} tokens). "
                        f"Fix: e.g. --max-length {model.fit(max_len)}.")
    stride = a.stride or max_len
    if stride > max_len:
        raise EvalError(f"--stride {stride} exceeds the window length {max_len}. Fix: a "
                        f"stride in 1..{max_len} (0 = {max_len}).")
    memorize = bool(a.learn_online and model.can_memorize)
    doc = output.header("perplexity", argv)
    doc["checkpoint"] = output.checkpoint_info(loaded)
    doc["config"] = loaded.summary()
    doc["settings"] = {
        "texts": names, "field": a.field, "window": max_len, "stride": stride,
        "train_seq_len": trained, "prefix": a.prefix,
        "definition": "lm-evaluation-harness loglikelihood_rolling; word_perplexity = "
                      "exp(-Σlogprob/#words), byte_perplexity = exp(-Σlogprob/#bytes), "
                      "bits_per_byte = -Σlogprob/#bytes/ln2",
        "fast_state": ("online scan with CMS updates over each window" if memorize else
                       "frozen (CMS meta weights)" if model.can_memorize else "none"),
    }
    doc["learn_online"] = {"requested": bool(a.learn_online), "applied": memorize}
    if a.learn_online and not memorize:
        doc["learn_online"]["note"] = (f"variant {loaded.cfg.model.variant} has no CMS levels: "
                                       "--learn-online is a no-op")
    doc["metrics"] = evaluate(model, loaded.tokenizer, sources, max_len=max_len, stride=stride,
                              prefix=a.prefix, batch_size=a.batch_size, memorize=memorize,
                              progress=not a.no_progress)
    return doc  # the CLI prints `table(doc["metrics"])` (nested_jax/eval/tables.py)
