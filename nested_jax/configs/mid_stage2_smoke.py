"""CPU-sized mid_stage2 smoke. The reproduction's configs/mid_stage2_smoke.yaml is 512 wide,
12 layers, 8 heads (GPU): teach 0.2 / clip 2.0, CMS 1/4/16 (→ 16/16/32 here,
every level read), inner lr 3e-4 (Adam-like; gd lr 1e-2 here), AdamW 1e-4, 60 steps.
Same recipe here at width 128, 2 layers (restore its shape with
--config.model.d_model=512 --config.model.n_layers=12 --config.model.n_heads=8)."""

from nested_jax.configs import repro


def get_config():
    c = repro.cpu_smoke(repro.base("hope_hybrid", seed=777), steps=60)
    repro.cms_levels(c, (1, 4, 16), lr=1e-2, segment_len=16, seq_len=64)
    repro.teach(c, 0.2, 2.0, 0, 0, 0)
    c.optim.lr = 1e-4
    return c
