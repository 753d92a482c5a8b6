"""The `pilot_smoke` preset for `--config configs/pilot_smoke.py` in a checkout; it lives in
nested_jax/configs/pilot_smoke.py (shipped with the package)."""

from nested_jax.configs.pilot_smoke import *  # noqa: F401,F403
