"""CPU smoke of the pilot (the reproduction's configs/pilot_smoke.yaml): hope_hybrid, width 128,
2 layers, 4 heads, seq 64, batch 4, 32k vocabulary, CMS 1/4/16 tokens → 32/32/32 (S = 32: two
segments per sequence, each level updated once mid-sequence and read by the second half; S = 16
gives 16/16/32 and four segments at ~25% lower throughput), inner gradient step (gd, lr 1e-2;
the reproduction's Adam-like lr was 5e-4), AdamW 3e-4. This is the shape of the speed comparison with the reproduction
(`python -m benchmarks.train_throughput`)."""

from nested_jax.configs import repro


def get_config():
    c = repro.cpu_smoke(repro.base("hope_hybrid", seed=1234), steps=60)
    repro.cms_levels(c, (1, 4, 16), lr=1e-2, segment_len=32, seq_len=64)
    repro.teach(c, 1.0, 0.0, 0, 0, 0)  # the smoke config used the defaults: scale 1, no clip
    c.optim.lr = 3e-4
    return c
