"""Flax NNX modules: they hold parameters and wire the math from nested_jax.ops."""
