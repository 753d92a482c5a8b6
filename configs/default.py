"""Default configuration: every field with a one-line comment. Presets override it.

Usage: python -m nested_jax.train --config configs/default.py --workdir runs/x [--config.a.b=v]
"""

import ml_collections

from nested_jax.data.config import default_data_config


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0  # seeds init, data shuffling and the per-step RNG (fold_in(seed, step))

    c.model = m = ml_collections.ConfigDict()
    m.variant = "transformer"  # transformer | titans | hope | hope_attention | hope_hybrid
    m.vocab_size = 0  # 0 = take it from the tokenizer; otherwise must equal the tokenizer's
    m.d_model = 512  # residual stream width D
    m.n_layers = 12  # number of blocks L
    m.n_heads = 8  # attention / memory heads H (must divide d_model)
    m.head_dim = 0  # per-head width K; 0 = d_model // n_heads
    m.d_ff = 0  # SwiGLU hidden width F; 0 = 8/3·d_model rounded up to a multiple of 64
    m.rope_base = 10000.0  # RoPE frequency base
    m.attention_window = 0  # 0 = full causal attention; > 0 = sliding window of this many tokens
    m.tie_embeddings = True  # share the embedding matrix with the LM head
    m.init_std = 0.02  # std of embedding / input projections' reference scale (initial loss ≈ ln V)
    m.norm_eps = 1e-6  # RMSNorm epsilon
    m.dtype = "float32"  # compute dtype (float32 | bfloat16); parameters stay float32
    m.remat = False  # gradient checkpointing per block (saves activation memory)

    c.data = default_data_config()  # dataset, tokenizer, cache; see nested_jax/data/config.py

    c.train = t = ml_collections.ConfigDict()
    t.steps = 10_000  # number of optimizer updates
    t.batch_size = 32  # global batch size in sequences (split over mesh.data)
    t.seq_len = 2048  # tokens per training sequence
    t.log_every = 10  # write a metrics.jsonl record every this many steps

    c.optim = o = ml_collections.ConfigDict()
    o.name = "adamw"  # outer optimizer: adamw
    o.lr = 3e-4  # peak learning rate
    o.warmup_steps = 500  # linear warm-up from 0 to lr
    o.schedule = "cosine"  # cosine | constant (after warm-up)
    o.min_lr_ratio = 0.1  # cosine floor as a fraction of lr
    o.b1 = 0.9  # Adam beta1
    o.b2 = 0.95  # Adam beta2
    o.eps = 1e-8  # Adam epsilon
    o.weight_decay = 0.1  # decoupled weight decay (not applied to norms and 1-D params)
    o.grad_clip = 1.0  # global-norm gradient clipping; 0 disables

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

    c.logging = lg = ml_collections.ConfigDict()
    lg.progress_bar = True  # tqdm progress bar with loss and tokens/s
    lg.plot = True  # write loss_curve.png in the workdir at the end
    return c
