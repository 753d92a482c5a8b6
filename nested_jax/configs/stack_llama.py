"""Continual pre-training of a Llama-family model turned into HOPE-Attention by ad-hoc level
stacking (NL §7.3; docs/pretrained.md), on one or more GPUs with FSDP. The paper converts
Llama-3 3B and 8B this way and continually pre-trains them on 15B tokens.

    bash launch/stack_llama.sh ~/models/Llama-3.2-1B runs/llama1b      # import → stack → train
    python -m nested_jax.train --config configs/stack_llama.py:runs/llama1b/stacked \\
        --workdir runs/llama1b/train                                    # the train step alone

The `:argument` picks the model:
  a workdir (what `convert stack` wrote)  every model field from its config.py (the exact
        converted model), its tokenizer, and train.init_from = that workdir;
  `3b` (default) or `1b`  Llama-3.2-3B / -1B's shapes stacked with the levels below, without
        weights or tokenizer (vocabulary stated): for `python -m benchmarks.cost_model
        --preset stack_3b|stack_1b` and dry runs. Training needs a workdir.

Every training value, with its source ("paper" = NL-A via reference notes; "guess" = not
stated anywhere we could read, with the reason; "ours" = this project's choice):
  CMS levels     2 (fast, slow), periods 512 and 2048 tokens, inner lr 1e-3 (gd) — guess:
                 NL-A Fig. 7 found 512 best and 2K "nearly as good and much cheaper" for the
                 lowest frequency. Every stacked level is a full copy of the MLP (W1, W2, W3),
                 so each level adds the MLPs' parameters again (3B: 2.1B per level), and each
                 sequence carries its own float32 fast copy of every level. Inner lr: 10×
                 below the smoke presets' 1e-2, for a pre-trained model whose levels start at
                 the identity.
  fits?          (benchmarks/RESULTS.md "Stacked Llama on H100s", projections from the
                 XLA:GPU compile) 1B: 71.9 GiB per H100 at 1 sequence per GPU on 8 H100s
                 (FSDP), so it fits; it does not fit one H100 (96 GiB). 3B: 196 GiB per GPU
                 at 1 sequence even on 8 H100s: it does NOT fit in this implementation (the
                 per-sequence fast state of the levels, the segments' attention probabilities
                 over the whole 4096-key buffer, the segment carries; levers listed there).
  segment_len    512 (the gcd of the periods: one online scan step per 512 tokens) — ours
  train.seq_len  4096 — paper (Titans' training length; NL-A: "other settings follow Titans")
  batch          8 sequences = 32,768 tokens per step (global): 1 per GPU on 8 H100s, what
                 fits (above; larger global batches: --config.train.grad_accum) — ours
  steps          457,764 = 15e9 / 32,768 — paper (NL-A: 15B tokens of continual pre-training)
  optim          AdamW lr 2e-5, warm-up 500, cosine to 10 %, wd 0.1, b2 0.95, clip 1.0 —
                 guess (continual pre-training lrs of Llama-3 models are 1e-5…3e-5; the
                 paper gives none)
  model.dtype    bfloat16 compute, float32 parameters; model.remat on (segments); the
                 segment scan as a loop (online.unroll_segments 1: the program the
                 projections compiled, in seconds instead of minutes) — ours
  mesh           data 1 × fsdp all devices, mode "gspmd": parameters and optimizer state
                 sharded over every GPU and each layer's weights gathered inside the layer
                 scan (the mode for models whose weights and gradients do not fit one
                 device; `shard_map` gathers all weights at once) — ours
  freeze         none (the paper trains everything); `--config.model.freeze='("embed.*",
                 "blocks.attn.*","blocks.attn_norm.*","final_norm.*")'` trains the levels only
  data           "full" (the vendored text, tokenized with the model's tokenizer) — a
                 stand-in: point --config.data.dataset at a manifest of FineWeb-Edu /
                 SlimPajama Parquet or .jsonl.zst shards (nested_jax/data/README.md)
"""

from __future__ import annotations

import os
import runpy

from nested_jax.configs import default

LEVELS = ("fast", "slow")
PERIODS = (512, 2048)
INNER_LR = 1e-3
# Llama-3.2's config.json values as import-hf maps them (nested_jax/convert/hf.py).
SHAPES = {
    "3b": dict(d_model=3072, n_layers=28, n_heads=24, n_kv_heads=8, head_dim=128, d_ff=8192),
    "1b": dict(d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8, head_dim=64, d_ff=8192),
}
LLAMA32 = dict(vocab_size=128256, norm_eps=1e-5, rope_base=500000.0, rope_scaling="llama3",
               rope_factor=32.0, rope_low_freq_factor=1.0, rope_high_freq_factor=4.0,
               rope_original_max_len=8192, tie_embeddings=True, attention_bias=False)


def _stacked_shape(c, size: str) -> None:
    m = c.model
    for k, v in {**SHAPES[size], **LLAMA32}.items():
        m[k] = v
    m.variant = "hope_attention"
    m.cms.names, m.cms.periods = LEVELS, PERIODS
    m.cms.optimizers, m.cms.lrs = ("gd",) * len(LEVELS), (INNER_LR,) * len(LEVELS)
    m.cms.mlp, m.cms.hidden = "swiglu", SHAPES[size]["d_ff"]
    m.online.segment_len = min(PERIODS)


def get_config(arg: str = "3b"):
    arg = arg or "3b"
    if arg in SHAPES:
        c = default.get_config()
        _stacked_shape(c, arg)
    else:
        path = os.path.join(arg, "config.py")
        if not os.path.isfile(path):
            raise ValueError(f"configs/stack_llama.py:{arg}: no {path}. Fix: give the workdir "
                             "`python -m nested_jax.convert stack` wrote, or one of "
                             f"{sorted(SHAPES)} for the shape alone.")
        c = runpy.run_path(path)["get_config"]()
        if c.model.variant != "hope_attention":
            raise ValueError(f"{arg} holds a {c.model.variant!r} model; this preset continues "
                             "a level-stacked one. Fix: run `python -m nested_jax.convert stack` "
                             "on it first.")
        c.train.init_from = os.path.abspath(arg)
    m, t, o = c.model, c.train, c.optim
    m.dtype, m.remat = "bfloat16", True
    m.online.unroll_segments = 1
    t.seq_len, t.batch_size = 4096, 8
    t.steps = 457_764
    t.log_every = 10
    o.name, o.lr, o.warmup_steps, o.min_lr_ratio = "adamw", 2e-5, 500, 0.1
    o.weight_decay, o.b2, o.grad_clip = 0.1, 0.95, 1.0
    c.mesh.data, c.mesh.fsdp, c.mesh.mode = 1, -1, "gspmd"
    c.data.dataset = "full"
    c.checkpoint.every_steps = 1000
    c.eval.every_steps = 1000
    return c
