"""Shortcuts to the presets in nested_jax/configs, for `--config configs/<name>.py` and
`from configs import <name>` in a checkout (the package ships only nested_jax)."""
