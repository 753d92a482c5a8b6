"""The `pilot` preset for `--config configs/pilot.py` in a checkout; it lives in
nested_jax/configs/pilot.py (shipped with the package)."""

from nested_jax.configs.pilot import *  # noqa: F401,F403
