"""Default configuration: every field with a one-line comment. Presets override it.

Usage: python -m nested_jax.train --config configs/default.py --workdir runs/x [--config.a.b=v]
"""

import ml_collections

from nested_jax.data.config import default_data_config


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0  # seeds init and data shuffling (a train step has no other randomness)

    c.model = m = ml_collections.ConfigDict()
    m.variant = "transformer"  # transformer | titans | hope | hope_attention | hope_hybrid
    m.vocab_size = 0  # 0 = take it from the tokenizer; otherwise must equal the tokenizer's
    m.d_model = 512  # residual stream width D
    m.n_layers = 12  # number of blocks L
    m.n_heads = 8  # attention / memory heads H (must divide d_model)
    m.head_dim = 0  # per-head width K; 0 = d_model // n_heads
    m.n_kv_heads = 0  # attention key/value heads (grouped-query attention; must divide n_heads); 0 = n_heads
    m.d_ff = 0  # SwiGLU hidden width F; 0 = 8/3·d_model rounded up to a multiple of 64
    m.rope_base = 10000.0  # RoPE frequency base
    # llama3 = Llama 3.1's rule: wavelengths beyond rope_original_max_len / rope_low_freq_factor
    # slowed by rope_factor, below rope_original_max_len / rope_high_freq_factor kept, blended between
    m.rope_scaling = "none"  # RoPE context scaling: none | llama3
    m.rope_factor = 8.0  # llama3 scaling: slow-down of the low frequencies
    m.rope_low_freq_factor = 1.0  # llama3 scaling: low-frequency cut-off divisor
    m.rope_high_freq_factor = 4.0  # llama3 scaling: high-frequency cut-off divisor
    m.rope_original_max_len = 8192  # llama3 scaling: the pre-extension context length
    m.attention_bias = False  # biases on the q, k, v projections (Qwen2); none on the output
    # Parameters the outer optimizer leaves untouched: patterns over dotted parameter paths
    # (fnmatch, e.g. ("embed.*", "blocks.attn.*", "blocks.attn_norm.*")); () = train all
    m.freeze = ()  # parameter-path patterns the outer optimizer never updates (see above)
    m.attention_window = 0  # 0 = full causal attention; > 0 = sliding window of this many tokens
    m.attention_impl = "auto"  # auto (cuDNN flash attention on a GPU where it applies: bf16/fp16; else XLA) | xla | cudnn
    m.tie_embeddings = True  # share the embedding matrix with the LM head
    m.init_std = 0.02  # std of embedding / input projections' reference scale (initial loss ≈ ln V)
    m.norm_eps = 1e-6  # RMSNorm epsilon
    m.dtype = "float32"  # compute dtype (float32 | bfloat16); parameters stay float32
    m.remat = False  # gradient checkpointing (saves activation memory): per block; online variants (hope*): see online.remat
    m.unroll_layers = 4  # unroll the layer scan when n_layers <= this (less loop overhead, longer compile)
    m.unroll_chunks = 16  # unroll a memory's chunk scan when it has <= this many chunks (GPU: 16 self-modifying chunks of a 128-token segment unrolled = 0.6× the kernels; longer compile)

    # Titans memory (variants titans, hope_hybrid). Defaults are the paper's (Titans §3–4)
    # unless marked "ours"; the paper normalises q and k only (§4.4).
    m.titans = tt = ml_collections.ConfigDict()
    # titans variant only: "mag" (memory gates sliding-window attention, §4.2) | "mal" (memory
    # layer before attention, §4.3) | "mac" (memory as context, §4.1: each segment retrieves
    # from the memory, attends over [persistent, retrieved, segment], writes its output back).
    tt.mode = "mag"
    tt.mac_segment = 64  # "mac": tokens per segment (attention is segment-local; divides seq_len)
    tt.memory = "mlp"  # "linear" (matrix W, depth 1) | "mlp" (deep memory, §3.1)
    tt.depth = 2  # MLP memory layers L_M (2-4, Titans §5.5 studies 1-4; "linear" is 1)
    tt.hidden_mult = 4  # MLP memory hidden width = hidden_mult × head dim
    tt.chunk_size = 16  # tokens per chunk of the chunked dual form (gradients at chunk start, §3.2)
    tt.theta_max = 0.3  # step size θ = theta_max · sigmoid(·); θ → 1 makes the MLP memory diverge
    tt.theta_init = 0.3  # initial θ / theta_max (via the gate bias)
    # ℓ2-normalise values too (ours, not the paper's: bounded targets keep the inner loop
    # stable at θ_max 0.3 on correlated keys; False = the paper's q, k-only normalisation).
    tt.v_norm = True
    # MLP memory read/written as k + LN(MLP(k)) (ours: lucidrains' ResidualNorm, TTT; not in
    # the paper): the LN shrinks the inner gradient as the fast weights grow, so a chunk's
    # summed update cannot run away (without it the smoke Titans diverged to 1e27 within 128
    # tokens). False = the paper's plain MLP memory.
    tt.residual_norm = True
    tt.eta_init = 0.5  # initial momentum decay η
    tt.alpha_init = 0.01  # initial forgetting α (0 keeps everything)
    tt.conv_width = 4  # causal depthwise conv on q, k, v
    tt.persistent_tokens = 0  # learnable key/value tokens every query sees (titans variant)
    tt.remat_group = 1  # chunks per rematerialised group in the memory scan (0 = off; 1 fastest on CPU)
    # The MLP memory's chunk scan: "auto" = one Pallas kernel per call and head each way on a
    # GPU (ops/titans_fused.py; depth 2, power-of-two sizes, head 16–64, chunks ≥ 16), else
    # XLA's scan (tens of kernels per chunk step on a GPU) | "xla" | "pallas" (forced; on the
    # CPU Pallas's interpreter, for tests). Same math either way.
    tt.kernel = "auto"

    m.selfmod = sm = ml_collections.ConfigDict()  # self-modifying Titans (variant hope)
    sm.chunk_size = 8  # chunk of the k, v, q, η, α memories (reads at chunk-start state)
    sm.chunk_size_mem = 32  # chunk of the output memory M_mem (0 = same as chunk_size)
    sm.eta_scale = 0.1  # η_t = eta_scale · softplus(M_η(x_t))
    sm.v_norm = True  # ℓ2-normalise v_t (without it eta_scale ≥ 0.1 diverges on long sequences)
    sm.alpha_init = 0.99  # initial retention α (1 keeps everything)
    # Paper switches (NL §8, Table 6 ablations). Defaults are the paper's unless marked "ours".
    sm.mem_read = "dual"  # M_mem read after the in-chunk writes up to t (§8.2 dual form) | "boundary" (chunk start: ablation)
    sm.dgd = True  # delta gradient descent, Eq. 88; False = plain GD with retention (Table 6 "DGD → GD")
    sm.retention = True  # data-dependent retention α_t (the weight decay of Eq. 88); False = α ≡ 1 (Table 6 "w/o weight decay")
    sm.inner_k = True  # M_k learns in context; False = fixed at its meta-learned M_k,0 (Table 6 "w/o inner k")
    sm.inner_v = True  # M_v learns in context; False = fixed at M_v,0 (Table 6 "w/o inner v")
    sm.adaptive_q = False  # q = M_q(x) learned in context (Table 6 "inner q"); False = fixed projection (§8.1: "the only non-adaptive projection")
    # Momentum on the DGD gradient term: Eq. 88 has none, Table 6 ablates it ("w/o momentum"),
    # so the trained HOPE likely had some; 0 here (ours: one fewer state per memory; > 0 to test).
    sm.momentum = 0.0
    sm.hidden_mult = 1  # residual-MLP memory hidden width = hidden_mult × head dim
    sm.conv_width = 4  # causal depthwise conv on the memory input
    sm.remat_group = 0  # chunks per rematerialised group (0 = off)
    # The chunk scans: "auto" = one Pallas kernel per segment and head each way on a GPU
    # (ops/selfmod_fused.py; paper switches, power-of-two head ≤ 64), else XLA's scans (~37
    # kernels per chunk step on a GPU) | "xla" | "pallas" (forced; on the CPU Pallas's
    # interpreter, for tests). Same math either way.
    sm.kernel = "auto"

    m.cms = cm = ml_collections.ConfigDict()  # Continuum Memory System (hope* variants)
    cm.names = ("fast", "mid", "slow", "ultra")  # levels, applied in this order
    # Tokens between updates of each level: multiples of segment_len, each < seq_len with
    # per-sequence reset (so its update is read); 0 = outer-loop-only level (no fast update).
    cm.periods = (128, 256, 512, 1024)
    # Inner optimizer per level: gd (the paper's gradient step, NL Eq. 71: the step follows
    # the teach signal) | momentum (gd + heavy ball) | precond, precond_repro (Adam-like,
    # scale-invariant: the teach scale then barely matters).
    cm.optimizers = ("gd", "gd", "gd", "gd")
    cm.lrs = (1e-2, 1e-2, 1e-2, 1e-2)  # inner learning rate per level (gd: the step is lr·teach_scale·Σ Jᵀδ)
    cm.beta = 0.9  # inner momentum
    cm.beta2 = 0.999  # inner second-moment decay (precond)
    cm.hidden_mult = 4  # level MLP hidden width = hidden_mult × d_model
    cm.hidden = 0  # level MLP hidden width in units (0 = hidden_mult × d_model); stacked models: the source MLP's
    cm.mlp = "gelu"  # level MLP: gelu (x + GELU(norm(x)·W1)·W2) | swiglu (a transformer's MLP: stacked models, docs/pretrained.md)

    m.online = on = ml_collections.ConfigDict()  # online training (hope* variants)
    on.segment_len = 128  # tokens per segment of the online scan (divides seq_len and CMS periods)
    on.teach_scale = 0.1  # teach-signal scale s (after the schedule)
    on.teach_clip = 5.0  # per-token clip of ‖s·δ‖ (0 = off)
    on.teach_warmup_steps = 0  # linear warm-up of s over this many optimizer steps
    on.teach_decay_start = 0  # step at which s starts decaying linearly to 0 (0 = never)
    on.teach_decay_duration = 0  # steps of that decay
    on.surprise_threshold = 0.0  # skip a level update if the mean clipped ‖δ‖ of its period is below
    on.unroll_segments = 8  # unroll the segment scan when it has <= this many segments
    on.unroll_layers = 16  # inside a segment, unroll the layer stack of blocks without a chunk scan of their own (hope_attention) when n_layers <= this (GPU: half the kernels)
    on.remat = "segment"  # with model.remat: "segment" checkpoints whole segments (least memory), "block" each block (fewer bytes moved, more memory)
    on.reset = "per_sequence"  # fast state: "per_sequence" (fresh each sequence) | "never" (streaming)

    c.data = default_data_config()  # dataset, tokenizer, cache; see nested_jax/data/config.py

    c.train = t = ml_collections.ConfigDict()
    t.steps = 10_000  # number of optimizer updates
    t.batch_size = 32  # global batch size in sequences (split over all devices: mesh.data × mesh.fsdp)
    t.grad_accum = 1  # microbatches per optimizer step: each device's rows run in this many sequential slices, gradients averaged (activation memory of one slice, the same update)
    t.seq_len = 2048  # tokens per training sequence
    t.log_every = 10  # write a metrics.jsonl record every this many steps
    t.max_nonfinite_in_a_row = 5  # skip non-finite steps; abort after this many in a row (0 = never)
    t.compile_cache = "auto"  # XLA's compiled steps kept on disk, so a rerun or resume skips the compile: "auto" = on a GPU $JAX_COMPILATION_CACHE_DIR or ~/.cache/nested_jax/xla (off on a CPU), "" = off, or a directory
    # Start from the params of another workdir's newest checkpoint (e.g. an import-hf or stack
    # output; "DIR@STEP" for a given step), with a fresh optimizer; "" = fresh init. Used only
    # when --workdir has no checkpoint yet (a rerun resumes its own).
    t.init_from = ""  # workdir (or DIR@STEP) whose params start the run; "" = fresh init

    c.optim = o = ml_collections.ConfigDict()
    o.name = "adamw"  # outer optimizer: adamw | muon | m3 (2-D weights; AdamW for the rest)
    o.lr = 3e-4  # peak learning rate
    o.warmup_steps = 500  # linear warm-up from 0 to lr
    o.schedule = "cosine"  # cosine | constant (after warm-up)
    o.min_lr_ratio = 0.1  # cosine floor as a fraction of lr
    o.b1 = 0.9  # Adam beta1
    o.b2 = 0.95  # Adam beta2
    o.eps = 1e-8  # Adam epsilon
    o.weight_decay = 0.1  # decoupled weight decay (not applied to norms and 1-D params)
    o.grad_clip = 1.0  # global-norm gradient clipping; 0 disables
    o.momentum = 0.95  # Muon momentum
    o.adam_lr = 0.0  # Muon only: AdamW learning rate for non-matrix params (0 = same as lr)
    o.m3_beta3 = 0.9  # M3 only: slow-momentum weight β3 (M3 reuses b1, b2, eps, weight_decay)
    o.m3_alpha = 1.0  # M3 only: weight α of the slow orthogonalised momentum
    o.m3_ns_steps = 3  # M3 only: Newton–Schulz iterations (the reproduction's cubic)
    o.m3_slow_chunk = 100  # M3 only: steps between slow-momentum updates (0 = never)

    c.checkpoint = k = ml_collections.ConfigDict()
    k.every_steps = 1000  # save every this many steps (and always at the end)
    k.max_to_keep = 3  # keep this many most recent checkpoints
    k.async_save = True  # write checkpoints in a background thread

    c.eval = e = ml_collections.ConfigDict()
    e.every_steps = 500  # held-out loss every this many steps (and at step 0 and the end)
    e.num_batches = 8  # batches of the valid split per held-out evaluation
    e.batch_size = 8  # sequences per eval batch

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # data-parallel axis size; -1 = all devices
    c.mesh.fsdp = 1  # parameter-sharding axis size
    c.mesh.mode = "shard_map"  # data-parallel step: shard_map (explicit, per-device rows) | gspmd (jit + shardings)
    c.mesh.fsdp_min_size = 2**16  # params with fewer elements stay replicated when mesh.fsdp > 1

    c.logging = lg = ml_collections.ConfigDict()
    lg.progress_bar = True  # tqdm bar with loss and tokens/s; False = a plain line per log_every step and per eval
    lg.plot = True  # write loss_curve.png in the workdir at every held-out evaluation and at the end
    lg.tensorboard = True  # TensorBoard event files of every metric in WORKDIR/tensorboard/ (tensorboardX)
    lg.wandb_project = ""  # Weights & Biases project ("" = off; needs wandb installed; WANDB_MODE=offline works)
    lg.wandb_entity = ""  # W&B entity (team or user); "" = your default
    return c
