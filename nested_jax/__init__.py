"""nested_jax: HOPE (self-modifying Titans + CMS), Titans and Transformer++ in JAX/Flax."""

import sys as _sys

if _sys.version_info < (3, 12):  # pragma: no cover - exercised by tests via subprocess
    raise RuntimeError(
        f"nested_jax needs Python >= 3.12 (jax >= 0.11 does), but this is Python "
        f"{_sys.version.split()[0]} at {_sys.executable}. Fix: run `bash launch/setup.sh`, "
        "which finds a 3.12+ interpreter and builds .venv, then use .venv/bin/python."
    )

__version__ = "0.1.0"


def _cpu_only_when_no_gpu() -> None:
    """With a CUDA plugin installed (the gpu-aot extra) on a machine without an NVIDIA GPU,
    jax's first backend start prints the plugin's failed initialisation as a long traceback
    before falling back to the CPU. Where no NVIDIA device node exists and JAX_PLATFORMS is
    unset, ask for the CPU directly (same result, no noise); compile-only GPU devices
    (benchmarks/gpu_aot.py) work either way."""
    import glob
    import importlib.util
    import os

    if os.environ.get("JAX_PLATFORMS") or glob.glob("/dev/nvidia[0-9]*"):
        return
    try:
        found = any(importlib.util.find_spec(m) for m in ("jax_plugins.xla_cuda13",
                                                           "jax_plugins.xla_cuda12"))
    except (ImportError, ValueError):
        found = False
    if found:
        os.environ["JAX_PLATFORMS"] = "cpu"
        if "jax" in _sys.modules:  # imported before us: its config has read the environment
            _sys.modules["jax"].config.update("jax_platforms", "cpu")


_cpu_only_when_no_gpu()
