"""Read and write the safetensors format without loading whole files.

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}, then the
raw little-endian tensor bytes (offsets relative to the end of the header). Reading returns
one tensor at a time, read from its own byte range (bfloat16 through ml_dtypes), so
converting a model needs about one tensor of extra host memory, not the whole file.
A sharded checkpoint is `model.safetensors.index.json` {"weight_map": {name: file}}.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "F64": np.float64,
          "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
          "BOOL": np.bool_}
NAMES = {np.dtype(v): k for k, v in DTYPES.items()}
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


class SafetensorsError(ValueError):
    """A missing, truncated or malformed safetensors file."""


class SafetensorsFile:
    """One .safetensors file, memory-mapped: `names`, `shape(name)`, `get(name)`."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise SafetensorsError(f"weights file {self.path} is missing.")
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise SafetensorsError(f"{self.path} is truncated ({size} bytes: no header).")
            (n,) = struct.unpack("<Q", raw)
            if 8 + n > size:
                raise SafetensorsError(f"{self.path} is truncated: its header needs {8 + n} "
                                       f"bytes, the file has {size}.")
            try:
                header = json.loads(f.read(n))
            except ValueError as e:
                raise SafetensorsError(f"{self.path} has a corrupt header ({e}).") from None
        self.metadata = header.pop("__metadata__", {}) or {}
        self.header, self.start = header, 8 + n
        end = max((v["data_offsets"][1] for v in header.values()), default=0)
        if self.start + end > size:
            raise SafetensorsError(
                f"{self.path} is truncated: its tensors need {self.start + end} bytes, the file "
                f"has {size}. Fix: download the shard again.")
        for name, v in header.items():
            if v["dtype"] not in DTYPES:
                raise SafetensorsError(f"{self.path}: tensor {name} has dtype {v['dtype']}, "
                                       f"which this reader does not know ({sorted(DTYPES)}).")

    @property
    def names(self) -> list[str]:
        return list(self.header)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.header[name]["shape"])

    def get(self, name: str) -> np.ndarray:
        """The tensor, read from its byte range alone (one positioned read: no memory map, so
        the file's pages do not stay resident in this process once the tensor is dropped)."""
        v = self.header[name]
        lo, hi = v["data_offsets"]
        with open(self.path, "rb") as f:
            f.seek(self.start + lo)
            raw = f.read(hi - lo)
        if len(raw) != hi - lo:
            raise SafetensorsError(f"{self.path} is truncated inside tensor {name}.")
        return np.frombuffer(raw, DTYPES[v["dtype"]]).reshape(v["shape"])


class SafetensorsModel:
    """All tensors of a model folder: `model.safetensors` or the shards of its index."""

    def __init__(self, folder: str | os.PathLike):
        folder = Path(folder)
        index = folder / INDEX_FILE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError) as e:
                raise SafetensorsError(f"{index} is not a safetensors index ({e}).") from None
            files = {f: SafetensorsFile(folder / f) for f in sorted(set(weight_map.values()))}
            self.where = {}
            for name, f in weight_map.items():
                if name not in files[f].header:
                    raise SafetensorsError(f"{index} puts {name} in {f}, which lacks it "
                                           "(a shard from another download?).")
                self.where[name] = files[f]
        elif (folder / SINGLE_FILE).is_file():
            one = SafetensorsFile(folder / SINGLE_FILE)
            self.where = {n: one for n in one.names}
        else:
            raise SafetensorsError(
                f"no weights in {folder}: neither {SINGLE_FILE} nor {INDEX_FILE}. Fix: pass a "
                "Hugging Face model folder with safetensors weights (PyTorch .bin files are not "
                "read: convert them with transformers' save_pretrained(safe_serialization=True)).")
        self.files = sorted({f.path for f in self.where.values()})

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def get(self, name: str) -> np.ndarray:
        if name not in self.where:
            raise SafetensorsError(f"tensor {name} is missing from the weights "
                                   f"({', '.join(str(p.name) for p in self.files)}).")
        return self.where[name].get(name)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.where[name].shape(name)


def save_file(tensors: dict[str, np.ndarray], path: str | os.PathLike,
              metadata: dict[str, str] | None = None) -> None:
    """Write `tensors` (name → array) as one safetensors file, names in sorted order, the
    header padded with spaces to a multiple of 8 bytes (as the reference writer does)."""
    header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    names = sorted(tensors)
    for name in names:
        a = tensors[name]
        if a.dtype not in NAMES:
            raise SafetensorsError(f"cannot write {name} of dtype {a.dtype}.")
        header[name] = {"dtype": NAMES[a.dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name in names:
            f.write(np.ascontiguousarray(tensors[name]).astype(tensors[name].dtype.newbyteorder("<"),
                                                               copy=False).tobytes())
