"""Check every step of a checkpoint folder: structure, metadata, tokenizer, sha256, readability.

    python -m nested_jax.checkpoint verify runs/x [--step N] [--no-read]

Prints one table row per step and exits 1 when any committed step has a problem (leftovers
of killed saves and quarantined `N.corrupt` folders are listed but ignored: training never
resumes from them; nor are steps moved aside by `rollback`).
"""

from __future__ import annotations

import dataclasses
import json
import os

from nested_jax.checkpoint.integrity import SUMS_FILE, inspect_step, step_dirs
from nested_jax.checkpoint.io import CheckpointError, checkpoint_dir
from nested_jax.data.assets import file_sha256

# Keys every training checkpoint's meta carries (written by nested_jax.train.loop).
REQUIRED_META = ("config", "tokenizer_sha256", "package_version", "git_commit", "step",
                 "tokens_seen")
ARRAY_ITEMS = ("params", "opt", "fast")


@dataclasses.dataclass
class TokenizerCheck:
    """The tokenizer a checkpoint's config names, against the sha256 its meta records."""

    name: str | None      # as named in the config (None: the config names none)
    path: str | None      # its .model file (None: not available)
    sha256: str | None    # of that file
    problem: str | None   # None when it is available and matches

    @property
    def cell(self) -> str:
        """The verify table's cell."""
        if self.name is None:
            return "?"
        if self.path is None:
            return f"{self.name}: missing"
        return f"{self.name}: {'MISMATCH' if self.problem else 'ok'}"


def check_tokenizer(meta: dict) -> TokenizerCheck:
    """Find the tokenizer named in meta["config"] and compare its sha256 with the record
    (verify and release; evaluation loads the tokenizer and compares the same hash)."""
    try:
        name = json.loads(meta["config"])["data"]["tokenizer"]
    except (KeyError, TypeError, ValueError):
        return TokenizerCheck(None, None, None, "config has no data.tokenizer")
    from nested_jax.data.tokenizer import tokenizer_path

    try:
        path = str(tokenizer_path(name))
    except (ValueError, OSError) as e:
        return TokenizerCheck(name, None, None,
                              f"tokenizer {name!r} named in the config is not available ({e})")
    got, want = file_sha256(path), meta.get("tokenizer_sha256")
    problem = None if got == want else (
        f"tokenizer {name!r} ({path}) has sha256 {got[:12]}…, the checkpoint was trained with "
        f"{str(want)[:12]}…")
    return TokenizerCheck(name, path, got, problem)


def read_arrays(item_dir: str) -> tuple[int, int]:
    """Restore every array of an Orbax item onto the CPU; (number of values, non-finite ones)."""
    import jax
    import numpy as np
    import orbax.checkpoint as ocp

    ck = ocp.StandardCheckpointer()
    tree = ck.metadata(item_dir).item_metadata.tree
    dev = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=dev), tree)
    out = ck.restore(item_dir, target)
    ck.close()
    n, bad = 0, 0
    for x in jax.tree.leaves(out):
        a = np.asarray(x)
        n += a.size
        if np.issubdtype(a.dtype, np.floating):
            bad += int(a.size - np.isfinite(a).sum())
    return n, bad


def verify_step(directory: str, step: int, *, read: bool = True) -> dict:
    """One table row: {"step", "status", "items", "meta", "tokenizer", "sha256", "read",
    "problems"}."""
    path = os.path.join(directory, str(step))
    rep = inspect_step(path)
    problems = list(rep.problems)
    row = {"step": str(step), "items": ",".join(rep.items) or "-"}
    meta = rep.meta
    if meta is None:
        row["meta"] = "unreadable" if "meta" in rep.items else "missing"
        row["tokenizer"] = "?"
    else:
        missing = [k for k in REQUIRED_META if k not in meta]
        if missing:
            problems.append(f"meta lacks {', '.join(missing)}")
        if "step" in meta and meta["step"] != step:
            problems.append(f"meta says step {meta['step']} but the folder is step {step}")
        row["meta"] = "complete" if not missing else f"lacks {len(missing)}"
        if "config" in meta:
            try:
                json.loads(meta["config"])
            except (TypeError, ValueError):
                problems.append("meta.config is not valid JSON")
            tc = check_tokenizer(meta)
            row["tokenizer"] = tc.cell
            if tc.problem:
                problems.append(tc.problem)
        else:
            row["tokenizer"] = "?"
    if rep.has_sums:
        row["sha256"] = (f"ok ({rep.hashed_files} files)" if not any(
            "sha256" in p or "file " in p for p in rep.problems) else "MISMATCH")
    else:
        row["sha256"] = f"not recorded (no {SUMS_FILE})"
    row["read"] = "skipped"
    if read and not rep.problems:
        counts = []
        try:
            for item in ARRAY_ITEMS:
                if item in rep.items:
                    n, bad = read_arrays(os.path.join(path, item))
                    counts.append(f"{item} {n:,}")
                    if bad:
                        problems.append(f"{item} holds {bad} non-finite values")
            if "data" in rep.items:
                for name in os.listdir(os.path.join(path, "data")):
                    if name.endswith(".json"):
                        with open(os.path.join(path, "data", name)) as f:
                            json.load(f)
            row["read"] = "ok: " + ", ".join(counts) if counts else "ok"
        except Exception as e:  # noqa: BLE001 - reported in the table
            row["read"] = "FAILED"
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            problems.append(f"cannot read the arrays: {type(e).__name__}: {first}")
    row["status"] = "OK" if not problems else "FAIL"
    row["problems"] = problems
    return row


def format_table(rows: list[dict], cols: tuple[str, ...]) -> str:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols),
             "  ".join("-" * widths[c] for c in cols)]
    for r in rows:
        lines.append("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in cols).rstrip())
    return "\n".join(lines)


def verify(path: str, *, step: int | None = None, read: bool = True, out=print) -> int:
    """Print the table; return 0 when every committed step (or `step`) is intact, else 1."""
    directory = checkpoint_dir(path)
    if not os.path.isdir(directory):
        raise CheckpointError(f"no checkpoint folder at {path}. Fix: pass a training --workdir "
                              "or its checkpoints/ folder.")
    found = step_dirs(directory)
    steps = found["steps"] if step is None else [step]
    if step is not None and step not in found["steps"]:
        raise CheckpointError(f"step {step} not found in {directory}; available: {found['steps']}.")
    rows = [verify_step(directory, s, read=read) for s in steps]
    for name in found["tmp"]:
        rows.append({"step": name.split(".")[0], "status": "INCOMPLETE", "items": "-",
                     "meta": "-", "tokenizer": "-", "sha256": "-",
                     "read": "ignored: killed mid-write", "problems": []})
    for name in found["rolled_back"]:
        rows.append({"step": name, "status": "ROLLED BACK", "items": "-", "meta": "-",
                     "tokenizer": "-", "sha256": "-", "read": "ignored: moved aside by rollback",
                     "problems": []})
    for name in found["quarantined"]:
        rows.append({"step": name, "status": "QUARANTINED", "items": "-", "meta": "-",
                     "tokenizer": "-", "sha256": "-", "read": "ignored: moved aside as corrupt",
                     "problems": []})
    out(f"checkpoint folder: {directory}")
    if not rows:
        raise CheckpointError(f"no checkpoints in {directory} (no step folders). Fix: pass the "
                              "--workdir of a run that saved a checkpoint, or its checkpoints/ "
                              "folder.")
    out(format_table(rows, ("step", "status", "items", "meta", "tokenizer", "sha256", "read")))
    failed = [r for r in rows if r["status"] == "FAIL"]
    for r in failed:
        for p in r["problems"]:
            out(f"  step {r['step']}: {p}")
    if not steps:
        out("no committed checkpoint step.")
        return 1
    good = [r["step"] for r in rows if r["status"] == "OK"]
    out(f"{len(good)} of {len(steps)} steps intact" + (
        f"; training resumes from step {good[-1]}." if good else "."))
    return 1 if failed else 0
