"""Pack token documents into fixed-length rows and write/read .npy shards."""

import json
from pathlib import Path

import numpy as np

STATS_FILE = "stats.json"
FORMAT = "nested_jax.packed/1"


def pack(docs: list[list[int]], row_len: int) -> tuple[np.ndarray, int]:
    """Concatenate docs (each already ends with EOS) and cut rows of `row_len`.

    Returns (rows int32 [n_rows, row_len], tokens dropped from the final partial row).
    Consecutive rows are consecutive slices of one token stream.
    """
    stream = np.concatenate([np.asarray(d, dtype=np.int32) for d in docs] or [np.zeros(0, np.int32)])
    total = len(stream)
    n_rows = total // row_len
    return stream[: n_rows * row_len].reshape(n_rows, row_len), total - n_rows * row_len


def write_shards(rows: np.ndarray, out_dir: Path, shard_rows: int) -> list[str]:
    """Write rows as shard_00000.npy, shard_00001.npy, … (shard_rows rows each); return the file names."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for i, start in enumerate(range(0, len(rows), shard_rows)):
        name = f"shard_{i:05d}.npy"
        np.save(out_dir / name, np.ascontiguousarray(rows[start:start + shard_rows]), allow_pickle=False)
        names.append(name)
    return names


def read_stats(root: str | Path) -> dict:
    """The stats.json of a prepared directory, with a clear error if it is not one."""
    root = Path(root)
    path = root / STATS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{root} is not a prepared data directory (no {STATS_FILE}). Fix: run "
            f"`python -m nested_jax.data prepare --preset sample --out {root}` (or --manifest), "
            "or set data_cfg.dataset to 'novels', a preset name, or a manifest file."
        )
    stats = json.loads(path.read_text())
    if stats.get("format") != FORMAT:
        raise ValueError(f"{path} has format {stats.get('format')!r}, expected {FORMAT!r}. Fix: re-run prepare.")
    return stats


def shard_paths(root: str | Path, stats: dict, domain: str, split: str) -> list[Path]:
    """Paths of the shards of one domain and split, checked to exist."""
    info = stats["domains"].get(domain, {}).get(split)
    if info is None:
        have = {d: sorted(s) for d, s in stats["domains"].items()}
        raise KeyError(f"{root} has no {domain!r}/{split!r} data; it has {have}.")
    paths = [Path(root) / domain / split / name for name in info["shards"]]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"Shard missing: {missing[0]} (listed in {Path(root) / STATS_FILE}). Fix: re-run prepare.")
    return paths
