"""The Nested Learning paper's from-scratch LM setting, 760M parameters / 30B tokens (NL-N
Table 1, NL-A Table 2), for HOPE and its two baselines. paper_1p3b.py is the 1.3B / 100B one;
the code shared by both sizes lives here (`build`).

    python -m nested_jax.train --config configs/paper_760m.py --workdir runs/hope_760m
    python -m nested_jax.train --config configs/paper_760m.py:titans --workdir runs/titans_760m
    python -m nested_jax.train --config configs/paper_760m.py:transformer --workdir runs/tpp_760m

Pick the variant with the `:variant` suffix (hope, the default; titans; transformer), not
with --config.model.variant: the suffix also sets the fields that differ between variants
(the baselines' SwiGLU width d_ff matched to HOPE's parameter count, Titans' mode, sliding
window and persistent tokens). --config.model.variant=titans alone keeps HOPE's d_ff = 0
(the SwiGLU default 8/3·d) and full attention: a ~1.03B-parameter Titans. `:hope_attention`
(NL-A's HOPE-Attention, 778.0M) and `:hope_hybrid` (the reproduction's block, 1.04B: not
matched) take HOPE's fields unchanged.

Sources: "paper" = NL-N (NeurIPS camera-ready), NL-A (arXiv 2512.24695), T (Titans, arXiv
2501.00663); "TTT" = the ttt-lm-jax repository's model configs; "guess" = stated nowhere we could read, with the reason; "ours" = this
project's default. Every value, 760M (paper_1p3b.py lists what differs at 1.3B):

  train tokens      30e9 → train.steps 57,220 (30e9 / 524,288 tokens per step = 29.9997e9)
                    — paper (NL-N Table 1, NL-A Table 2: 760M / 30B)
  vocabulary        32,000: data.tokenizer novels_32k, model.vocab_size taken from it — paper
                    (NL-A: 32K vocabulary; T §5.1: the Llama-2 tokenizer). novels_32k is the
                    vendored 32k SentencePiece model (trained on the novels); for FineWeb-Edu
                    train one with `python -m nested_jax.data tokenizer --vocab-size 32000`
  data.dataset      "full" (all vendored text) — a stand-in: the paper trains on FineWeb-Edu
                    plus long-context documents (NL-A); point --config.data.dataset at a
                    manifest of those (nested_jax/data/README.md)
  train.seq_len     4096 — paper (T §5.1: 4K; NL-A: "other settings follow Titans"; TTT: 2K)
  train.batch_size  128 sequences = 524,288 tokens (0.5M) — paper (T §5.1: 0.5M tokens)
  optim             AdamW, lr 4e-4, weight decay 0.1, cosine — paper (T §5.1, the Gated
                    DeltaNet recipe; NL-A: AdamW, lr "tuned per model", values not given, so
                    Titans' 4e-4; TTT's 760M config uses 1.25e-3)
  optim.warmup_steps  5,722 = 10 % of the steps — TTT (T does not say)
  optim.min_lr_ratio  0.025: cosine down to 1e-5 — TTT
  optim.b1, b2, eps, grad_clip  0.9, 0.95, 1e-8, 1.0 — ours (not stated)
  model.dtype       bfloat16 compute, float32 parameters — guess (not stated; TTT trains fp32)
  model.remat       True (online variants checkpoint whole segments) — ours (4K-token rows)
  shape             d_model 1536 × n_layers 24, n_heads 16 (head dim 96) — guess (in neither
                    paper; TTT's 760M config: 24 × 1536, 16 heads)
  tie_embeddings    False (a separate LM head) — guess (not stated; Transformer++ is
                    Llama-style, untied; it also puts HOPE at the nominal size)
  HOPE self-modifying Titans: chunk 16 for the k, v, η, α memories, 64 for M_mem — guess
                    (NL-A §8.2: two chunk sizes, values not given; 16 = TTT's mini-batch and
                    fla's Titans chunk); memory width selfmod.hidden_mult 1 — ours (NL-A
                    Eq. 89: a 2-layer residual MLP, width not given; the "small" part);
                    q fixed, DGD and retention on — paper (§8.1: q "the only non-adaptive
                    projection"; Eq. 88); momentum 0 — ours (Eq. 88 has none; NL-A Table 6
                    ablates a momentum whose value is not given)
  HOPE CMS          4 levels of width 1 × d_model (cms.hidden_mult 1) — guess (NL-A Fig. 7:
                    more levels are better; 4 × 2·d² = the SwiGLU's 8·d² per block);
                    periods (512, 2048, 0, 0) — guess: the chunks [512, 2K, 8K, 32K] that
                    a secondary source reads off NL-A Fig. 7; the 8K and 32K levels cannot
                    update inside a 4K context, so they are outer-loop-only FFNs (period 0:
                    a level must update inside the sequence); online.segment_len 512
                    (8 segments; the 2K level updates once, read by the second half) — guess
                    (the smallest period); inner step gd lr 1e-2, teach scale 0.1, clip 5.0,
                    per-sequence reset — ours (defaults; Eq. 71's gradient step)
  Titans (`:titans`)  MAG: sliding-window attention gated by the memory — paper (T §4.2,
                    Eqs. 26–28; T's lowest 760M Wiki perplexity); window 2048 — guess (half
                    the context; not given); 16 persistent tokens — guess (T uses them, Table
                    5 ablation, count not given); deep MLP memory, depth 2, hidden 4 × head
                    dim — guess (T Table 5: deep beats linear; depth not given); chunk 16 —
                    guess (TTT / fla); the other model.titans fields (gate inits, v_norm,
                    residual_norm) — ours (defaults). NL's Titans row is Titans (LMM), the
                    memory without attention, which this project has no variant for.
                    d_ff 1536: matched to HOPE's count (the memory's q/k/v/o projections take
                    the rest of the SwiGLU's share) — ours, as launch/experiments' hope_vs_titans
  Transformer++ (`:transformer`)  full causal RoPE attention, SwiGLU d_ff 3840 matched to
                    HOPE's count — paper (the NL / T baseline); ours for the match

Parameter counts (`jax.eval_shape`, tests/test_paper_presets.py; `python
tests/test_paper_presets.py` prints them): hope 750.0M, titans 753.1M, transformer 749.5M
(nominal 760M: −1.3 %, −0.9 %, −1.4 %).

Memory: HOPE's fast state (per-sequence CMS deltas, accumulators and self-modifying
memories) is ~3.6 GiB per sequence (float32), carried through the segment scan: run the
128-sequence batch over enough GPUs with --config.train.grad_accum=K (each device runs its
rows in K slices, the same update), or lower train.batch_size and raise train.steps in
proportion (steps = 30e9 / (batch · 4096)).
Fewer, longer segments save memory: --config.model.online.segment_len=1024
'--config.model.cms.periods=(1024,2048,0,0)'.
"""

from nested_jax.configs import default

VARIANTS = ("hope", "titans", "transformer")  # the paper's comparison (NL Table 1)
EXTRA_VARIANTS = ("hope_attention", "hope_hybrid")  # same fields as hope, nothing matched
# Fields the Titans baseline sets on top of the shared ones ("" = model.*; docstring).
BASELINE_FIELDS = {"titans": {"": {"attention_window": 2048},
                              "titans": {"mode": "mag", "persistent_tokens": 16}}}
SEQ_LEN = 4096  # T §5.1
BATCH = 128  # sequences: 128 × 4096 = 524,288 tokens ≈ 0.5M (T §5.1)
# Per size: shape (guess), token budget and peak lr (paper), nominal size, and the
# baselines' SwiGLU width d_ff matched to HOPE's parameter count (tests/test_paper_presets.py
# checks it is the multiple of 64 closest to HOPE's count).
SIZES = {
    "760m": {"d_model": 1536, "n_layers": 24, "n_heads": 16, "tokens": 30e9, "lr": 4e-4,
             "nominal": 760e6, "d_ff": {"titans": 1536, "transformer": 3840}},
    "1p3b": {"d_model": 2048, "n_layers": 24, "n_heads": 16, "tokens": 100e9, "lr": 4e-4,
             "nominal": 1.3e9, "d_ff": {"titans": 2048, "transformer": 5120}},
}


def steps_for(tokens: float, batch: int = BATCH, seq_len: int = SEQ_LEN) -> int:
    """Optimizer steps that see `tokens` tokens at batch × seq_len tokens per step."""
    return round(tokens / (batch * seq_len))


def build(size: str, variant: str = "hope"):
    """The paper preset of `size` ("760m" | "1p3b") for `variant` (module docstring)."""
    if size not in SIZES:
        raise ValueError(f"size {size!r}; choose one of {sorted(SIZES)}.")
    if variant not in VARIANTS + EXTRA_VARIANTS:
        raise ValueError(f"variant {variant!r}; the paper presets have "
                         f"{', '.join(VARIANTS + EXTRA_VARIANTS)} "
                         "(e.g. --config configs/paper_760m.py:titans).")
    s = SIZES[size]
    c = default.get_config()
    m = c.model
    m.variant = variant
    m.d_model, m.n_layers, m.n_heads = s["d_model"], s["n_layers"], s["n_heads"]
    m.tie_embeddings = False
    m.dtype = "bfloat16"
    m.remat = True
    m.d_ff = s["d_ff"].get(variant, 0)  # hope has no SwiGLU
    # HOPE: self-modifying Titans → CMS chain.
    m.selfmod.chunk_size, m.selfmod.chunk_size_mem = 16, 64
    m.cms.names = ("fast", "mid", "slow", "ultra")
    m.cms.periods = (512, 2048, 0, 0)  # [512, 2K, 8K, 32K]: 8K, 32K outer-loop-only in 4K
    m.cms.optimizers = ("gd",) * 4
    m.cms.lrs = (1e-2,) * 4
    m.cms.hidden_mult = 1
    m.online.segment_len = 512
    # Titans baseline: MAG over a sliding window, deep memory (the module docstring).
    for group, fields in BASELINE_FIELDS.get(variant, {}).items():
        target = m if group == "" else m[group]
        for field, value in fields.items():
            target[field] = value
    m.titans.memory, m.titans.depth, m.titans.chunk_size = "mlp", 2, 16

    c.data.tokenizer = "novels_32k"
    c.data.dataset = "full"
    t = c.train
    t.seq_len, t.batch_size = SEQ_LEN, BATCH
    t.steps = steps_for(s["tokens"])
    t.log_every = 50
    o = c.optim
    o.name, o.lr, o.weight_decay, o.schedule = "adamw", s["lr"], 0.1, "cosine"
    o.warmup_steps = round(0.1 * t.steps)
    o.min_lr_ratio = 1e-5 / s["lr"]
    o.b1, o.b2, o.grad_clip = 0.9, 0.95, 1.0
    c.checkpoint.every_steps = 1000
    c.eval.every_steps = 1000
    c.eval.num_batches, c.eval.batch_size = 8, 8
    return c


def get_config(variant: str = "hope"):
    return build("760m", variant or "hope")
