"""The `mid_titan_baseline` preset for `--config configs/mid_titan_baseline.py` in a checkout; it lives in
nested_jax/configs/mid_titan_baseline.py (shipped with the package)."""

from nested_jax.configs.mid_titan_baseline import *  # noqa: F401,F403
