"""The reproduction's configs/mid_stage2.yaml: hope_hybrid, 768 wide, 18 layers, 12 heads,
seq 2048, batch 8, 100 steps, AdamW 3e-5, bf16, teach 0.05 / clip 5.0, schedule 20/80/40,
CMS 1/4/32/128 → 128/256/512/1024 (S = 128, every level read), inner gradient step gd lr 1e-2
(the reproduction's Adam-like lr 4e-4; TITAN level lr 8e-4 n/a)."""

from nested_jax.configs import repro


def get_config():
    c = repro.base("hope_hybrid", seed=3401)
    repro.shape(c, 768, 18, 12)
    c.train.seq_len = 2048
    c.train.batch_size = 8
    c.train.steps = 100
    c.train.log_every = 10
    repro.cms_levels(c, (1, 4, 32, 128), lr=1e-2, segment_len=128, seq_len=2048)
    repro.teach(c, 0.05, 5.0, 20, 80, 40)
    c.model.remat = True
    c.optim.lr = 3e-5
    c.optim.warmup_steps = 10
    c.checkpoint.every_steps = 100
    c.eval.every_steps = 50
    return c
