"""Offline lm-evaluation-harness tasks over the vendored data (YAML files here, loaders in
utils.py); `python -m nested_jax.lmeval` puts this folder on the harness's include path."""
