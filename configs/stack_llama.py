"""The `stack_llama` preset for `--config configs/stack_llama.py[:WORKDIR]` in a checkout; it
lives in nested_jax/configs/stack_llama.py (shipped with the package)."""

from nested_jax.configs.stack_llama import *  # noqa: F401,F403
