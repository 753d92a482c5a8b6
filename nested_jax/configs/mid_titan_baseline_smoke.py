"""CPU smoke of the Titans baseline: width 128, 2 layers, 4 heads, seq 64 (see mid_titan_baseline.py)."""

from nested_jax.configs import mid_titan_baseline, repro


def get_config():
    c = repro.cpu_smoke(mid_titan_baseline.get_config(), steps=60)
    c.optim.lr = 1e-3
    return c
