"""What a checkpoint folder holds on disk and whether a step is intact: the folder-name
marks (committed steps, leftovers of killed saves, steps moved aside as corrupt or rolled
back), the sha256 record of every file of a step (`nested_jax_sha256.json`), the quick
inspection of one step against it, and the names steps are moved aside to. The policies
that use them (which step to read, what to move aside, when sums are written) are the
Checkpointer's, in nested_jax/checkpoint/io.py.
"""

from __future__ import annotations

import dataclasses
import json
import os

from nested_jax.data.assets import file_sha256

SUMS_FILE = "nested_jax_sha256.json"
TMP_MARK = ".orbax-checkpoint-tmp"
QUARANTINE_MARK = ".corrupt"
ROLLBACK_MARK = ".rolled_back"
# Orbax rewrites these after our sums are taken (commit timestamp, commit marker).
UNHASHED = {"_CHECKPOINT_METADATA", "commit_success.txt", SUMS_FILE}
REQUIRED_ITEMS = ("params", "meta")
META_FILE = os.path.join("meta", "metadata")


def hash_tree(root: str, skip_top: set[str] | frozenset = frozenset()) -> dict[str, dict]:
    """{relative posix path: {"sha256", "bytes"}} of every file under root (sorted)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            if rel in skip_top:
                continue
            out[rel] = {"sha256": file_sha256(full), "bytes": os.path.getsize(full)}
    return out


def step_dirs(directory: str) -> dict[str, list]:
    """Entries of a checkpoint folder: committed steps, leftovers of killed saves, quarantined."""
    out: dict[str, list] = {"steps": [], "tmp": [], "quarantined": [], "rolled_back": []}
    if not os.path.isdir(directory):
        return out
    for name in sorted(os.listdir(directory)):
        full = os.path.join(directory, name)
        if not os.path.isdir(full):
            continue
        if name.isdigit():
            out["steps"].append(int(name))
        elif TMP_MARK in name:
            out["tmp"].append(name)
        elif QUARANTINE_MARK in name:
            out["quarantined"].append(name)
        elif ROLLBACK_MARK in name:
            out["rolled_back"].append(name)
    out["steps"].sort()
    return out


@dataclasses.dataclass
class StepReport:
    """What a quick inspection of one step directory found."""

    path: str
    problems: list[str]
    items: list[str]
    meta: dict | None
    hashed_files: int  # files whose sha256 matched the record (0 = no record)
    has_sums: bool

    @property
    def ok(self) -> bool:
        return not self.problems


def inspect_step(path: str, *, check_hashes: bool | str = True,
                 hash_items: tuple[str, ...] | None = None) -> StepReport:
    """Structure (Orbax step marker, required items, readable meta JSON) and, when the step
    carries a sha256 record, every file's size and hash (`hash_items`: hash only the files
    of these items, sizes for the rest). check_hashes="changed" hashes only the files
    modified after the record was written (the resume check;
    nested_jax/checkpoint/io.py)."""
    problems: list[str] = []
    items: list[str] = []
    meta = None
    hashed, has_sums = 0, False
    if not os.path.isdir(path):
        return StepReport(path, ["step directory is missing"], [], None, 0, False)
    items = sorted(e for e in os.listdir(path) if os.path.isdir(os.path.join(path, e)))
    if not os.path.isfile(os.path.join(path, "_CHECKPOINT_METADATA")):
        problems.append("no _CHECKPOINT_METADATA (not a complete Orbax step)")
    for item in REQUIRED_ITEMS:
        if item not in items:
            problems.append(f"item {item}/ is missing")
    if "meta" in items:
        try:
            with open(os.path.join(path, META_FILE)) as f:
                meta = json.load(f)
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            problems.append(f"meta is unreadable ({type(e).__name__}: {str(e)[:120]})")
            meta = None
    sums_path = os.path.join(path, SUMS_FILE)
    if os.path.isfile(sums_path):
        has_sums = True
        try:
            with open(sums_path) as f:
                record = json.load(f)["files"]
            recorded_at = os.path.getmtime(sums_path)
        except (OSError, ValueError, KeyError, TypeError) as e:
            problems.append(f"{SUMS_FILE} is unreadable ({type(e).__name__})")
            record = {}
        for rel, want in sorted(record.items()):
            full = os.path.join(path, *rel.split("/"))
            if not os.path.isfile(full):
                problems.append(f"file {rel} is missing")
            elif os.path.getsize(full) != want["bytes"]:
                problems.append(f"file {rel} has {os.path.getsize(full)} bytes, "
                                f"{want['bytes']} were written (truncated or overwritten)")
            elif (check_hashes and (hash_items is None or rel.split("/")[0] in hash_items)
                  and (check_hashes != "changed" or os.path.getmtime(full) > recorded_at)
                  and file_sha256(full) != want["sha256"]):
                problems.append(f"file {rel} does not match its recorded sha256 (corrupt)")
            else:
                hashed += 1
    return StepReport(path, problems, items, meta, hashed, has_sums)


def quarantine_name(directory: str, step: int, mark: str = QUARANTINE_MARK) -> str:
    base = os.path.join(directory, f"{step}{mark}")
    cand, k = base, 1
    while os.path.exists(cand):
        cand, k = f"{base}.{k}", k + 1
    return cand
