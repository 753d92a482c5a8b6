"""The JSON every command writes: run header (command line, checkpoint, config summary,
seeds, timing) + metrics."""

from __future__ import annotations

import json
import os
import platform
import sys
import time

import numpy as np

import nested_jax


def _default(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.bool_):
        return bool(x)
    if hasattr(x, "tolist"):  # jax arrays
        return np.asarray(x).tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def checkpoint_info(loaded) -> dict:
    return {"directory": loaded.directory, "step": loaded.step,
            "tokenizer_sha256": loaded.meta.get("tokenizer_sha256"),
            "git_commit": loaded.meta.get("git_commit"),
            "tokens_seen": loaded.meta.get("tokens_seen"),
            "skipped_corrupt_steps": list(loaded.skipped_steps)}


def header(command: str, argv: list[str], *, seeds: dict | None = None) -> dict:
    import jax

    return {"command": command, "command_line": "python -m nested_jax.eval " + " ".join(argv),
            "argv": list(argv), "seeds": seeds or {}, "package_version": nested_jax.__version__,
            "jax_version": jax.__version__, "device": str(jax.devices()[0]),
            "python": platform.python_version(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def write_json(path: str, doc: dict) -> str:
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=2, default=_default)
        f.write("\n")
    os.replace(tmp, path)
    return path


def png_path(json_path: str) -> str:
    """The plot next to an --output JSON; creates the folder (plots are drawn before the JSON
    is written)."""
    root, ext = os.path.splitext(os.path.abspath(json_path))
    os.makedirs(os.path.dirname(root), exist_ok=True)
    return (root if ext == ".json" else json_path) + ".png"


def say(msg: str) -> None:
    print(f"[nested_jax.eval] {msg}", file=sys.stderr, flush=True)
