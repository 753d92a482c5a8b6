"""Small shared builders for tests."""

import ml_collections


def tiny_model_config(**overrides) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict(dict(
        variant="transformer", vocab_size=64, d_model=32, n_layers=2, n_heads=4, head_dim=0,
        d_ff=0, rope_base=10000.0, attention_window=0, tie_embeddings=True, init_std=0.02,
        norm_eps=1e-6, dtype="float32", remat=False,
    ))
    c.update(overrides)
    return c
