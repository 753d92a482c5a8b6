"""Data manifests: sources (path, format, domain, weight, split rule, filters) and document readers."""

import dataclasses
import fnmatch
import hashlib
import importlib
import importlib.util
import io
import json
import lzma
import os
import re
import sysconfig
import zlib
from collections.abc import Iterator
from pathlib import Path

from nested_jax.data import assets
from nested_jax.data.text import stable_fraction

SPLITS = ("train", "valid")
FORMATS = ("txt", "jsonl", "dir", "wikitext", "parquet")
COMPRESSIONS = (".xz", ".bz2", ".gz", ".zst")  # read directly (streaming); .zst needs the corpora extra
FIELD_SPLIT_FORMATS = ("jsonl", "parquet")     # formats whose records can carry a split field
DIR_GLOB = "**/*.txt"  # Source.glob's default
# A Parquet / JSONL source whose path is a folder reads every shard matching these.
SHARD_GLOBS = {"parquet": "**/*.parquet", "jsonl": "**/*.jsonl*"}
PARQUET_BATCH_ROWS = 1024                      # rows per record batch read from a Parquet file
ZSTD_READ_BYTES = 1 << 20                      # compressed bytes read from a .zst file at a time
STDLIB_EXCLUDE = ("test/*", "*/test/*", "tests/*", "*/tests/*", "*/idle_test/*", "test_*.py", "*/test_*.py",
                  "site-packages/*", "dist-packages/*", "*/__pycache__/*", "lib2to3/tests/*")


@dataclasses.dataclass(frozen=True)
class Source:
    """One input of a manifest. `path` may be a file, a directory, 'assets:<relpath>' or 'stdlib:'."""

    domain: str                       # domain name (a mixture component), e.g. "novels"
    path: str                         # input file or directory
    format: str = "auto"              # txt | jsonl | dir | wikitext | parquet; auto = from the file name
    field: str | tuple = "text"       # jsonl field / parquet column holding the text, or a list joined by "\n"
    doc_per: str = "line"             # txt: one document per "line", per "blank"-line block, or per "file"
    glob: str = "**/*.txt"            # dir: which files (relative glob); each file is one document; parquet/jsonl folder: its shards
    exclude: tuple = ()               # dir: fnmatch patterns (relative paths) to skip
    split: str | dict = "train"       # "train" / "valid", {"field": name, "map": {...}} or {"valid_fraction": f}
    weight: float = 1.0               # domain sampling weight in the training mixture
    min_chars: int = 0                # drop documents shorter than this (after normalisation)
    max_chars: int = 0                # drop documents longer than this (0 = no limit)
    english: bool = True              # apply the offline English filter
    whitespace: str = "lines"         # normalisation mode: lines | collapse | none
    limit: int = 0                    # keep at most this many documents per split (0 = all; the first ones)

    @classmethod
    def from_dict(cls, d: dict) -> "Source":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"Unknown source key(s) {sorted(unknown)} in {d}; known keys: {sorted(known)}.")
        if "domain" not in d or "path" not in d:
            raise ValueError(f"Each source needs 'domain' and 'path'; got {d}.")
        d = dict(d)
        for k in ("field", "exclude"):
            if isinstance(d.get(k), list):
                d[k] = tuple(d[k])
        src = cls(**d)
        src.validate()
        return src

    def resolved_format(self) -> str:
        if self.format != "auto":
            return self.format
        if self.path == "stdlib:" or Path(str(assets.resolve(self.path))).is_dir():
            return "dir"
        name = str(self.path).lower()
        for ext in COMPRESSIONS:
            name = name.removesuffix(ext)
        if name.endswith(".parquet"):
            return "parquet"
        if name.endswith((".jsonl", ".json")):
            return "jsonl"
        if name.endswith(".txt"):
            return "txt"
        raise ValueError(
            f"Cannot infer the format of {self.path!r} (domain {self.domain!r}). "
            f"Fix: set 'format' to one of {FORMATS}."
        )

    def validate(self) -> None:
        fmt = self.resolved_format()
        if fmt not in FORMATS:
            raise ValueError(f"Unknown format {fmt!r} for {self.path!r}; supported formats: {FORMATS}.")
        if self.doc_per not in ("line", "blank", "file"):
            raise ValueError(f"Unknown doc_per {self.doc_per!r} for {self.path!r}; use 'line', 'blank' or 'file'.")
        if isinstance(self.split, str):
            if self.split not in SPLITS:
                raise ValueError(f"Bad split {self.split!r} for {self.path!r}: use one of {SPLITS} or a split rule.")
        elif isinstance(self.split, dict):
            if set(self.split) - {"field", "map", "valid_fraction"}:
                raise ValueError(f"Unknown split rule {self.split} for {self.path!r}; keys: field, map, valid_fraction.")
            if "field" in self.split and fmt not in FIELD_SPLIT_FORMATS:
                raise ValueError(f"Split rule {{'field': ...}} needs a jsonl or parquet source; {self.path!r} is {fmt}.")
            f = self.split.get("valid_fraction")
            if f is not None and not 0.0 <= f < 1.0:
                raise ValueError(f"valid_fraction must be in [0, 1); got {f} for {self.path!r}.")
        else:
            raise ValueError(f"Bad split rule {self.split!r} for {self.path!r}.")
        if self.weight < 0:
            raise ValueError(f"Negative weight {self.weight} for domain {self.domain!r}.")

    def input_path(self) -> Path:
        if self.path == "stdlib:":
            return Path(sysconfig.get_paths()["stdlib"])
        p = assets.resolve(self.path)
        if not p.exists():
            raise FileNotFoundError(
                f"Input of domain {self.domain!r} not found: {p}. Fix: check 'path' in the manifest "
                "(vendored files are written 'assets:<relpath>', e.g. 'assets:novels100/novels.jsonl.xz')."
            )
        return p

    def files(self) -> list[Path]:
        """The input files, sorted: one file; a 'dir' folder's text files (each a document); or
        a folder of Parquet / JSONL shards, as FineWeb-Edu and SlimPajama ship (format
        'parquet' / 'jsonl': every file matching 'glob', default **/*.parquet / **/*.jsonl*)."""
        p = self.input_path()
        fmt = self.resolved_format()
        if fmt != "dir":
            if p.is_dir():
                if fmt not in SHARD_GLOBS:
                    raise ValueError(f"{p} is a directory but format is {fmt!r}; use format 'dir' (a "
                                     "folder of text files), 'parquet' or 'jsonl' (a folder of shards), "
                                     "or list each file as a source of the same domain and weight.")
                pattern = self.glob if self.glob != DIR_GLOB else SHARD_GLOBS[fmt]
                shards = sorted(f for f in p.glob(pattern) if f.is_file())
                if not shards:
                    raise ValueError(f"{p} holds no file matching {pattern!r} (format {fmt!r}). Fix: "
                                     "set the source's 'glob' to its shards' names.")
                return shards
            return [p]
        if not p.is_dir():
            raise ValueError(f"Format 'dir' needs a directory; {p} is not one.")
        pattern = "**/*.py" if self.path == "stdlib:" and self.glob == "**/*.txt" else self.glob
        exclude = self.exclude or (STDLIB_EXCLUDE if self.path == "stdlib:" else ())
        out = []
        for f in sorted(p.glob(pattern)):
            rel = f.relative_to(p).as_posix()
            if f.is_file() and not any(fnmatch.fnmatch(rel, pat) for pat in exclude):
                out.append(f)
        return out

    def check_readers(self) -> None:
        """Raise (a ValueError naming the file and the extra) if reading this source needs an optional
        package that is not installed: pyarrow for Parquet, zstandard for .zst."""
        fmt = self.resolved_format()
        if fmt == "dir":
            return  # a folder's documents are plain UTF-8 files
        for f in self.files():
            if fmt == "parquet":
                _require("pyarrow.parquet", f)
            elif f.suffix == ".zst":
                _require("zstandard", f)

    def split_of(self, key: str, record: dict | None = None) -> str:
        """The split ('train'/'valid') of one document."""
        rule = self.split
        if isinstance(rule, str):
            return rule
        if "field" in rule:
            value = (record or {}).get(rule["field"])
            value = rule.get("map", {}).get(value, value)
            if value not in SPLITS:
                raise ValueError(
                    f"Bad split {value!r} in field {rule['field']!r} of {self.path!r} (document {key!r}). "
                    f"Available splits are {SPLITS}. Fix: map it in the manifest, e.g. "
                    f"\"split\": {{\"field\": \"{rule['field']}\", \"map\": {{\"{value}\": \"valid\"}}}}."
                )
            return value
        return "valid" if stable_fraction(key) < rule.get("valid_fraction", 0.0) else "train"


@dataclasses.dataclass(frozen=True)
class Doc:
    key: str    # stable identifier (file:line, record id, article title, relative path)
    text: str
    split: str


def _field_text(rec: dict, field, where: str) -> str:
    fields = (field,) if isinstance(field, str) else field
    missing = [f for f in fields if f not in rec]
    if missing:
        raise KeyError(f"{where}: record has no field {missing[0]!r} (fields: {sorted(rec)}). Fix: set 'field'.")
    return "\n".join(str(rec[f]) for f in fields)


_PACKAGES = {"pyarrow": "pyarrow>=15", "zstandard": "zstandard>=0.22"}


def _require(module: str, path):
    """Import an optional reader package; if it is missing, a ValueError naming the file and the extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        pkg = module.split(".")[0]
        raise ValueError(
            f"Reading {path} needs the {pkg!r} package, which is not installed. Fix: install the "
            f"'corpora' extra: pip install 'nested_jax[corpora]' (in a checkout: "
            f".venv/bin/pip install '{_PACKAGES[pkg]}', or EXTRAS=dev,corpora bash launch/setup.sh)."
        ) from None


class _Corrupt(Exception):
    """A compressed or Parquet input that cannot be decoded; read_docs turns it into a ValueError naming the file."""


class _ZstdReader(io.RawIOBase):
    """Streaming zstd decompression of a file (every frame), ZSTD_READ_BYTES of input at a time. Unlike
    zstandard's stream_reader, a file that ends inside a frame (truncated) is an error, not a
    silently shorter text."""

    def __init__(self, path, zstd):
        self._fh = open(path, "rb")
        self._zstd = zstd
        self._dctx = zstd.ZstdDecompressor()
        self._obj = None          # the decompressor of the current frame
        self._out = b""           # decompressed bytes not yet handed out
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while self._pos >= len(self._out):
            block = self._fh.read(ZSTD_READ_BYTES)
            if not block:
                if self._obj is not None and not self._obj.eof:
                    raise _Corrupt("zstd: the file ends inside a frame; it is truncated")
                return 0
            out = []
            try:
                while block:
                    if self._obj is None or self._obj.eof:
                        self._obj = self._dctx.decompressobj()
                    out.append(self._obj.decompress(block))
                    block = self._obj.unused_data if self._obj.eof else b""
            except self._zstd.ZstdError as e:
                raise _Corrupt(f"zstd: {e}") from None
            self._out, self._pos = b"".join(out), 0
        n = min(len(b), len(self._out) - self._pos)
        b[:n] = memoryview(self._out)[self._pos:self._pos + n]
        self._pos += n
        return n

    def close(self) -> None:
        self._fh.close()
        super().close()


def open_text(path) -> io.TextIOBase:
    """`assets.open_text` (plain, .xz, .bz2, .gz) plus .zst, decompressed as a stream (needs zstandard)."""
    p = assets.resolve(path)
    if p.suffix != ".zst":
        return assets.open_text(p)
    if not p.is_file():
        raise FileNotFoundError(f"Input file not found: {p}. Fix: check the path (or use 'assets:<relpath>').")
    raw = _ZstdReader(p, _require("zstandard", p))
    return io.TextIOWrapper(io.BufferedReader(raw, buffer_size=1 << 16), encoding="utf-8", newline="")


def _is_string_type(pa, t) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return (pa.types.is_string(t) or pa.types.is_large_string(t)
            or getattr(pa.types, "is_string_view", lambda _: False)(t))


def _parquet_records(src: Source, path: Path) -> Iterator[tuple[str, str, dict | None]]:
    """(key, text, record for the split rule) per row of a Parquet file, read one record batch
    (PARQUET_BATCH_ROWS rows of the needed columns) at a time. The text column(s) must exist and
    hold strings; a null text is an empty document. The key is the 'id' column if there is one."""
    pa = _require("pyarrow", path)
    pq = _require("pyarrow.parquet", path)
    try:
        pf = pq.ParquetFile(path)
        schema = pf.schema_arrow
    except (pa.ArrowException, OSError) as e:
        if isinstance(e, OSError) and e.errno is not None:
            raise
        raise _Corrupt(f"parquet: {e}") from None
    try:
        names = list(schema.names)
        fields = (src.field,) if isinstance(src.field, str) else tuple(src.field)
        text_cols = [n for n in names if _is_string_type(pa, schema.field(n).type)]
        for f in fields:
            if f not in names:
                raise ValueError(f"{path} has no column {f!r}; its columns are {names} (string columns: "
                                 f"{text_cols}). Fix: set 'field' (--field) to the text column.")
            t = schema.field(f).type
            if not _is_string_type(pa, t):
                raise ValueError(f"{path}: column {f!r} holds {t}, not strings; its string columns are "
                                 f"{text_cols}. Fix: set 'field' (--field) to the text column.")
        split_col = src.split.get("field") if isinstance(src.split, dict) else None
        if split_col is not None and split_col not in names:
            raise ValueError(f"{path} has no column {split_col!r} for the split rule; its columns are "
                             f"{names}. Fix: set the split rule's 'field' to an existing column.")
        key_col = "id" if "id" in names else None
        cols = list(dict.fromkeys([*fields, *(c for c in (split_col, key_col) if c)]))
        i = 0
        for batch in _parquet_batches(pa, pf, cols):
            data = {c: batch.column(c).to_pylist() for c in cols}
            for j in range(batch.num_rows):
                key_value = data[key_col][j] if key_col else None
                key = str(key_value) if key_value is not None else f"{path.name}:{i}"
                text = "\n".join(data[f][j] or "" for f in fields)
                yield key, text, ({split_col: data[split_col][j]} if split_col else None)
                i += 1
    finally:
        pf.close()


def _parquet_batches(pa, pf, cols: list) -> Iterator:
    """pf.iter_batches, with pyarrow's decoding errors (a corrupt or truncated file) as _Corrupt."""
    it = pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=cols)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as e:
            if isinstance(e, OSError) and e.errno is not None:
                raise
            raise _Corrupt(f"parquet: {e}") from None
        yield batch


_WIKI_TITLE = re.compile(r"^ = [^=].* = $")


def _wikitext_articles(text: str) -> Iterator[tuple[str, str]]:
    """Split WikiText into (title, article) at ' = Title = ' lines."""
    title, lines = None, []
    for line in text.split("\n"):
        if _WIKI_TITLE.match(line):
            if title is not None:
                yield title, "\n".join(lines)
            title, lines = line.strip(" ="), [line]
        elif title is not None:
            lines.append(line)
    if title is not None:
        yield title, "\n".join(lines)


def read_docs(src: Source) -> Iterator[Doc]:
    """Yield the raw documents of a source, in a deterministic order, with their split. A file
    that is not (compressed) UTF-8 text is a ValueError naming it."""
    current: list = [src.path]  # the file being read, for the error message
    try:
        yield from _read_docs(src, current)
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{current[0]} is not UTF-8 text (byte {e.start}: {e.reason}); is it a binary file? "
            "Fix: pass text files (.txt, .jsonl; .xz/.bz2/.gz/.zst compressed ok) or Parquet, or "
            "convert it to UTF-8.") from None
    except _Corrupt as e:
        what = "is not a readable Parquet file" if str(e).startswith("parquet:") else "cannot be decompressed"
        raise ValueError(f"{current[0]} {what} ({str(e).rstrip('.')}). Fix: check that the file is complete (download "
                         "it again) and that its extension matches its contents (.parquet, .zst), "
                         "or set the source's 'format'.") from None
    except (EOFError, lzma.LZMAError, zlib.error, OSError) as e:
        if isinstance(e, FileNotFoundError) or (isinstance(e, OSError) and e.errno is not None):
            raise  # a missing file or a file-system refusal, reported as such
        raise ValueError(f"{current[0]} cannot be decompressed ({type(e).__name__}: {e}). Fix: "
                         "check that the file is complete and that its extension matches its "
                         "compression (.xz, .bz2, .gz, .zst), or pass it uncompressed.") from None


def _binary(path, text: str) -> None:
    if "\x00" in text:
        raise ValueError(f"{path} holds NUL bytes: it is a binary file, not text. Fix: pass text "
                         "files (.txt, .jsonl; .xz/.bz2/.gz/.zst compressed ok) or Parquet.")


def _read_docs(src: Source, current: list) -> Iterator[Doc]:
    """The documents of `_all_docs`, at most `src.limit` per split; reading stops once every split
    the source can produce is full (a few documents of a large Parquet file are quick to take)."""
    if not src.limit:
        yield from _all_docs(src, current)
        return
    counts = {s: 0 for s in SPLITS}
    rule = src.split
    if isinstance(rule, str):
        splits = (rule,)
    else:
        splits = SPLITS if "field" in rule or rule.get("valid_fraction", 0.0) > 0 else ("train",)
    for doc in _all_docs(src, current):
        if counts[doc.split] < src.limit:
            counts[doc.split] += 1
            yield doc
        if all(counts[s] >= src.limit for s in splits):
            return


def _all_docs(src: Source, current: list) -> Iterator[Doc]:
    fmt = src.resolved_format()
    for path in src.files():
        current[0] = path
        name = path.name
        if fmt == "jsonl":
            for i, rec in enumerate(assets.read_jsonl(path, opener=open_text)):
                if not isinstance(rec, dict):
                    raise ValueError(f"{path} record {i} is {type(rec).__name__}, not a JSON "
                                     "object. Fix: write one {\"text\": ...} object per line.")
                key = str(rec.get("id", f"{name}:{i}"))
                yield Doc(key, _field_text(rec, src.field, f"{path} record {i}"), src.split_of(key, rec))
        elif fmt == "parquet":
            for key, text, rec in _parquet_records(src, path):
                yield Doc(key, text, src.split_of(key, rec))
        elif fmt == "wikitext":
            with open_text(path) as f:
                for title, article in _wikitext_articles(f.read()):
                    yield Doc(title, article, src.split_of(title))
        elif fmt == "dir":
            rel = path.relative_to(src.input_path()).as_posix()
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue  # binary or non-UTF-8 file: skipped, as a text corpus cannot use it
            yield Doc(rel, text, src.split_of(rel))
        else:  # txt
            with open_text(path) as f:
                text = f.read()
            _binary(path, text)
            if src.doc_per == "file":
                chunks = [text]
            elif src.doc_per == "blank":
                chunks = re.split(r"\n\s*\n", text)
            else:
                chunks = text.split("\n")
            for i, chunk in enumerate(chunks):
                if chunk.strip():
                    key = f"{name}:{i}"
                    yield Doc(key, chunk, src.split_of(key))


@dataclasses.dataclass(frozen=True)
class Manifest:
    """A named list of sources plus packing settings."""

    name: str
    sources: tuple
    tokenizer: str = ""      # tokenizer name or path ("" = the CLI's --tokenizer)
    row_len: int = 2048      # tokens per packed row
    shard_rows: int = 4096   # rows per .npy shard

    @classmethod
    def from_dict(cls, d: dict) -> "Manifest":
        d = dict(d)
        srcs = d.pop("sources", None)
        if not srcs:
            raise ValueError("The manifest lists no sources. Fix: add a 'sources' list (see nested_jax/data/presets.py).")
        known = {f.name for f in dataclasses.fields(cls)} - {"sources"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"Unknown manifest key(s) {sorted(unknown)}; known keys: sources, {', '.join(sorted(known))}.")
        d.setdefault("name", "manifest")
        m = cls(sources=tuple(Source.from_dict(s) for s in srcs), **d)
        weights: dict[str, float] = {}
        for s in m.sources:
            if weights.setdefault(s.domain, s.weight) != s.weight:
                raise ValueError(f"Sources of domain {s.domain!r} disagree on its weight ({weights[s.domain]} vs {s.weight}).")
        if m.row_len < 2 or m.shard_rows < 1:
            raise ValueError(f"row_len must be >= 2 and shard_rows >= 1; got {m.row_len}, {m.shard_rows}.")
        return m

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["sources"] = [dataclasses.asdict(s) for s in self.sources]
        return d

    def weights(self) -> dict[str, float]:
        return {s.domain: s.weight for s in self.sources}

    def corpus_sha256(self) -> str:
        """sha256 over the manifest settings and every input file's path and bytes."""
        h = hashlib.sha256()
        h.update(json.dumps(self.to_dict(), sort_keys=True).encode())
        for src in self.sources:
            for f in src.files():
                h.update(str(f.name).encode())
                with open(f, "rb") as fh:
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        h.update(block)
        return h.hexdigest()


def load_manifest(path: str | os.PathLike) -> Manifest:
    """Load a manifest from a .json file or a .py file defining `get_manifest()` or `MANIFEST`."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"Manifest not found: {p}. Fix: check the path, or use a preset name.")
    if p.suffix == ".json":
        try:
            d = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"Manifest {p} is not valid JSON: {e}") from None
    elif p.suffix == ".py":
        spec = importlib.util.spec_from_file_location(f"_manifest_{p.stem}", p)
        mod = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(mod)
            d = mod.get_manifest() if hasattr(mod, "get_manifest") else getattr(mod, "MANIFEST", None)
        except Exception as e:  # noqa: BLE001 - the user's file: report, do not crash
            raise ValueError(f"Manifest {p} failed to load: {type(e).__name__}: {e}. Fix: correct "
                             "the file (see nested_jax/data/presets.py for the format).") from None
        if d is None:
            raise ValueError(f"Manifest {p} defines neither get_manifest() nor MANIFEST.")
    else:
        raise ValueError(f"Unknown manifest type {p.suffix!r} ({p}); use a .json or .py file.")
    if not isinstance(d, dict) or not isinstance(d.get("sources", []), list) or not all(
            isinstance(s, dict) for s in d.get("sources") or []):
        raise ValueError(f"Manifest {p} is malformed: it must be an object with a 'sources' list "
                         "of objects ({\"domain\", \"path\", ...}). Fix: see "
                         "nested_jax/data/presets.py for the format.")
    d = dict(d)
    d.setdefault("name", p.stem)
    srcs = []
    for s in d.get("sources") or []:
        s = dict(s)
        sp = str(s.get("path", ""))
        if sp and not sp.startswith(("assets:", "stdlib:", "/", "~")):
            s["path"] = str((p.parent / sp).resolve())  # relative paths are relative to the manifest
        srcs.append(s)
    d["sources"] = srcs
    return Manifest.from_dict(d)
