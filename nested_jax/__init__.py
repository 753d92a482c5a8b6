"""nested_jax: HOPE (self-modifying Titans + CMS), Titans and Transformer++ in JAX/Flax."""

import sys as _sys

if _sys.version_info < (3, 12):  # pragma: no cover - exercised by tests via subprocess
    raise RuntimeError(
        f"nested_jax needs Python >= 3.12 (jax >= 0.11 does), but this is Python "
        f"{_sys.version.split()[0]} at {_sys.executable}. Fix: run `bash launch/setup.sh`, "
        "which finds a 3.12+ interpreter and builds .venv, then use .venv/bin/python."
    )

__version__ = "0.1.0"
