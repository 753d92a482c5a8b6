"""Shared pieces of the presets that mirror the PyTorch reproduction's runs
(kmccleary3301/nested_learning configs; values from its YAML files).

CMS periods. The reproduction updates its levels every 1/4/32/128 tokens inside a token-
by-token loop, and every one of those updates is read by later tokens of the same
sequence. Here a period must be a multiple of the online segment length S (one jitted
scan step per segment), and with per-sequence reset a level must update before the last
segment to be read at all. So a level of p reproduction tokens maps to S·p, capped from the
slowest level down: the slowest level at most T/2 (read by the second half of every
sequence), each faster level at most half the next slower one (never below S):
    S = 128, T = 2048: 1/4/32/128 → 128/256/512/1024 (16/8/4/2 updates per sequence)
    S = 32,  T = 64:   1/4/16     → 32/32/32           (one read update per sequence each)
    S = 16,  T = 64:   1/4/16     → 16/16/32
Levels slower than the context (the paper sketches them) need `model.online.reset="never"`
(the fast state then streams across sequences) or period 0 (outer-loop-only level).
"""

from nested_jax.configs import default

LEVELS = ("fast", "mid", "slow", "ultra")


def read_periods(repro_periods, segment_len: int, seq_len: int) -> tuple:
    """Periods in tokens that every level updates and reads within a sequence (docstring)."""
    s = segment_len
    out, cap = [], max(s, (seq_len // 2) // s * s)
    for p in reversed(repro_periods):
        period = min(s * p, cap)
        out.append(period)
        cap = max(s, (period // 2) // s * s)
    return tuple(reversed(out))


def cms_levels(c, repro_periods, lr: float, segment_len: int, seq_len: int,
               optimizer: str = "gd"):
    """Set model.cms from the reproduction's token periods (see module docstring). The inner
    step is the paper's gradient step (NL Eq. 71) by default: the teach scale then sets its
    size, as the reproduction's scale schedule intends (its Adam-like optimizer did not)."""
    n = len(repro_periods)
    c.model.online.segment_len = segment_len
    c.model.cms.names = LEVELS[:n]
    c.model.cms.periods = read_periods(repro_periods, segment_len, seq_len)
    c.model.cms.optimizers = (optimizer,) * n
    c.model.cms.lrs = (lr,) * n


def teach(c, scale, clip, warmup, decay_start, decay_duration, surprise=0.0):
    o = c.model.online
    o.teach_scale, o.teach_clip = scale, clip
    o.teach_warmup_steps, o.teach_decay_start, o.teach_decay_duration = (
        warmup, decay_start, decay_duration)
    o.surprise_threshold = surprise


def shape(c, d, layers, heads):
    c.model.d_model, c.model.n_layers, c.model.n_heads = d, layers, heads


def base(variant: str, *, seed: int):
    """Common defaults of the reproduction's runs: 32k vocabulary, bf16, constant LR after a
    short warm-up (the reproduction used none), global-norm clip 1.0."""
    c = default.get_config()
    c.seed = seed
    c.model.variant = variant
    c.data.tokenizer = "novels_32k"
    c.model.dtype = "bfloat16"
    c.optim.schedule = "constant"
    c.optim.warmup_steps = 100
    c.optim.weight_decay = 0.0
    c.optim.grad_clip = 1.0
    return c


def cpu_smoke(c, *, steps: int = 60):
    """Shrink a preset to run on a CPU in minutes (structure and ratios kept)."""
    shape(c, 128, 2, 4)
    c.model.dtype = "float32"
    c.train.seq_len = 64
    c.train.batch_size = 4
    c.train.steps = steps
    c.train.log_every = 5
    c.optim.warmup_steps = 5
    c.checkpoint.every_steps = steps
    c.eval.every_steps = steps // 2
    c.eval.num_batches, c.eval.batch_size = 2, 4
    c.model.titans.chunk_size = 16
    c.model.selfmod.chunk_size, c.model.selfmod.chunk_size_mem = 16, 32
    return c
