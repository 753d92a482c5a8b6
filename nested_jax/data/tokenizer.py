"""Tokenizers behind one interface (`Tokenizer`): encode / encode_batch / decode, the
special ids, vocab_size and the file's sha256 (which every checkpoint records).

`SentencePieceTokenizer`: the project's own SentencePiece models, with fixed special ids
(pad 0, unk 1, bos 2, eos 3). Newlines: text is split on "\n", each line is encoded on its
own (so the first word of a paragraph gets the same pieces as elsewhere) and the lines are
joined by the byte piece <0x0A>. `decode` inverts this exactly: decode(encode(x)) == x.

`HFTokenizer`: a Hugging Face `tokenizer.json` (byte-level BPE as in Llama 3 and Qwen2, or
any model the `tokenizers` library reads) with the special tokens named in the
`tokenizer_config.json` beside it; the text is encoded as the library does, without the
special tokens its post-processor would add (callers choose bos / eos, as with
SentencePiece).

`HFSentencePieceTokenizer`: a Hugging Face model folder's `tokenizer.model` (SentencePiece,
as Llama 2, TinyLlama and Mistral ship it) with the `tokenizer_config.json` beside it: the
text is encoded as one SentencePiece sequence, as transformers' LlamaTokenizer does (no
newline convention; its dummy prefix and byte fallback are the model's own), special
tokens by the names in the config (else the model's <s>, </s>, <unk>).
"""

import json
import os
from pathlib import Path

from nested_jax.data import assets
from nested_jax.data.assets import file_sha256

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
NEWLINE_PIECE = "<0x0A>"
HF_TOKENIZER_FILE = "tokenizer.json"
HF_SPM_FILE = "tokenizer.model"  # a Hugging Face folder's SentencePiece tokenizer
HF_TOKENIZER_CONFIG = "tokenizer_config.json"


def _hf_config(path: Path) -> tuple[Path, dict]:
    cfg_path = path.with_name(HF_TOKENIZER_CONFIG)
    return cfg_path, (json.loads(cfg_path.read_text()) if cfg_path.is_file() else {})


def _special_name(cfg: dict, key: str):
    tok = cfg.get(key)
    return tok.get("content") if isinstance(tok, dict) else tok


class Tokenizer:
    """What data preparation, training, evaluation and generation use of a tokenizer."""

    path: Path
    name: str
    sha256: str
    pad_id: int
    unk_id: int | None
    bos_id: int | None
    eos_id: int

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    @property
    def newline_id(self) -> int:
        """The id of "\n" when it is one token (needle-in-a-haystack layouts use it)."""
        ids = self.encode("\n")
        if len(ids) != 1:
            raise ValueError(f"tokenizer {self.name} encodes a newline as {len(ids)} tokens.")
        return ids[0]

    @property
    def doc_start_id(self) -> int | None:
        """The token a document starts after: eos for the project's tokenizers (training
        packs documents each followed by eos), the tokenizer's own leading special token for
        Hugging Face ones (Llama 3's <|begin_of_text|>; None for Qwen2, which adds none)."""
        return self.eos_id

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        raise NotImplementedError

    def encode_batch(self, texts: list[str], add_bos: bool = False, add_eos: bool = False,
                     num_threads: int | None = None) -> list[list[int]]:
        return [self.encode(t, add_bos, add_eos) for t in texts]

    def decode(self, ids) -> str:
        raise NotImplementedError

    def _specials(self, ids: list[int], add_bos: bool, add_eos: bool) -> list[int]:
        if add_bos and self.bos_id is not None:
            ids = [self.bos_id] + ids
        return ids + [self.eos_id] if add_eos else ids

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size}, "
                f"sha256={self.sha256[:12]}…)")


def _load_spm(spm, path: Path):
    """A SentencePieceProcessor of `path`; a file that is not a SentencePiece model (a text
    file, a tokenizer.json under a .model name) is a ValueError naming it."""
    try:
        return spm.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as e:
        raise ValueError(f"{path} is not a SentencePiece model ({' '.join(str(e).split())[:160]}). "
                         "Fix: pass a SentencePiece .model file, a Hugging Face tokenizer.json, "
                         "or a shipped tokenizer name (novels_2k, novels_32k).") from None


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model plus the project's newline convention and special ids."""

    def __init__(self, model_path: str | os.PathLike, name: str | None = None):
        import sentencepiece as spm

        self.path = Path(model_path)
        self.name = name or self.path.stem
        self.sha256 = file_sha256(self.path)
        self.sp = _load_spm(spm, self.path)
        ids = (self.sp.pad_id(), self.sp.unk_id(), self.sp.bos_id(), self.sp.eos_id())
        if ids != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
            raise ValueError(
                f"Tokenizer {self.path} has special ids (pad, unk, bos, eos) = {ids}, but the project uses "
                f"{(PAD_ID, UNK_ID, BOS_ID, EOS_ID)}. Fix: retrain it with `python -m nested_jax.data tokenizer`."
            )
        self._newline_id = self.sp.piece_to_id(NEWLINE_PIECE)
        if self._newline_id == self.sp.unk_id():
            raise ValueError(
                f"Tokenizer {self.path} has no {NEWLINE_PIECE} byte piece (trained without byte_fallback). "
                "Fix: retrain it with `python -m nested_jax.data tokenizer` (byte_fallback is on)."
            )

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    @property
    def newline_id(self) -> int:
        return self._newline_id

    pad_id = property(lambda self: PAD_ID)
    unk_id = property(lambda self: UNK_ID)
    bos_id = property(lambda self: BOS_ID)
    eos_id = property(lambda self: EOS_ID)

    def _join(self, line_ids: list[list[int]], add_bos: bool, add_eos: bool) -> list[int]:
        out = [BOS_ID] if add_bos else []
        for i, ids in enumerate(line_ids):
            if i:
                out.append(self.newline_id)
            out.extend(ids)
        if add_eos:
            out.append(EOS_ID)
        return out

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids of one string."""
        return self._join(self.sp.encode(text.split("\n")), add_bos, add_eos)

    def encode_batch(self, texts: list[str], add_bos: bool = False, add_eos: bool = False,
                     num_threads: int | None = None) -> list[list[int]]:
        """Token ids of many strings, encoded on `num_threads` threads (default: all cores)."""
        lines, counts = [], []
        for t in texts:
            parts = t.split("\n")
            lines.extend(parts)
            counts.append(len(parts))
        flat = self.sp.encode(lines, num_threads=num_threads or os.cpu_count() or 1)
        out, start = [], 0
        for n in counts:
            out.append(self._join(flat[start:start + n], add_bos, add_eos))
            start += n
        return out

    def decode(self, ids) -> str:
        """Text of a sequence of ids (special tokens pad/bos/eos/unk are dropped)."""
        ids = [int(i) for i in ids]
        lines, cur = [], []
        for i in ids:
            if i == self.newline_id:
                lines.append(cur)
                cur = []
            else:
                cur.append(i)
        lines.append(cur)
        return "\n".join(self.sp.decode(line) for line in lines)


class HFTokenizer(Tokenizer):
    """A Hugging Face tokenizer.json (module docstring). Special tokens come from the
    tokenizer_config.json beside it (bos_token, eos_token, pad_token, unk_token); a missing
    pad token pads with eos."""

    def __init__(self, path: str | os.PathLike, name: str | None = None):
        try:
            from tokenizers import Tokenizer as _HF
        except ImportError:
            raise ValueError("reading a Hugging Face tokenizer.json needs the `tokenizers` "
                             "package: pip install tokenizers (a nested_jax dependency).") from None
        self.path = Path(path)
        self.name = name or str(self.path)
        self.sha256 = file_sha256(self.path)
        try:
            self.hf = _HF.from_file(str(self.path))
        except Exception as e:  # noqa: BLE001 - the library raises plain Exceptions
            raise ValueError(f"{self.path} is not a Hugging Face tokenizer.json the `tokenizers` "
                             f"library can read ({str(e)[:200]}). Fix: pass the tokenizer.json "
                             "of the model folder.") from None
        cfg_path, cfg = _hf_config(self.path)

        def special(key):
            tok = _special_name(cfg, key)
            if tok is None:
                return None
            i = self.hf.token_to_id(tok)
            if i is None:
                raise ValueError(f"{cfg_path} names {key}={tok!r}, which is not in the "
                                 f"vocabulary of {self.path}.")
            return i

        self.bos_id, self.unk_id = special("bos_token"), special("unk_token")
        self.eos_id = special("eos_token")
        if self.eos_id is None:
            raise ValueError(f"{self.path}: no eos_token in {cfg_path} (documents are "
                             "separated by it). Fix: add \"eos_token\" to tokenizer_config.json.")
        pad = special("pad_token")
        self.pad_id = self.eos_id if pad is None else pad

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    @property
    def doc_start_id(self) -> int | None:
        plain = self.hf.encode("a", add_special_tokens=False).ids
        full = self.hf.encode("a", add_special_tokens=True).ids
        lead = len(full) - len(plain)
        return full[0] if lead > 0 and full[lead:lead + len(plain)] == plain else None

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        return self._specials(self.hf.encode(text, add_special_tokens=False).ids, add_bos, add_eos)

    def encode_batch(self, texts: list[str], add_bos: bool = False, add_eos: bool = False,
                     num_threads: int | None = None) -> list[list[int]]:
        encs = self.hf.encode_batch(list(texts), add_special_tokens=False)
        return [self._specials(e.ids, add_bos, add_eos) for e in encs]

    def decode(self, ids) -> str:
        """Text of a sequence of ids (special tokens dropped)."""
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=True)


class HFSentencePieceTokenizer(Tokenizer):
    """A Hugging Face folder's tokenizer.model (module docstring)."""

    def __init__(self, path: str | os.PathLike, name: str | None = None):
        import sentencepiece as spm

        self.path = Path(path)
        self.name = name or str(self.path)
        self.sha256 = file_sha256(self.path)
        self.sp = _load_spm(spm, self.path)
        cfg_path, cfg = _hf_config(self.path)

        def special(key, default):
            tok = _special_name(cfg, key)
            if tok is None:
                return default if default is not None and default >= 0 else None
            i = self.sp.piece_to_id(tok)
            if i == self.sp.unk_id() and tok != self.sp.id_to_piece(i):
                raise ValueError(f"{cfg_path} names {key}={tok!r}, which is not a piece of "
                                 f"{self.path}.")
            return i

        self.bos_id = special("bos_token", self.sp.bos_id())
        self.eos_id = special("eos_token", self.sp.eos_id())
        self.unk_id = special("unk_token", self.sp.unk_id())
        if self.eos_id is None:
            raise ValueError(f"{self.path} has no end-of-text piece and {cfg_path} names no "
                             "eos_token. Fix: add \"eos_token\" to tokenizer_config.json.")
        pad = special("pad_token", None)
        self.pad_id = self.eos_id if pad is None else pad
        self._add_bos = bool(cfg.get("add_bos_token", True))

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    @property
    def doc_start_id(self) -> int | None:
        return self.bos_id if self._add_bos else None

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        return self._specials(self.sp.encode(text), add_bos, add_eos)

    def encode_batch(self, texts: list[str], add_bos: bool = False, add_eos: bool = False,
                     num_threads: int | None = None) -> list[list[int]]:
        kw = {"num_threads": num_threads} if num_threads else {}
        return [self._specials(ids, add_bos, add_eos)
                for ids in self.sp.encode(list(texts), **kw)]

    def decode(self, ids) -> str:
        """Text of a sequence of ids (special tokens dropped)."""
        drop = {self.bos_id, self.eos_id, self.pad_id} - {None}
        return self.sp.decode([int(i) for i in ids if int(i) not in drop])


def tokenizer_path(name_or_path: str | os.PathLike) -> Path:
    """The .model file of a shipped tokenizer name, or an explicit path (a SentencePiece .model,
    a Hugging Face tokenizer.json, or a folder holding one); clear errors otherwise."""
    s = str(name_or_path)
    shipped = assets.TOKENIZERS_DIR / f"{s}.model"
    looks_like_path = (os.sep in s or s.endswith((".model", ".json"))
                       or s.startswith((".", "~")))
    if not looks_like_path:
        if shipped.is_file():
            return shipped
        names = assets.shipped_tokenizers()
        raise ValueError(
            f"Unknown tokenizer {s!r}. Shipped tokenizers: {', '.join(names) or '(none found)'} "
            f"(in {assets.TOKENIZERS_DIR}); or pass a path to a SentencePiece .model file. "
            "To build a shipped one again, see nested_jax/assets/tokenizers/README.md."
        )
    p = Path(s).expanduser()
    if p.is_dir():
        for f in (HF_TOKENIZER_FILE, HF_SPM_FILE):
            if (p / f).is_file():
                return p / f
        raise FileNotFoundError(f"Tokenizer path {p} is a directory without a {HF_TOKENIZER_FILE} "
                                f"or {HF_SPM_FILE}; pass the .model or tokenizer.json file inside it.")
    if not p.is_file():
        raise FileNotFoundError(
            f"Tokenizer file not found: {p}. Fix: check the path, use a shipped name "
            f"({', '.join(assets.shipped_tokenizers())}), or train one with `python -m nested_jax.data tokenizer`."
        )
    return p


_CACHE: dict[tuple[str, float], Tokenizer] = {}


def is_hf_spm(path: Path) -> bool:
    """A Hugging Face folder's SentencePiece tokenizer: a `tokenizer.model` with a
    tokenizer_config.json beside it (the project's own models have other names)."""
    return path.name == HF_SPM_FILE and path.with_name(HF_TOKENIZER_CONFIG).is_file()


def load_tokenizer(name_or_path: str | os.PathLike) -> Tokenizer:
    """Load a shipped tokenizer by name (e.g. 'novels_2k'), a SentencePiece .model, a
    Hugging Face tokenizer.json or a Hugging Face folder's tokenizer.model by path (cached)."""
    path = tokenizer_path(name_or_path).resolve()
    key = (str(path), path.stat().st_mtime)
    if key not in _CACHE:
        name = path.stem if path.parent == assets.TOKENIZERS_DIR.resolve() else str(path)
        cls = (HFTokenizer if path.suffix == ".json" else HFSentencePieceTokenizer
               if is_hf_spm(path) else SentencePieceTokenizer)
        _CACHE[key] = cls(path, name=name)
    return _CACHE[key]
