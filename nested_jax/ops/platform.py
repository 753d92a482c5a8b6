"""The platform a program is being built for (which can differ from the backend running it)."""

from __future__ import annotations

import jax


def target_platform() -> str:
    """The platform the program being built is for: the default device's (a compile-only
    GPU under `jax.default_device`, as benchmarks/cost_model.py does), else the backend's."""
    dev = jax.config.jax_default_device
    platform = getattr(dev, "platform", None) or jax.default_backend()
    return "gpu" if platform in ("gpu", "cuda", "rocm") else platform
