"""Built-in manifests over the vendored data: 'novels' (default), 'sample' (< 2 min) and 'full'."""

from nested_jax.data.sources import Manifest

NOVELS = {"domain": "novels", "path": "assets:novels100/novels.jsonl.xz", "format": "jsonl", "field": "text",
          "split": {"field": "split"}, "min_chars": 1000}
WIKIPEDIA = {"domain": "wikipedia", "path": "assets:wikitext2/valid.txt.xz", "format": "wikitext",
             "split": {"valid_fraction": 0.2}, "min_chars": 200}
MATH_TRAIN = {"domain": "math", "path": "assets:gsm8k/train.jsonl.xz", "format": "jsonl",
              "field": ["question", "answer"], "split": "train", "min_chars": 50}
MATH_VALID = dict(MATH_TRAIN, path="assets:gsm8k/test.jsonl.xz", split="valid")
CODE = {"domain": "code", "path": "stdlib:", "format": "dir", "glob": "**/*.py",
        "split": {"valid_fraction": 0.05}, "english": False, "min_chars": 200, "max_chars": 200_000}


def _manifest(name: str, sources: list[dict], **kw) -> dict:
    return {"name": name, "sources": sources, **kw}


PRESETS = {
    # The vendored novels only: train = 93 novels, valid = 5 (by the record's `split` field).
    "novels": _manifest("novels", [dict(NOVELS, weight=1.0)]),
    # A small four-domain mixture that prepares in well under 2 minutes.
    "sample": _manifest("sample", [
        dict(NOVELS, weight=0.6, limit=8),
        dict(WIKIPEDIA, weight=0.15),
        dict(MATH_TRAIN, weight=0.1, limit=2000),
        dict(MATH_VALID, weight=0.1, limit=300),
        dict(CODE, weight=0.15, limit=150),
    ]),
    # All vendored text: novels, WikiText-2 valid, GSM8K, and the Python standard library.
    "full": _manifest("full", [
        dict(NOVELS, weight=0.7),
        dict(WIKIPEDIA, weight=0.1),
        dict(MATH_TRAIN, weight=0.1),
        dict(MATH_VALID, weight=0.1),
        dict(CODE, weight=0.1),
    ]),
}


def get_preset(name: str) -> Manifest:
    """The built-in manifest `name`; a clear error lists the presets otherwise."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; presets are {sorted(PRESETS)}. Fix: use one of them (or pass a manifest path).")
    return Manifest.from_dict(PRESETS[name])
