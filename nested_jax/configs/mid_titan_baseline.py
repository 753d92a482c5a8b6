"""The reproduction's configs/mid_titan_baseline.yaml as the real Titans baseline: 768 wide,
18 layers, 12 heads, batch 4, 220 steps, AdamW 1e-5, bf16. Its "TITAN memory" was a
teach-signal-driven MLP (period 16); here it is the Titans neural memory (MAG, deep MLP
memory, per-token gates, momentum, forgetting, chunk 16), so the teach-signal settings
(0.10 / 4.0 / 60-140-80, surprise 0.02) have nothing to drive and are not used."""

from nested_jax.configs import repro


def get_config():
    c = repro.base("titans", seed=451)
    repro.shape(c, 768, 18, 12)
    c.train.seq_len = 2048
    c.train.batch_size = 4
    c.train.steps = 220
    c.train.log_every = 20
    c.model.titans.mode = "mag"
    c.model.titans.memory = "mlp"
    c.model.titans.chunk_size = 16
    c.model.remat = True
    c.optim.lr = 1e-5
    c.optim.warmup_steps = 20
    c.checkpoint.every_steps = 100
    c.eval.every_steps = 110
    return c
