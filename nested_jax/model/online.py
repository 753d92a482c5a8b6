"""Online training and test-time memorisation: a scan over segments of the sequence
(docs/memories.md "CMS", docs/streaming.md; NL §7.1). Lives under model/ so evaluation can
use it without importing train.

The scan body reads: forward segment → teach signals → update due levels.
  `teach_signals`   forward one segment with the current fast state (attention sees earlier
                    segments through the key/value buffer in the carry), per-token CE, and
                    from one inner `jax.vjp` the teach signal δ = ∂(Σ segment CE)/∂(each CMS
                    level's output) and the inner gradient Jᵀδ wrt each level's fast delta;
  `nested_jax.ops.cms.inner_grads` / `update_level`, per level: scale and clip δ, accumulate,
                    surprise gate, and the level's Optax inner step when its period ends.
Writes are stop-gradient for the outer loss; reads carry the outer gradient to the meta
parameters. Titans / self-modifying memories run inside the forward (differentiable).

The fast state: {"carry": {"kv", "titans" | "selfmod", "cms": {level: delta}}, "opt",
"acc", "surprise": {level: ...}, "tokens"}; every leaf but the token counter is
[layer, batch, ...] (`FAST_AXES`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from nested_jax.ops import cms as cms_ops
from nested_jax.ops.losses import ce_and_hidden_grad, token_cross_entropy
from nested_jax.ops.scan import call_chunk, nearest_divisor
from nested_jax.ops.teach import teach_scale_at


RESETS = ("per_sequence", "never")  # model.online.reset
REMATS = ("segment", "block")  # model.online.remat (with model.remat)


class OnlineConfigError(ValueError):
    pass


def layer_unroll(cfg) -> int | None:
    """`run_blocks`' unroll_layers inside the segment scan (None: model.unroll_layers).

    The layer stack of blocks without a chunk scan of their own (hope_attention) is unrolled
    when n_layers <= model.online.unroll_layers: in the teach signal's vjp a looped layer scan
    stacks every block's residuals per layer (a dynamic-update-slice and copies each), which
    on the GPU doubled the kernels of the pilot hope_attention step (H100 compile: 72.6k →
    36.1k device ops per step unrolled, compile 46 s; benchmarks/RESULTS.md, "The GPU
    program"). Blocks with chunk scans keep model.unroll_layers (12 unrolled hope layers of
    16 unrolled chunks did not compile in 35 min) — unless those scans are Pallas kernels
    (hope and hope_hybrid on a GPU, ops/selfmod_fused.py and ops/titans_fused.py): then the
    layers unroll too (pilot hope on the H100 compile: 97.2k → 41.3k device ops per step,
    compile 137 s)."""
    from nested_jax.model.variants import get
    from nested_jax.ops import selfmod_fused, titans_fused

    seg = int(cfg.online.segment_len)
    kernels = {"selfmod": selfmod_fused.model_uses_kernels,
               "titans": lambda c: titans_fused.model_uses_kernels(c) and titans_fused.fits_call(
                   seg, call_chunk(c.titans.chunk_size, seg))}
    memory = get(cfg.variant).memory
    if memory is not None and not kernels[memory](cfg):
        return None  # blocks with an XLA chunk scan of their own
    return max(cfg.unroll_layers, cfg.online.unroll_layers)


# Segments unrolled at most around XLA chunk scans of the blocks' own (the default
# model.online.unroll_segments): unrolled, their compile grows with segments × chunks.
XLA_SCAN_SEGMENTS = 8


def segment_unroll(cfg, n_seg: int) -> int:
    """Segments per iteration of the segment scan: all n_seg when n_seg <=
    model.online.unroll_segments, else 1 (a loop). Unrolled, a GPU step keeps no stacked
    per-segment state and shares each layer's weight slices (pilot, H100 compile: hope_attention
    36,130 → 23,390 device ops per step; benchmarks/RESULTS.md). Blocks with XLA chunk scans
    of their own (`layer_unroll` None: the CPU, or kernel=xla) unroll at most
    XLA_SCAN_SEGMENTS, whatever the field says."""
    limit = cfg.online.unroll_segments
    if layer_unroll(cfg) is None:
        limit = min(limit, XLA_SCAN_SEGMENTS)
    return n_seg if n_seg <= limit else 1


def level_optimizers(cms_cfg) -> dict:
    """{level: its Optax inner optimizer} (`nested_jax.ops.cms.inner_optimizer`)."""
    names, n = tuple(cms_cfg.names), len(cms_cfg.names)
    for field in ("periods", "optimizers", "lrs"):
        if len(tuple(getattr(cms_cfg, field))) != n:
            raise OnlineConfigError(
                f"model.cms.{field} has {len(tuple(getattr(cms_cfg, field)))} entries but "
                f"model.cms.names has {n}; give one per level.")
    try:
        return {nm: cms_ops.inner_optimizer(kind, lr, cms_cfg.beta, cms_cfg.beta2)
                for nm, kind, lr in zip(names, cms_cfg.optimizers, cms_cfg.lrs)}
    except ValueError as e:
        raise OnlineConfigError(str(e)) from None


def live_levels(cms_cfg) -> tuple:
    """Levels with fast updates (period > 0); period 0 = outer-loop-only level (a plain FFN
    trained by the outer optimizer alone: no teach signal, no inner step)."""
    return tuple(n for n, p in zip(cms_cfg.names, cms_cfg.periods) if p > 0)


def check_online_config(cfg, seq_len: int, *, training: bool = False) -> None:
    """Segment length must divide the sequence and every CMS period (docs/memories.md,
    "Online training"). With training=True (the train config check) every fast level must
    also be read: under per-sequence reset a period ≥ the sequence length updates after the
    last token and the update is thrown away."""
    s = cfg.online.segment_len
    if s <= 0 or seq_len % s:
        raise OnlineConfigError(
            f"model.online.segment_len={s} must be positive and divide the sequence length "
            f"{seq_len}; e.g. --config.model.online.segment_len={nearest_divisor(seq_len, s)}.")
    for name, p in zip(cfg.cms.names, cfg.cms.periods):
        if p < 0 or (p > 0 and (p < s or p % s)):
            raise OnlineConfigError(
                f"CMS level {name!r} has period {p} tokens, which is not a multiple of "
                f"model.online.segment_len={s}. Fix: make every period in model.cms.periods "
                f"a multiple of the segment length (or lower segment_len), or 0 for an "
                f"outer-loop-only level.")
    if cfg.online.reset not in RESETS:
        raise OnlineConfigError(
            f"model.online.reset={cfg.online.reset!r}; choose 'per_sequence' or 'never'.")
    if training and cfg.online.reset == "per_sequence":
        for name, p in zip(cfg.cms.names, cfg.cms.periods):
            if p >= seq_len:
                raise OnlineConfigError(
                    f"CMS level {name!r} has period {p} tokens >= the sequence length "
                    f"{seq_len} with model.online.reset='per_sequence': this level's updates "
                    f"are never read (it updates after the last token and the fast state is "
                    f"reset). Fix: use a period < {seq_len} (a multiple of the segment length "
                    f"{s}), --config.model.online.reset=never (the fast state streams across "
                    f"sequences), or period 0 for an outer-loop-only level.")
    level_optimizers(cfg.cms)


def init_fast(model, cfg, batch: int, seq_len: int) -> dict:
    """Fresh per-sequence state: model carry (kv, memories, CMS deltas) + inner optimizer
    state, gradient accumulators and a token counter for the CMS cadence."""
    carry = model.init_carry(batch, seq_len)
    txs = level_optimizers(cfg.cms)
    opt = {n: jax.vmap(jax.vmap(txs[n].init))(carry["cms"][n]) for n in cfg.cms.names}
    acc = jax.tree.map(jnp.zeros_like, carry["cms"])
    surprise = {n: jnp.zeros(carry["cms"][n]["w1"].shape[:2], jnp.float32) for n in cfg.cms.names}
    return {"carry": carry, "opt": opt, "acc": acc, "surprise": surprise,
            "tokens": jnp.zeros((), jnp.int32)}


def _persisting(fast: dict, fresh: dict) -> dict:
    """Streaming (reset='never'): keep memories and CMS state, restart the kv buffer."""
    carry = dict(fast["carry"])
    if "kv" in fresh["carry"]:
        carry["kv"] = fresh["carry"]["kv"]
    return {**fast, "carry": carry}


def strip_kv(fast: dict) -> dict:
    """The fast state without the attention key/value buffer, which belongs to one sequence:
    what streaming training keeps across steps and memorisation keeps across prompts."""
    carry = {k: v for k, v in fast["carry"].items() if k != "kv"}
    return {**fast, "carry": carry}


# Leading logical axes of each part of the fast state; trailing axes are unnamed (None).
# Sharding (nested_jax.train.sharding.LOGICAL_RULES) and batch expansion read them by name.
FAST_AXES = {"carry": ("layers", "batch"), "opt": ("layers", "batch"),
             "acc": ("layers", "batch"), "surprise": ("layers", "batch"), "tokens": ()}


def fast_axes(fast: dict) -> dict:
    """The fast state's tree with, at each leaf, a tuple naming every axis of that leaf
    (e.g. ("layers", "batch", None, None)); map over it with `is_leaf=is_axes`."""
    def name(x, lead):
        if len(x.shape) < len(lead):
            raise ValueError(f"fast-state leaf of shape {x.shape} lacks the axes {lead}.")
        return lead + (None,) * (len(x.shape) - len(lead))

    return {k: jax.tree.map(lambda x, lead=FAST_AXES[k]: name(x, lead), v) for k, v in fast.items()}


def is_axes(x) -> bool:
    """A leaf of `fast_axes` (a plain tuple; optax's empty states are tuple subclasses)."""
    return type(x) is tuple and all(a is None or isinstance(a, str) for a in x)


class TeachSignals(NamedTuple):
    """What `teach_signals` returns for one online segment."""

    ce_BxS: jax.Array       # per-token CE of the segment (masked)
    h_BxSxD: jax.Array      # final hidden states (carry the outer gradient)
    carry: dict             # the model carry after the segment (CMS deltas unchanged)
    inputs: dict            # {level: x_LxBxSxD}, each CMS level's input
    teach: dict             # {level: δ_LxBxSxD} (only when asked for; else {})
    grad_delta: dict        # {level: Jᵀδ per layer and row, the delta's tree}


def teach_signals(model, carry: dict, tok_in_BxS, tgt_BxS, mask_BxS, pos_S, live: tuple,
                  with_teach: bool, block_remat: bool = False) -> TeachSignals:
    """Forward one segment with the fast state in `carry` and pull its summed, masked CE back
    through the blocks with one `jax.vjp`: to the outputs of the `live` CMS levels (the
    teach signals δ, when `with_teach`) and to their fast deltas (Jᵀδ). The CE gradient at
    the head input comes with the CE itself (`ce_and_hidden_grad`: no second head pass).
    block_remat: checkpoint each block (`model.online.remat = "block"`)."""
    b, s = tok_in_BxS.shape
    cfg = model.cfg

    def forward(probes, live_delta):
        cms_delta = {**carry["cms"], **live_delta}
        # Per-block remat only with online.remat="block": the vjp below keeps the blocks'
        # activations for the teach signal anyway (online_forward can checkpoint whole
        # segments instead).
        h, new_carry, aux = model.run_blocks(model.embed(tok_in_BxS), pos_S,
                                             {**carry, "cms": cms_delta}, probes,
                                             remat=block_remat, unroll_layers=layer_unroll(cfg))
        return h, (new_carry, aux)

    probes0 = None
    if with_teach:  # zeros added to each level's output: ∂loss/∂probe is δ
        probes0 = {n: jnp.zeros((cfg.n_layers, b, s, cfg.d_model), jnp.float32) for n in live}
    live_delta = {n: carry["cms"][n] for n in live}
    h, vjp_fn, (new_carry, aux) = jax.vjp(forward, probes0, live_delta, has_aux=True)
    ce, g_h = ce_and_hidden_grad(h, model.head_weight(), tgt_BxS)
    teach, grad_delta = jax.lax.stop_gradient(
        vjp_fn(jax.lax.stop_gradient(g_h * mask_BxS[..., None]).astype(h.dtype)))
    return TeachSignals(ce * mask_BxS, h, new_carry, aux["cms_inputs"], teach or {}, grad_delta)


def online_forward(fn, params, tokens_BxT1, *, step, update: bool = True, fast: dict | None = None,
                   mask_BxT=None, teach_scale=None, collect_argmax=False, start=0, kv=None):
    """Run the online segment scan. Returns (mean loss, aux) with aux = {"ce": ce_BxT,
    "fast": final state, "metrics": {"teach_scale"}, "cms_updates": {level: updates per
    layer [L]}}. `fast` (optional) continues from a given state instead of a fresh one
    (docs/streaming.md); `update=False` reads with the state but never writes CMS levels.
    `teach_scale` overrides the scheduled scale (memorisation). `collect_argmax` adds
    aux["argmax"], the greedy next-token predictions [B, T] (evaluation's generation and
    scoring). The text sits at absolute positions start, start + 1, …; `kv` continues that
    key/value buffer (decoding a longer text segment by segment) instead of a fresh one."""
    model = fn.bind(params)
    cfg = fn.cfg
    b, t = tokens_BxT1.shape[0], tokens_BxT1.shape[1] - 1
    check_online_config(cfg, t)
    o = cfg.online
    s = o.segment_len
    n_seg = t // s
    live = live_levels(cfg.cms)  # levels with fast updates; period-0 levels only read
    periods = dict(zip(cfg.cms.names, cfg.cms.periods))
    txs = level_optimizers(cfg.cms)
    scale = teach_scale_at(step, o.teach_scale, o.teach_warmup_steps, o.teach_decay_start,
                           o.teach_decay_duration) if teach_scale is None else teach_scale
    fresh = init_fast(model, cfg, b, t)
    state0 = fresh if fast is None else _persisting(fast, fresh)
    if kv is not None:
        state0 = {**state0, "carry": {**state0["carry"], "kv": kv}}
    meta = jax.lax.stop_gradient(model.cms_meta())
    if mask_BxT is None:
        mask_BxT = jnp.ones((b, t), jnp.float32)
    to_segments = lambda a: a.reshape(b, n_seg, s).swapaxes(0, 1)  # noqa: E731  [B,T] → [N,B,S]
    xs = (to_segments(tokens_BxT1[:, :-1]), to_segments(tokens_BxT1[:, 1:]),
          to_segments(mask_BxT.astype(jnp.float32)), jnp.arange(n_seg))
    # δ per token is needed to clip it or to measure surprise; otherwise the inner
    # gradients come straight from the vjp wrt the fast deltas.
    with_teach = o.teach_clip > 0 or o.surprise_threshold > 0

    def greedy(h_BxSxD):
        if not collect_argmax:
            return jnp.zeros((b, 0), jnp.int32)
        return jnp.argmax(model.logits(jax.lax.stop_gradient(h_BxSxD)), -1).astype(jnp.int32)

    block_remat = bool(cfg.remat) and o.remat == "block"

    def forward_and_teach(carry, tok_in_BxS, tgt_BxS, mask_BxS, pos_S):
        return teach_signals(model, carry, tok_in_BxS, tgt_BxS, mask_BxS, pos_S, live,
                             with_teach, block_remat)

    if cfg.remat and o.remat == "segment":
        # model.remat, online.remat="segment": checkpoint each segment. Per-block remat saves
        # little here (the teach signal's vjp keeps every block's activations, and the scan
        # stacks them for the outer backward pass); checkpointing the whole segment keeps
        # only its carry and inputs, and the backward pass recomputes its forward once (the
        # teach signal's backward is not redone: nothing differentiates it). At the pilot
        # size: 124 → 52 GiB of temporaries for `hope` (benchmarks/RESULTS.md).
        forward_and_teach = jax.checkpoint(forward_and_teach, prevent_cse=False)

    def body(state, x):
        tok_in_BxS, tgt_BxS, mask_BxS, i = x
        pos_S = (start + i * s + jnp.arange(s)).astype(jnp.int32)
        carry = state["carry"]
        if not update:  # read only
            h_BxSxD, new_carry, _ = model.run_blocks(model.embed(tok_in_BxS), pos_S, carry,
                                                     unroll_layers=layer_unroll(cfg))
            ce_BxS = token_cross_entropy(model.logits(h_BxSxD), tgt_BxS) * mask_BxS
            return {**state, "carry": {**new_carry, "cms": carry["cms"]}}, (ce_BxS, {},
                                                                           greedy(h_BxSxD))
        # forward segment → teach signals
        sg = forward_and_teach(carry, tok_in_BxS, tgt_BxS, mask_BxS, pos_S)
        # → update due levels (period-0 levels keep their zero delta and untouched state)
        tokens_after = state["tokens"] + (i + 1) * s
        levels, updates = {}, {}
        for n in live:
            g, d_tilde = cms_ops.inner_grads(
                meta[n], carry["cms"][n], jax.lax.stop_gradient(sg.inputs[n]), sg.teach.get(n),
                sg.grad_delta[n], scale=scale, clip=o.teach_clip, eps=cfg.norm_eps)
            level = {"delta": carry["cms"][n], "opt": state["opt"][n], "acc": state["acc"][n],
                     "surprise": state["surprise"][n]}
            levels[n], applied_LxB = cms_ops.update_level(
                level, g, d_tilde, tx=txs[n], period=periods[n], tokens_after=tokens_after,
                surprise_threshold=o.surprise_threshold, every_segment=periods[n] == s)
            updates[n] = applied_LxB.mean(-1)  # [L] updates this segment
        new = lambda k: {n: levels[n][k] for n in live}  # noqa: E731
        new_state = {"carry": {**sg.carry, "cms": {**carry["cms"], **new("delta")}},
                     **{k: {**state[k], **new(k)} for k in ("opt", "acc", "surprise")},
                     "tokens": state["tokens"]}
        return new_state, (sg.ce_BxS, updates, greedy(sg.h_BxSxD))

    unroll = segment_unroll(cfg, n_seg)
    state, (ce_NxBxS, updates, argmax_NxBxS) = jax.lax.scan(body, state0, xs, unroll=unroll)
    state = {**state, "tokens": state["tokens"] + t}
    ce_BxT = ce_NxBxS.swapaxes(0, 1).reshape(b, t)
    loss = ce_BxT.sum() / jnp.maximum(mask_BxT.sum(), 1.0)
    metrics = {"teach_scale": jnp.asarray(scale, jnp.float32)}
    out = {"ce": ce_BxT, "fast": state, "metrics": metrics,
           "cms_updates": {n: per_seg_NxL.sum(0) for n, per_seg_NxL in updates.items()}}
    if collect_argmax:
        out["argmax"] = argmax_NxBxS.swapaxes(0, 1).reshape(b, t)
    return loss, out


def update_metrics(cms_updates: dict) -> dict:
    """The log-record form of online_forward's aux["cms_updates"]: one scalar per layer and
    level, `cms/<layer>/<level>/updates` (train/metrics.py writes every key)."""
    return {f"cms/{layer}/{n}/updates": counts_L[layer]
            for n, counts_L in cms_updates.items() for layer in range(counts_L.shape[0])}


def memorize_pass(fn, params, prompt_BxT1, fast, mask_BxT=None, teach_scale=None, *, step=0):
    """One memorisation pass over a prompt: (fast state without the key/value buffer,
    {level: updates per layer}). Jit it with `fn` and `step` bound for repeated use."""
    _, aux = online_forward(fn, params, prompt_BxT1, step=step, update=True, fast=fast,
                            mask_BxT=mask_BxT, teach_scale=teach_scale)
    return strip_kv(aux["fast"]), aux["cms_updates"]


def memorize(fn, params, prompt_BxT1, *, steps: int = 1, fast: dict | None = None,
             reset: bool = True, mask_BxT=None, teach_scale=None, step=0, one_pass=None):
    """Test-time memorisation (docs/streaming.md): replay the prompt `steps` times through
    the online scan (teach signal from the prompt's own next-token loss, padded targets
    masked out). reset=True starts from a fresh state, else continues from `fast`.
    `one_pass(params, prompt, fast, mask, teach_scale)` replaces `memorize_pass` (e.g. its
    jitted form). Returns (fast state without the key/value buffer, {level: updates summed
    over layers and passes})."""
    if one_pass is None:
        def one_pass(p, toks, f, m, ts):
            return memorize_pass(fn, p, toks, f, m, ts, step=step)
    state = None if reset else fast
    counts: dict = {}
    for _ in range(steps):
        state, updates = one_pass(params, prompt_BxT1, state, mask_BxT, teach_scale)
        for n, per_layer in updates.items():
            counts[n] = counts.get(n, 0.0) + float(per_layer.sum())
    return state, counts
