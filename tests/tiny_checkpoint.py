"""A tiny model of any variant and an eval-readable checkpoint of it, without training
(random init; what generation and perplexity tests need in a second instead of a train run)."""

from __future__ import annotations

import os

from tests.tiny import tiny_config as _tiny_config


def tiny_config(variant: str, seq_len: int = 64):
    """Smoke preset shrunk: width 32, 1 layer, 2 heads, the shipped 2k tokenizer; segments of
    16 tokens, CMS periods 16/32 with a strong teach signal (memorisation visibly acts)."""
    return _tiny_config(
        variant, vocab_size=2048,  # novels_2k
        d_model=32, n_layers=1, n_heads=2,
        titans=dict(chunk_size=8),  # read blocks: titans 8, hope_hybrid 8, hope 16 (= segment)
        online=dict(segment_len=16, teach_scale=1.0),
        cms=dict(names=("fast", "mid"), periods=(16, 32), optimizers=("precond", "precond"),
                 lrs=(1e-2, 1e-2)),
        train=dict(seq_len=seq_len))


def write_checkpoint(config, workdir: str, *, seed: int = 0, step: int = 3):
    """Save random-init parameters + the metadata evaluation reads as step `step` of
    `workdir`; returns (Functional, params)."""
    from nested_jax.checkpoint import Checkpointer
    from nested_jax.data.tokenizer import load_tokenizer
    from nested_jax.model.lm import init_params

    fn, params = init_params(config.model, seed)
    tok = load_tokenizer(config.data.tokenizer)
    ck = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    ck.save(step, params=params, meta={"config": config.to_json_best_effort(), "step": step,
                                       "tokenizer_sha256": tok.sha256})
    ck.manager.close()
    return fn, params
