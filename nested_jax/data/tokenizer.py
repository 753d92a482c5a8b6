"""SentencePiece tokenizer wrapper with fixed special ids (pad 0, unk 1, bos 2, eos 3).

Newlines: text is split on "\n", each line is encoded on its own (so the first word
of a paragraph gets the same pieces as elsewhere) and the lines are joined by the
byte piece <0x0A>. `decode` inverts this exactly: decode(encode(x)) == x.
"""

import os
from pathlib import Path

import sentencepiece as spm

from nested_jax.data import assets
from nested_jax.data.assets import file_sha256

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
NEWLINE_PIECE = "<0x0A>"


class Tokenizer:
    """A SentencePiece model plus the project's newline convention and special ids."""

    def __init__(self, model_path: str | os.PathLike, name: str | None = None):
        self.path = Path(model_path)
        self.name = name or self.path.stem
        self.sha256 = file_sha256(self.path)
        self.sp = spm.SentencePieceProcessor(model_file=str(self.path))
        ids = (self.sp.pad_id(), self.sp.unk_id(), self.sp.bos_id(), self.sp.eos_id())
        if ids != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
            raise ValueError(
                f"Tokenizer {self.path} has special ids (pad, unk, bos, eos) = {ids}, but the project uses "
                f"{(PAD_ID, UNK_ID, BOS_ID, EOS_ID)}. Fix: retrain it with `python -m nested_jax.data tokenizer`."
            )
        self.newline_id = self.sp.piece_to_id(NEWLINE_PIECE)
        if self.newline_id == self.sp.unk_id():
            raise ValueError(
                f"Tokenizer {self.path} has no {NEWLINE_PIECE} byte piece (trained without byte_fallback). "
                "Fix: retrain it with `python -m nested_jax.data tokenizer` (byte_fallback is on)."
            )

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

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

    def __repr__(self) -> str:
        return f"Tokenizer(name={self.name!r}, vocab_size={self.vocab_size}, sha256={self.sha256[:12]}…)"


def tokenizer_path(name_or_path: str | os.PathLike) -> Path:
    """The .model file of a shipped tokenizer name or an explicit path; clear errors otherwise."""
    s = str(name_or_path)
    shipped = assets.TOKENIZERS_DIR / f"{s}.model"
    looks_like_path = os.sep in s or s.endswith(".model") or s.startswith((".", "~"))
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
        raise FileNotFoundError(f"Tokenizer path {p} is a directory; pass the .model file inside it.")
    if not p.is_file():
        raise FileNotFoundError(
            f"Tokenizer model file not found: {p}. Fix: check the path, use a shipped name "
            f"({', '.join(assets.shipped_tokenizers())}), or train one with `python -m nested_jax.data tokenizer`."
        )
    return p


_CACHE: dict[tuple[str, float], Tokenizer] = {}


def load_tokenizer(name_or_path: str | os.PathLike) -> Tokenizer:
    """Load a shipped tokenizer by name (e.g. 'novels_2k') or a .model file by path (cached)."""
    path = tokenizer_path(name_or_path).resolve()
    key = (str(path), path.stat().st_mtime)
    if key not in _CACHE:
        name = path.stem if path.parent == assets.TOKENIZERS_DIR.resolve() else str(path)
        _CACHE[key] = Tokenizer(path, name=name)
    return _CACHE[key]
