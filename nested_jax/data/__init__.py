"""Data: vendored corpora, SentencePiece tokenizers, the `prepare` pipeline and the Grain loader.

Import submodules directly (`from nested_jax.data import loader`); this package
imports nothing heavy on its own.
"""
