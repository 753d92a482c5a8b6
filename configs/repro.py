"""The `repro` preset for `--config configs/repro.py` in a checkout; it lives in
nested_jax/configs/repro.py (shipped with the package)."""

from nested_jax.configs.repro import *  # noqa: F401,F403
