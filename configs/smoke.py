"""The `smoke` preset for `--config configs/smoke.py` in a checkout; it lives in
nested_jax/configs/smoke.py (shipped with the package)."""

from nested_jax.configs.smoke import *  # noqa: F401,F403
