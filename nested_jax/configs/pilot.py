"""The reproduction's main "pilot" run (configs/pilot.yaml): hope_hybrid, 512 wide, 12 layers,
8 heads, seq 2048, Muon 2.5e-4 (wd 0.02, momentum 0.95), teach scale 0.10 / clip 5.0,
schedule warm-up 2000 / decay start 120000 / duration 20000, surprise threshold 0.02,
CMS 1/4/32/128 tokens → 128/256/512/1024 (S = 128: every level read, see configs/repro.py);
the reproduction's Adam-like inner step (lr 3e-4) is the paper's gradient step here (`gd`,
lr 1e-2: a smoke sweep of 1e-2…1e-1 at teach scale 0.1 was flat within 0.003 nats).

Paper variants: --config.model.variant=hope (self-modifying Titans → CMS) or hope_attention.
The reproduction's "TITAN level" (period 8, lr 6e-4) was a teach-signal-driven MLP; here the
hybrid uses the real Titans memory (chunk 16), which learns from its own associative loss.
"""

from nested_jax.configs import repro


def get_config():
    c = repro.base("hope_hybrid", seed=1337)
    repro.shape(c, 512, 12, 8)
    c.train.seq_len = 2048
    c.train.batch_size = 6
    c.train.steps = 246_667
    c.train.log_every = 50
    repro.cms_levels(c, (1, 4, 32, 128), lr=1e-2, segment_len=128, seq_len=2048)
    repro.teach(c, 0.10, 5.0, 2000, 120_000, 20_000, surprise=0.02)
    c.model.titans.chunk_size = 16
    c.model.remat = True
    # The 16 online segments unrolled (the default unrolls up to 8): on a GPU an unrolled
    # segment step keeps no per-segment loop state and shares each layer's weight slices
    # (H100 compile, device ops per step: hope 41,305 → 24,684, hope_attention 36,130 →
    # 23,390, hope_hybrid 54,292 → 37,135, and ~40 % fewer bytes; benchmarks/RESULTS.md) for
    # a compile of minutes (2-core VM: 145 → 475 s, 34 → 349 s, 83 → 767 s; kept on disk on a
    # GPU: train.compile_cache). Around XLA's chunk scans (the CPU, or a kernel=xla run) the
    # segments stay a loop (model/online.py segment_unroll).
    c.model.online.unroll_segments = 16
    c.optim.name, c.optim.lr, c.optim.weight_decay, c.optim.momentum = "muon", 2.5e-4, 0.02, 0.95
    c.optim.b1, c.optim.b2 = 0.9, 0.999
    c.checkpoint.every_steps = 1000
    c.eval.every_steps = 1000
    return c
