"""The `mid_stage2` preset for `--config configs/mid_stage2.py` in a checkout; it lives in
nested_jax/configs/mid_stage2.py (shipped with the package)."""

from nested_jax.configs.mid_stage2 import *  # noqa: F401,F403
