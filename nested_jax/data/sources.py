"""Data manifests: sources (path, format, domain, weight, split rule, filters) and document readers."""

import dataclasses
import fnmatch
import hashlib
import importlib.util
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
FORMATS = ("txt", "jsonl", "dir", "wikitext")
STDLIB_EXCLUDE = ("test/*", "*/test/*", "tests/*", "*/tests/*", "*/idle_test/*", "test_*.py", "*/test_*.py",
                  "site-packages/*", "dist-packages/*", "*/__pycache__/*", "lib2to3/tests/*")


@dataclasses.dataclass(frozen=True)
class Source:
    """One input of a manifest. `path` may be a file, a directory, 'assets:<relpath>' or 'stdlib:'."""

    domain: str                       # domain name (a mixture component), e.g. "novels"
    path: str                         # input file or directory
    format: str = "auto"              # txt | jsonl | dir | wikitext; auto = from the file name
    field: str | tuple = "text"       # jsonl: field holding the text, or a list of fields joined by "\n"
    doc_per: str = "line"             # txt: one document per "line", per "blank"-line block, or per "file"
    glob: str = "**/*.txt"            # dir: which files (relative glob); each file is one document
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
        for ext in (".xz", ".bz2", ".gz"):
            name = name.removesuffix(ext)
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
            if "field" in self.split and fmt != "jsonl":
                raise ValueError(f"Split rule {{'field': ...}} needs a jsonl source; {self.path!r} is {fmt}.")
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
        """The input files, sorted (one file unless the format is 'dir')."""
        p = self.input_path()
        if self.resolved_format() != "dir":
            if p.is_dir():
                raise ValueError(f"{p} is a directory but format is {self.resolved_format()!r}; use format 'dir'.")
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
            "Fix: pass text files (.txt, .jsonl; .xz/.bz2/.gz compressed ok) or convert it to "
            "UTF-8.") from None
    except (EOFError, lzma.LZMAError, zlib.error, OSError) as e:
        if isinstance(e, FileNotFoundError) or (isinstance(e, OSError) and e.errno is not None):
            raise  # a missing file or a file-system refusal, reported as such
        raise ValueError(f"{current[0]} cannot be decompressed ({type(e).__name__}: {e}). Fix: "
                         "check that the file is complete and that its extension matches its "
                         "compression (.xz, .bz2, .gz), or pass it uncompressed.") from None


def _binary(path, text: str) -> None:
    if "\x00" in text:
        raise ValueError(f"{path} holds NUL bytes: it is a binary file, not text. Fix: pass text "
                         "files (.txt, .jsonl; .xz/.bz2/.gz compressed ok).")


def _read_docs(src: Source, current: list) -> Iterator[Doc]:
    fmt = src.resolved_format()
    counts = {s: 0 for s in SPLITS}

    def take(doc: Doc) -> bool:
        if src.limit and counts[doc.split] >= src.limit:
            return False
        counts[doc.split] += 1
        return True

    for path in src.files():
        current[0] = path
        name = path.name
        if fmt == "jsonl":
            for i, rec in enumerate(assets.read_jsonl(path)):
                if not isinstance(rec, dict):
                    raise ValueError(f"{path} record {i} is {type(rec).__name__}, not a JSON "
                                     "object. Fix: write one {\"text\": ...} object per line.")
                key = str(rec.get("id", f"{name}:{i}"))
                doc = Doc(key, _field_text(rec, src.field, f"{path} record {i}"), src.split_of(key, rec))
                if take(doc):
                    yield doc
        elif fmt == "wikitext":
            with assets.open_text(path) as f:
                for title, article in _wikitext_articles(f.read()):
                    doc = Doc(title, article, src.split_of(title))
                    if take(doc):
                        yield doc
        elif fmt == "dir":
            rel = path.relative_to(src.input_path()).as_posix()
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue  # binary or non-UTF-8 file: skipped, as a text corpus cannot use it
            doc = Doc(rel, text, src.split_of(rel))
            if take(doc):
                yield doc
        else:  # txt
            with assets.open_text(path) as f:
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
                    doc = Doc(key, chunk, src.split_of(key))
                    if take(doc):
                        yield doc


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
