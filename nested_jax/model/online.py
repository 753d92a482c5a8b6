"""Online training and test-time memorisation: a scan over segments of the sequence
(DESIGN §2.4, §2.6). Lives under model/ so evaluation can use it without importing train.

Per segment: forward with the current fast state (attention sees earlier segments through
the key/value buffer in the carry), per-token CE, the teach signal δ = ∂(Σ segment CE)/∂
(each CMS level's output) from one inner `jax.vjp`, scaled and clipped per token; each
level's inner gradient Jᵀδ̃ accumulates per batch row, and levels whose period ends with
this segment take one step of their own Optax inner optimizer on their fast delta.
Writes are stop-gradient for the outer loss; reads carry the outer gradient to the meta
parameters. Titans / self-modifying memories run inside the forward (differentiable).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from nested_jax.model.cms import level_apply
from nested_jax.ops.losses import ce_and_hidden_grad, token_cross_entropy
from nested_jax.ops.teach import scale_and_clip, teach_scale_at


class OnlineConfigError(ValueError):
    pass


INNER_OPTIMIZERS = ("gd", "momentum", "precond", "precond_repro")


def inner_optimizer(kind: str, lr: float, beta: float, beta2: float, eps: float = 1e-8):
    """A CMS level's inner optimizer (per batch row), applied to the period's summed inner
    gradient g = Σ_t J_tᵀ δ̃_t (the level's next-token-loss gradient, scaled by the teach scale):
      'gd'             plain gradient step θ ← θ − lr·g: the paper's level update (NL §7.1,
                       Eq. 71); the step follows the teach signal's size, so the teach scale
                       and its schedule act as the inner step size;
      'momentum'       the same with heavy-ball momentum beta (Eq. 71 with a momentum optimizer);
      'precond'        Adam-like: bias-corrected EMA of g over sqrt(EMA of g²). SCALE-INVARIANT:
                       with the state reset every sequence its first step is lr·sign(g), so the
                       teach scale (and its schedule) barely changes the update;
      'precond_repro'  the reproduction's DeepMomentum "preconditioned": g/(sqrt(v)+eps) with
                       v an undebiased EMA of g², then an undebiased EMA momentum — its first
                       step is 3.16·lr·sign(g) whatever the gradient's size (scale-invariant too)."""
    if kind == "gd":
        return optax.sgd(lr)
    if kind == "momentum":
        return optax.sgd(lr, momentum=beta)
    if kind == "precond":
        return optax.adam(lr, b1=beta, b2=beta2, eps=eps)
    if kind == "precond_repro":
        return optax.chain(
            optax.scale_by_rms(decay=beta2, eps=eps, eps_in_sqrt=False, bias_correction=False),
            optax.ema(beta, debias=False),
            optax.scale(-lr),
        )
    raise OnlineConfigError(
        f"CMS optimizer {kind!r} is unknown; choose one of {INNER_OPTIMIZERS}.")


def level_optimizers(cms_cfg) -> dict:
    names, n = tuple(cms_cfg.names), len(cms_cfg.names)
    for field in ("periods", "optimizers", "lrs"):
        if len(tuple(getattr(cms_cfg, field))) != n:
            raise OnlineConfigError(
                f"model.cms.{field} has {len(tuple(getattr(cms_cfg, field)))} entries but "
                f"model.cms.names has {n}; give one per level.")
    return {nm: inner_optimizer(kind, lr, cms_cfg.beta, cms_cfg.beta2)
            for nm, kind, lr in zip(names, cms_cfg.optimizers, cms_cfg.lrs)}


def live_levels(cms_cfg) -> tuple:
    """Levels with fast updates (period > 0); period 0 = outer-loop-only level (a plain FFN
    trained by the outer optimizer alone: no teach signal, no inner step)."""
    return tuple(n for n, p in zip(cms_cfg.names, cms_cfg.periods) if p > 0)


def check_online_config(cfg, seq_len: int, *, training: bool = False) -> None:
    """Segment length must divide the sequence and every CMS period (DESIGN §2.4). With
    training=True (the train config check) every fast level must also be read: under
    per-sequence reset a period ≥ the sequence length updates after the last token and the
    update is thrown away (DESIGN §2.3)."""
    s = cfg.online.segment_len
    if s <= 0 or seq_len % s:
        raise OnlineConfigError(
            f"model.online.segment_len={s} must be positive and divide the sequence length "
            f"{seq_len}; e.g. --config.model.online.segment_len={_divisor(seq_len, s)}.")
    for name, p in zip(cfg.cms.names, cfg.cms.periods):
        if p < 0 or (p > 0 and (p < s or p % s)):
            raise OnlineConfigError(
                f"CMS level {name!r} has period {p} tokens, which is not a multiple of "
                f"model.online.segment_len={s}. Fix: make every period in model.cms.periods "
                f"a multiple of the segment length (or lower segment_len), or 0 for an "
                f"outer-loop-only level.")
    if cfg.online.reset not in ("per_sequence", "never"):
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


def _divisor(n: int, near: int) -> int:
    divs = [d for d in range(1, n + 1) if n % d == 0]
    return min(divs, key=lambda d: abs(d - max(near, 1)))


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


def online_forward(fn, params, tokens_BxT1, *, step, update: bool = True, fast: dict | None = None,
                   mask_BxT=None, teach_scale=None, x_offset_BxTxD=None, collect_teach=False,
                   collect_argmax=False):
    """Run the segment scan. Returns (mean loss, aux) with aux = {"ce": [B,T], "fast": final
    state, "metrics": {...}}. `fast` (optional) continues from a given state instead of a
    fresh one; `update=False` reads with the state but never writes CMS levels.
    `teach_scale` overrides the scheduled scale (used by memorisation). `x_offset` is added
    to the embeddings and `collect_teach` returns the raw teach signals aux["teach"]
    {level: [N, L, B, S, D]} (both for tests). `collect_argmax` returns aux["argmax"] [B, T],
    the greedy next-token predictions (for evaluation's generation)."""
    model = fn.bind(params)
    cfg = fn.cfg
    b, t1 = tokens_BxT1.shape
    t = t1 - 1
    check_online_config(cfg, t)
    s = cfg.online.segment_len
    n_seg = t // s
    names = live_levels(cfg.cms)  # levels with fast updates; period-0 levels only read
    periods = dict(zip(cfg.cms.names, cfg.cms.periods))
    txs = level_optimizers(cfg.cms)
    o = cfg.online
    scale = teach_scale_at(step, o.teach_scale, o.teach_warmup_steps, o.teach_decay_start,
                           o.teach_decay_duration) if teach_scale is None else teach_scale
    fresh = init_fast(model, cfg, b, t)
    state0 = fresh if fast is None else _persisting(fast, fresh)
    meta = jax.lax.stop_gradient(model.cms_meta())
    if mask_BxT is None:
        mask_BxT = jnp.ones((b, t), jnp.float32)
    seg = lambda a: a.reshape(b, n_seg, s).swapaxes(0, 1)  # noqa: E731
    if x_offset_BxTxD is None:
        x_offset_BxTxD = jnp.zeros((b, t, 1), jnp.float32)
    offs = x_offset_BxTxD.reshape(b, n_seg, s, -1).swapaxes(0, 1)
    xs = (seg(tokens_BxT1[:, :-1]), seg(tokens_BxT1[:, 1:]), seg(mask_BxT.astype(jnp.float32)),
          jnp.arange(n_seg), offs)
    n_layers = cfg.n_layers
    # δ per token is needed to clip it, to measure surprise, or when a test asks for it;
    # otherwise the inner gradients come straight from the vjp wrt the fast deltas.
    need_probes = o.teach_clip > 0 or o.surprise_threshold > 0 or collect_teach

    def body(state, x):
        tok_in, tgt, m, i, off = x
        pos = (i * s + jnp.arange(s)).astype(jnp.int32)
        carry = state["carry"]

        def f(probes, live_delta):
            x = model.embed(tok_in) + off.astype(model.embed.dtype)
            cms_delta = {**carry["cms"], **live_delta}
            h, new_carry, aux = model.run_blocks(x, pos, {**carry, "cms": cms_delta}, probes)
            return h, (new_carry, aux)

        def greedy(h):
            if not collect_argmax:
                return jnp.zeros((b, 0), jnp.int32)
            return jnp.argmax(model.logits(jax.lax.stop_gradient(h)), -1).astype(jnp.int32)

        if not update:
            h, (new_carry, _) = f(None, {})
            ce = token_cross_entropy(model.logits(h), tgt) * m
            new_carry = {**new_carry, "cms": carry["cms"]}
            return {**state, "carry": new_carry}, (ce, {}, {}, greedy(h))
        probes0 = None
        if need_probes:
            probes0 = {n: jnp.zeros((n_layers, b, s, cfg.d_model), jnp.float32) for n in names}
        live_delta = {n: carry["cms"][n] for n in names}
        h, vjp_fn, (new_carry, aux) = jax.vjp(f, probes0, live_delta, has_aux=True)
        # Per-token CE and its gradient at the head input in one pass; the teach signal is
        # that gradient pulled back through the blocks (no second pass through the head).
        ce, g_h = ce_and_hidden_grad(h, model.head_weight(), tgt)
        ce = ce * m
        deltas, grad_delta = jax.lax.stop_gradient(
            vjp_fn(jax.lax.stop_gradient(g_h * m[..., None]).astype(h.dtype)))
        tokens_after = state["tokens"] + (i + 1) * s
        # Period-0 (outer-loop-only) levels keep their zero delta and untouched state.
        cms_delta = {n: carry["cms"][n] for n in cfg.cms.names if n not in names}
        opt = {n: state["opt"][n] for n in cfg.cms.names if n not in names}
        acc = {n: state["acc"][n] for n in cfg.cms.names if n not in names}
        surprise = {n: state["surprise"][n] for n in cfg.cms.names if n not in names}
        seg_metrics = {}
        for n in names:
            if o.teach_clip > 0:
                # Per-token clipping: pull the clipped δ̃ back through the level alone.
                d_tilde = scale_and_clip(deltas[n], scale, o.teach_clip)  # [L,B,S,D]
                x_in = jax.lax.stop_gradient(aux["cms_inputs"][n])
                eff = jax.tree.map(lambda mm, dd: mm[:, None] + dd, meta[n], carry["cms"][n])

                def level_grad(eff_l, x_l, d_l):
                    _, vjp_l = jax.vjp(lambda p: level_apply(p, x_l, cfg.norm_eps), eff_l)
                    return vjp_l(d_l.astype(x_l.dtype))[0]

                g = jax.vmap(level_grad)(eff, x_in, d_tilde)  # per-row grads [L,B,...]
            else:
                # No clipping: Jᵀ(s·δ) = s·(Jᵀδ), which the vjp above already produced.
                d_tilde = None if probes0 is None else deltas[n] * scale
                g = jax.tree.map(lambda a: a * scale, grad_delta[n])
            acc_n = jax.tree.map(jnp.add, state["acc"][n], g)
            if d_tilde is None:
                surp_n = state["surprise"][n]
            else:
                tok_norm = jnp.sqrt(jnp.sum(d_tilde * d_tilde, -1))  # [L,B,S]
                surp_n = state["surprise"][n] + tok_norm.sum(-1)
            due = (tokens_after % periods[n]) == 0
            mean_surprise = surp_n / periods[n]
            gate = mean_surprise >= o.surprise_threshold  # [L,B]
            apply = due & gate

            def step_level(acc_n=acc_n, n=n, apply=apply):
                upd, new_opt = jax.vmap(jax.vmap(txs[n].update))(
                    acc_n, state["opt"][n], carry["cms"][n])
                pick = lambda new, old: jnp.where(  # noqa: E731
                    apply.reshape(apply.shape + (1,) * (new.ndim - 2)), new, old)
                return (jax.tree.map(lambda dd, u: pick(dd + u, dd), carry["cms"][n], upd),
                        jax.tree.map(pick, new_opt, state["opt"][n]))

            # `due` is one scalar for the whole batch: skip the optimizer off-period.
            cms_delta[n], opt[n] = jax.lax.stop_gradient(jax.lax.cond(
                due, step_level, lambda n=n: (carry["cms"][n], state["opt"][n])))
            acc[n] = jax.tree.map(lambda a: jnp.where(due, jnp.zeros_like(a), a), acc_n)
            surprise[n] = jnp.where(due, 0.0, surp_n)
            seg_metrics[n] = apply.astype(jnp.float32).mean(-1)  # [L] updates this segment
        new_carry = {**new_carry, "cms": cms_delta}
        new_state = {"carry": new_carry, "opt": opt, "acc": acc, "surprise": surprise,
                     "tokens": state["tokens"]}
        return new_state, (ce, seg_metrics, deltas if collect_teach else {}, greedy(h))

    unroll = n_seg if n_seg <= cfg.online.get("unroll_segments", 1) else 1
    state, (ce_NxBxS, seg_metrics, teach, am_NxBxS) = jax.lax.scan(body, state0, xs, unroll=unroll)
    state = {**state, "tokens": state["tokens"] + t}
    ce_BxT = ce_NxBxS.swapaxes(0, 1).reshape(b, t)
    loss = ce_BxT.sum() / jnp.maximum(mask_BxT.sum(), 1.0)
    metrics = {"teach_scale": jnp.asarray(scale, jnp.float32)}
    for n, per_seg in seg_metrics.items():
        counts = per_seg.sum(0)  # [L]
        for layer in range(n_layers):
            metrics[f"cms/{layer}/{n}/updates"] = counts[layer]
    out = {"ce": ce_BxT, "fast": state, "metrics": metrics}
    if collect_teach:
        out["teach"] = teach
    if collect_argmax:
        out["argmax"] = am_NxBxS.swapaxes(0, 1).reshape(b, t)
    return loss, out


def memorize(fn, params, prompt_BxT1, *, steps: int = 1, fast: dict | None = None,
             reset: bool = True, mask_BxT=None, teach_scale=None, step=0):
    """Test-time memorisation (DESIGN §2.6): replay the prompt `steps` times through the
    online scan (teach signal from the prompt's own next-token loss) and return the new
    fast state. reset=True starts from a fresh state; otherwise continues from `fast`."""
    state = None if reset else fast
    for _ in range(steps):
        _, aux = online_forward(fn, params, prompt_BxT1, step=step, update=True, fast=state,
                                mask_BxT=mask_BxT, teach_scale=teach_scale)
        state = aux["fast"]
    return state
