"""XLA's persistent compilation cache for training runs (`train.compile_cache`).

A pilot-sized online step compiles for minutes on a GPU (its 16 segments unrolled:
configs/pilot.py); with the cache a rerun, a resume after preemption or a second run of the
same program loads the compiled step from disk instead.

  "auto"  on a GPU: $JAX_COMPILATION_CACHE_DIR if set, else $XDG_CACHE_HOME/nested_jax/xla
          (~/.cache/nested_jax/xla); on a CPU: not set here (its programs compile in
          seconds; jax itself still honours $JAX_COMPILATION_CACHE_DIR)
  ""      off
  a path  that directory, on any platform
"""

from __future__ import annotations

import os

import jax


def directory(setting: str, platform: str) -> str | None:
    """The cache directory `setting` means on `platform` ("gpu", "cpu", ...), or None."""
    if setting != "auto":
        return os.path.abspath(os.path.expanduser(setting)) if setting else None
    if platform != "gpu":
        return None
    env = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "nested_jax", "xla")


def enable(setting: str) -> str | None:
    """Point jax's persistent compilation cache at `directory(setting, backend)` (before the
    first compile); returns the directory, or None when off. A directory that cannot be
    created leaves the cache off with a warning: a run never fails for want of a cache."""
    path = directory(setting, jax.default_backend())
    if path is None:
        return None
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        print(f"[nested_jax] warning: train.compile_cache={setting!r}: cannot create {path} "
              f"({e}); compiling without a cache. Fix: --config.train.compile_cache=DIR with a "
              f"writable DIR, or '' to silence this.", flush=True)
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    return path
