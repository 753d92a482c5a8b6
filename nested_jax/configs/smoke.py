"""Smoke preset: a tiny model on the vendored novels; a few minutes on a CPU.

Any variant: --config.model.variant=transformer|titans|hope|hope_attention|hope_hybrid.
"""

from nested_jax.configs import default


def get_config():
    c = default.get_config()
    c.model.d_model = 128
    c.model.n_layers = 2
    c.model.n_heads = 4
    c.model.titans.chunk_size = 16
    c.model.selfmod.chunk_size = 8
    c.model.selfmod.chunk_size_mem = 32
    c.model.online.segment_len = 32  # 4 segments per 128-token sequence
    c.model.cms.names = ("fast", "mid", "slow")
    c.model.cms.periods = (32, 64, 96)  # updates per 128-token sequence: 4, 2, 1 (each read)
    c.model.cms.optimizers = ("gd", "gd", "gd")  # the paper's gradient step (NL Eq. 71)
    c.model.cms.lrs = (1e-2, 1e-2, 1e-2)  # 1e-2, 3e-2, 1e-1 ended within 0.003 nats (300 steps)
    c.data.tokenizer = "novels_2k"  # small shipped SentencePiece vocabulary
    c.train.steps = 300
    c.train.batch_size = 16
    c.train.seq_len = 128
    c.train.log_every = 10
    c.optim.lr = 3e-3
    c.optim.warmup_steps = 30
    c.optim.weight_decay = 0.0
    c.checkpoint.every_steps = 100
    c.eval.every_steps = 100
    c.eval.num_batches = 4
    c.eval.batch_size = 16
    return c
