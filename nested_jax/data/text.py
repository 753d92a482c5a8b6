"""Text cleaning: whitespace normalisation, an offline English heuristic, content hashing."""

import hashlib
import re

_TRAILING_WS = re.compile(r"[ \t\f\v]+$", re.M)
_MANY_NEWLINES = re.compile(r"\n{3,}")
_ANY_WS = re.compile(r"\s+")
_WORD = re.compile(r"[a-z']+")

# The ~120 most frequent English function words; real English prose has 35-55 % of them, short maths problems 15-30 %.
STOP_WORDS = frozenset(
    "a about above after again against all also am an and any are as at be because been before being "
    "below between both but by can could did do does doing down during each few for from further had "
    "has have having he her here hers herself him himself his how i if in into is it its itself just "
    "me more most my myself no nor not now of off on once only or other our ours out over own same she "
    "should so some such than that the their theirs them themselves then there these they this those "
    "through to too under until up very was we were what when where which while who whom why will with "
    "would you your yours yourself many much said one two".split()
)
# Frequent function words of German, French, Spanish, Italian, Dutch and Portuguese (none is English).
FOREIGN_STOP_WORDS = frozenset(
    "der die das und ist nicht ich sie es ein eine zu den mit sich des auf dem auch wie wir aber noch "
    "le la les et est une du des que qui dans pour pas sur au avec ce il elle nous vous sont mais "
    "el los las es por con para una del lo como pero muy su sus está "
    "il di che è una sono della gli alla anche come "
    "het een en dat niet ik zijn op te met voor maar er "
    "os um uma não com para mas dos das pelo".split()
)


def normalize(text: str, mode: str = "lines") -> str:
    """Normalise whitespace.

    mode "lines": CRLF/CR -> LF, strip trailing spaces on each line, at most one blank
      line in a row, strip the document's leading/trailing whitespace (keeps
      paragraphs and code indentation).
    mode "collapse": every whitespace run becomes one space (as the PyTorch reproduction).
    mode "none": unchanged.
    """
    if mode == "none":
        return text
    if mode == "collapse":
        return _ANY_WS.sub(" ", text).strip()
    if mode != "lines":
        raise ValueError(f"Unknown whitespace mode {mode!r}; use 'lines', 'collapse' or 'none'.")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _TRAILING_WS.sub("", text)
    text = _MANY_NEWLINES.sub("\n\n", text)
    return text.strip()


def english_score(text: str, sample_chars: int = 20_000) -> tuple[float, float, float]:
    """(ASCII share of letters, English and foreign stop-word shares of words) on up to 3 samples."""
    if len(text) > sample_chars:
        k = sample_chars // 3
        mid = len(text) // 2
        text = text[:k] + " " + text[mid:mid + k] + " " + text[-k:]
    letters = sum(c.isalpha() for c in text)
    if letters == 0:
        return 0.0, 0.0, 0.0
    ascii_letters = sum(("a" <= c <= "z") or ("A" <= c <= "Z") for c in text)
    words = _WORD.findall(text.lower())
    n = max(len(words), 1)
    stop = sum(w in STOP_WORDS for w in words) / n
    foreign = sum(w in FOREIGN_STOP_WORDS for w in words) / n
    return ascii_letters / letters, stop, foreign


def is_english(text: str, min_ascii: float = 0.9, min_stopwords: float = 0.1) -> bool:
    """Offline English heuristic: mostly ASCII letters, enough English function words, and more of
    them than German/French/Spanish/Italian/Dutch/Portuguese ones."""
    ascii_share, stop_share, foreign_share = english_score(text)
    return ascii_share >= min_ascii and stop_share >= min_stopwords and stop_share > 2 * foreign_share


def content_hash(text: str) -> str:
    """Hash used for exact deduplication (blake2b-128 of the UTF-8 bytes)."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def stable_fraction(key: str) -> float:
    """A deterministic number in [0, 1) from a string (for hash-based splits)."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2.0**64
