"""The `paper_760m` preset for `--config configs/paper_760m.py` in a checkout; it lives in
nested_jax/configs/paper_760m.py (shipped with the package)."""

from nested_jax.configs.paper_760m import *  # noqa: F401,F403
