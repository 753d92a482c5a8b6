"""The `default` preset for `--config configs/default.py` in a checkout; it lives in
nested_jax/configs/default.py (shipped with the package)."""

from nested_jax.configs.default import *  # noqa: F401,F403
