"""The `paper_1p3b` preset for `--config configs/paper_1p3b.py` in a checkout; it lives in
nested_jax/configs/paper_1p3b.py (shipped with the package)."""

from nested_jax.configs.paper_1p3b import *  # noqa: F401,F403
