"""The `mid_titan_baseline_smoke` preset for `--config configs/mid_titan_baseline_smoke.py` in a checkout; it lives in
nested_jax/configs/mid_titan_baseline_smoke.py (shipped with the package)."""

from nested_jax.configs.mid_titan_baseline_smoke import *  # noqa: F401,F403
