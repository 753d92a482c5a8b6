"""The platform a program is being built for (which can differ from the backend running it)."""

from __future__ import annotations

import jax


def target_platform() -> str:
    """The platform the program being built is for: the default device's (a compile-only
    GPU under `jax.default_device`, as benchmarks/cost_model.py does), else the backend's.
    "gpu" means an NVIDIA (CUDA) GPU, what the Pallas kernels lower for; a ROCm GPU is
    "rocm" (its kernels would run in Pallas's interpreter: the memories take XLA's scans)."""
    dev = jax.config.jax_default_device
    platform = getattr(dev, "platform", None) or jax.default_backend()
    if platform not in ("gpu", "cuda", "rocm"):
        return platform
    device = dev if hasattr(dev, "client") else jax.devices()[0]
    version = str(getattr(getattr(device, "client", None), "platform_version", "")).lower()
    return "rocm" if platform == "rocm" or "rocm" in version else "gpu"
