"""A tiny model of any variant and an eval-readable checkpoint of it, without training
(random init; what generation and perplexity tests need in a second instead of a train run)."""

from __future__ import annotations

import os

from configs import smoke


def tiny_config(variant: str, seq_len: int = 64):
    """Smoke preset shrunk: width 32, 1 layer, 2 heads, the shipped 2k tokenizer; segments of
    16 tokens, CMS periods 16/32 with a strong teach signal (memorisation visibly acts)."""
    c = smoke.get_config()
    m = c.model
    m.variant, m.vocab_size = variant, 2048  # novels_2k
    m.d_model, m.n_layers, m.n_heads = 32, 1, 2
    m.titans.chunk_size = 8  # read blocks: titans 8, hope_hybrid 8, hope 16 (= segment)
    m.online.segment_len = 16
    m.cms.names, m.cms.periods = ("fast", "mid"), (16, 32)
    m.cms.optimizers, m.cms.lrs = ("precond", "precond"), (1e-2, 1e-2)
    m.online.teach_scale = 1.0
    m.online.unroll_segments = 1  # one compiled segment body (tests compile, not run, long)
    c.train.seq_len = seq_len
    return c


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
