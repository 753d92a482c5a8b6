"""Continuum Memory System math (docs/memories.md, "CMS"; NL §7.1, Eq. 71): one level's
read and its fast-weight update from the teach signal, as pure functions.

Level read (residual MLP):  y = x + GELU(RMSNorm(x)·W1)·W2, weights = meta + fast delta
(or the SwiGLU form with an up projection W3, `level_apply`).

Level update, once per segment of S tokens (`inner_grads`, then `update_level`):
  δ̃ = s·δ, clipped per token to ‖δ̃‖ ≤ c          (teach-signal scaling and clipping)
  g = Σ_t J_tᵀ δ̃_t  accumulated since the last update (the period's NTP-loss gradient)
  surprise = Σ_t ‖δ̃_t‖ accumulated likewise
  when the period ends (tokens seen % P == 0):     (period cadence)
      if surprise / P ≥ threshold:                 (surprise gate, per layer and row)
          delta ← delta + inner_optimizer(g)       (inner optimizer step)
      g, surprise ← 0

Shapes: L layers, B batch rows, S segment tokens, D width, F hidden width. A level's
per-row state (`delta`, `opt`, `acc` leaves) is [L, B, ...]; `surprise` is [L, B].
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import optax

from nested_jax.ops.norms import rms_norm
from nested_jax.ops.teach import scale_and_clip

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
                       step is 3.16·lr·sign(g) whatever the gradient's size (scale-invariant too).
    An unknown kind is a ValueError."""
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
    raise ValueError(f"CMS optimizer {kind!r} is unknown; choose one of {INNER_OPTIMIZERS}.")


def _normed(x_BxTxD, scale, eps):
    return rms_norm(x_BxTxD, scale, eps)


def _hidden(z, p_up, h, up_matmul):
    """GELU(z), or SwiGLU's silu(z) ⊙ (h·W3) when the level has an up projection W3."""
    if p_up is None:
        return jax.nn.gelu(z)
    return jax.nn.silu(z) * up_matmul(h)


def level_apply(p: dict, x_BxTxD, eps: float = 1e-6, dtype=jnp.float32):
    """One level with weights either shared (scale_D, w1_DxF, w2_FxD[, w3_DxF]) or per row
    (scale_BxD, w1_BxDxF, w2_BxFxD[, w3_BxDxF]): x + GELU(RMSNorm(x)·W1)·W2, or with W3 the
    SwiGLU form x + (silu(RMSNorm(x)·W1) ⊙ RMSNorm(x)·W3)·W2 (a transformer's MLP, for
    levels initialised from a pre-trained model: docs/pretrained.md)."""
    w3 = p.get("w3")
    if p["w1"].ndim == 3:  # per-row fast weights
        h = _normed(x_BxTxD, p["scale"][:, None, :], eps).astype(dtype)
        mm = lambda a, w: jnp.einsum("btd,bdf->btf", a, w.astype(dtype))  # noqa: E731
    else:
        h = _normed(x_BxTxD, p["scale"][None, None, :], eps).astype(dtype)
        mm = lambda a, w: jnp.einsum("btd,df->btf", a, w.astype(dtype))  # noqa: E731
    a = _hidden(mm(h, p["w1"]), w3, h, lambda hh: mm(hh, w3))
    return x_BxTxD + mm(a, p["w2"]).astype(x_BxTxD.dtype)


def level_apply_rows(meta: dict, delta: dict, x_BxTxD, eps: float = 1e-6, dtype=jnp.float32):
    """`level_apply` with the per-row weights meta + delta (delta [B, ...]): the same values,
    the matmuls through `rows_matmul`, whose backward pass gives the meta weights' gradient
    as one contraction over rows and tokens instead of a per-row gradient summed over rows."""
    h = _normed(x_BxTxD, (meta["scale"][None] + delta["scale"])[:, None, :], eps).astype(dtype)
    z = rows_matmul(h, meta["w1"], delta["w1"])
    a = _hidden(z, meta.get("w3"), h, lambda hh: rows_matmul(hh, meta["w3"], delta["w3"]))
    y = rows_matmul(a, meta["w2"], delta["w2"])
    return x_BxTxD + y.astype(x_BxTxD.dtype)


@jax.custom_vjp
def rows_matmul(x_BxTxK, w_KxN, dw_BxKxN):
    """x_b · (w + dw_b) for each batch row b (weights float32, the sum cast to x's dtype).
    Backward: x̄_b = ȳ_b (w + dw_b)ᵀ, w̄ = Σ_b x_bᵀ ȳ_b as one contraction over rows and
    tokens, dw̄_b = x_bᵀ ȳ_b. Differentiated wrt dw only (the teach signal's vjp) w̄ is dead
    code; wrt w only (the outer gradient: the deltas are stop-gradient) dw̄ is — no per-row
    [B, K, N] gradient is built and then summed over rows."""
    return jnp.einsum("btk,bkn->btn", x_BxTxK, (w_KxN[None] + dw_BxKxN).astype(x_BxTxK.dtype))


def _rows_fwd(x_BxTxK, w_KxN, dw_BxKxN):
    # Calls the function itself: a differentiation enclosing this rule (the online scan's
    # outer gradient through the teach signal's vjp) takes the rule too.
    eff_BxKxN = (w_KxN[None] + dw_BxKxN).astype(x_BxTxK.dtype)
    return rows_matmul(x_BxTxK, w_KxN, dw_BxKxN), (x_BxTxK, eff_BxKxN)


def _rows_bwd(res, dy_BxTxN):
    x_BxTxK, eff_BxKxN = res
    dx = jnp.einsum("btn,bkn->btk", dy_BxTxN, eff_BxKxN)
    dw = jnp.einsum("btk,btn->kn", x_BxTxK, dy_BxTxN, preferred_element_type=jnp.float32)
    ddw = jnp.einsum("btk,btn->bkn", x_BxTxK, dy_BxTxN, preferred_element_type=jnp.float32)
    return dx, dw, ddw


rows_matmul.defvjp(_rows_fwd, _rows_bwd)


def inner_grads(meta: dict, delta: dict, x_LxBxSxD, teach_LxBxSxD, grad_raw, *, scale,
                clip: float, eps: float = 1e-6):
    """One level's per-row inner gradient of one segment and the scaled teach signal.

    meta: the level's meta weights per layer ([L, ...]); delta: its fast deltas ([L, B, ...]);
    x_LxBxSxD: the level's inputs; teach_LxBxSxD: δ = ∂(segment CE)/∂(level output), or None
    when neither clipping nor the surprise gate needs it; grad_raw: Jᵀδ wrt the delta (from
    the segment's vjp), or None when clipping.
    Returns (g, δ̃): g = Σ_t J_tᵀ δ̃_t per layer and row (the delta's tree), δ̃ = s·δ clipped
    per token to norm `clip` (None when teach is None). Without clipping Jᵀ(s·δ) = s·Jᵀδ,
    so g is `grad_raw` scaled and no second pass through the level is needed."""
    if clip > 0:
        chex.assert_equal_shape([x_LxBxSxD, teach_LxBxSxD])
        d_tilde = scale_and_clip(teach_LxBxSxD, scale, clip)
        eff = jax.tree.map(lambda m, d: m[:, None] + d, meta, delta)

        def level_grad(eff_l, x_BxSxD, d_BxSxD):
            _, vjp_l = jax.vjp(lambda p: level_apply(p, x_BxSxD, eps), eff_l)
            return vjp_l(d_BxSxD.astype(x_BxSxD.dtype))[0]

        return jax.vmap(level_grad)(eff, x_LxBxSxD, d_tilde), d_tilde
    d_tilde = None if teach_LxBxSxD is None else teach_LxBxSxD * scale
    return jax.tree.map(lambda a: a * scale, grad_raw), d_tilde


def update_level(level: dict, g, d_tilde_LxBxSxD, *, tx, period: int, tokens_after,
                 surprise_threshold: float, every_segment: bool = False):
    """Accumulate one segment's gradient `g` and surprise into a level's state, and take the
    inner optimizer step when the period ends with this segment.

    level: {"delta", "opt", "acc", "surprise"} ([L, B, ...] leaves, surprise [L, B]);
    tx: the level's Optax inner optimizer (applied per layer and row); tokens_after: tokens
    seen once this segment is read (a traced scalar); d_tilde_LxBxSxD: the scaled, clipped
    teach signal (None: no surprise accrues). With surprise_threshold 0 there is no gate:
    surprise is not measured and every row steps.
    every_segment: the caller knows statically that every segment ends a period (period =
    segment length: tokens_after is always a multiple of it). Then the step is taken on
    this segment's gradient alone, with no runtime branch, and the accumulators, zero
    between periods, pass through untouched (same result, less memory traffic).
    Returns (new level state, applied_LxB): 1.0 where the level took a step. The new state is
    stop-gradient (CMS writes carry no outer gradient)."""
    acc = g if every_segment else jax.tree.map(jnp.add, level["acc"], g)
    surprise_LxB = level["surprise"]
    gated = surprise_threshold > 0  # threshold 0: every update applies, no gate to compute
    if gated and d_tilde_LxBxSxD is not None:
        norm_LxBxS = jnp.sqrt(jnp.sum(d_tilde_LxBxSxD * d_tilde_LxBxSxD, -1))
        surprise_LxB = surprise_LxB + norm_LxBxS.sum(-1)
    gate_LxB = (surprise_LxB / period >= surprise_threshold if gated
                else jnp.ones(surprise_LxB.shape, bool))
    due = True if every_segment else (tokens_after % period) == 0  # one scalar for the batch
    apply_LxB = gate_LxB if every_segment else due & gate_LxB

    def step():
        upd, new_opt = jax.vmap(jax.vmap(tx.update))(acc, level["opt"], level["delta"])
        delta = jax.tree.map(jnp.add, level["delta"], upd)
        if not gated:  # every row steps: no select, which would copy the whole state
            return delta, new_opt

        def pick(new, old):
            return jnp.where(apply_LxB.reshape(apply_LxB.shape + (1,) * (new.ndim - 2)), new, old)

        return (jax.tree.map(pick, delta, level["delta"]),
                jax.tree.map(pick, new_opt, level["opt"]))

    if every_segment:
        delta, opt = jax.lax.stop_gradient(step())
        new = {"delta": delta, "opt": opt, "acc": level["acc"],
               "surprise": jnp.zeros_like(surprise_LxB)}
        return new, apply_LxB.astype(jnp.float32)
    # Off-period segments skip the optimizer entirely.
    delta, opt = jax.lax.stop_gradient(
        jax.lax.cond(due, step, lambda: (level["delta"], level["opt"])))
    new = {"delta": delta, "opt": opt,
           "acc": jax.tree.map(lambda a: jnp.where(due, jnp.zeros_like(a), a), acc),
           "surprise": jnp.where(due, 0.0, surprise_LxB)}
    return new, apply_LxB.astype(jnp.float32)
