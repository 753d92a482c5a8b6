"""Reference implementations the tests check the fast paths against (docs/paper_map.md):
token loops with autodiff inner gradients that share no chunk algebra with `memory.py`,
`selfmod.py` or `delta_rule.py`, plus the one-chunk DGD step and the linear DGD memory that
only those checks use (no model variant runs them).

    titans_linear_reference, titans_mlp_reference   Titans memory, token loop (Titans Eqs. 13–14)
    dgd_reference, dgd_chunk                        one chunk of DGD: token loop / chunk algebra
    selfmod_titans_reference                        self-modifying Titans, token loop (NL §8)
    dgd_linear, dgd_linear_reference                linear memory with DGD + retention, chunked /
                                                    token loop
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from nested_jax.ops.delta_rule import (check_chunks, check_momentum, decays, input_side_chunk,
                                       log_retention)
from nested_jax.ops.memory import F32, _activation, _check_wrap, _num_chunks, _wrap
from nested_jax.ops.norms import l2norm
from nested_jax.ops.scan import chunked_scan
from nested_jax.ops.selfmod import (_chunk_groups, _groups, _one_group, _validate, _zero_mom,
                                    mlp_apply)

Array = jax.Array


# ------------------------------------------------------------------------- Titans memory
def titans_linear_reference(
    q_TxK, k_TxK, v_TxV, theta_T, eta_T, alpha_T, W0_KxV, S0_KxV, chunk_size: int
):
    """Token loop (lax.scan over tokens), gradients at the chunk-start state.

    chunk_size = 1 is the exact per-token recurrence. Returns y [T,V], (W, S).
    """

    def predict(W, x):
        return x @ W

    def inner_grad(W, k, v):  # ∇_W ½‖kW − v‖² = kᵀ(kW − v)
        return jnp.outer(k, k @ W - v)

    return _token_loop(
        predict, inner_grad, q_TxK, k_TxK, v_TxV, theta_T, eta_T, alpha_T,
        W0_KxV, S0_KxV, chunk_size,
    )


def _token_loop(predict, inner_grad, q, k, v, theta, eta, alpha, params0, mom0, chunk_size):
    """Shared token loop for a memory `predict(params, x_row)` with `inner_grad`."""
    T = q.shape[0]
    _num_chunks(T, chunk_size)
    f32 = lambda t: jax.tree.map(lambda a: jnp.asarray(a, F32), t)  # noqa: E731
    params0, mom0 = f32(params0), f32(mom0)
    xs = (*f32((q, k, v, theta, eta, alpha)), jnp.arange(T) % chunk_size == 0)

    def step(carry, x):
        p, mom, p_start = carry
        qt, kt, vt, th, et, al, start = x
        if chunk_size > 1:
            p_start = jax.tree.map(lambda a, b: jnp.where(start, a, b), p, p_start)
        else:
            p_start = p
        grad = inner_grad(p_start, kt, vt)
        mom = jax.tree.map(lambda s, g: et * s - th * g, mom, grad)
        p = jax.tree.map(lambda w, s: (1.0 - al) * w + s, p, mom)
        return (p, mom, p_start), predict(p, qt)

    (p, mom, _), y = jax.lax.scan(step, (params0, mom0, params0), xs)
    return y.astype(q.dtype), (p, mom)


def titans_mlp_reference(
    q_TxK,
    k_TxK,
    v_TxV,
    theta_T,
    eta_T,
    alpha_T,
    params0,
    mom0,
    chunk_size: int,
    activation: str | Callable[[Array], Array] = "gelu",
    residual_norm: tuple[Array, Array] | None = None,
):
    """Token loop for the (deep) MLP memory; inner gradients by autodiff (independent check)."""
    act = _activation(activation)
    _check_wrap(q_TxK, v_TxV, residual_norm)

    def predict(p, x):
        h = x
        for W in p[:-1]:
            h = act(h @ W)
        return _wrap(x, h @ p[-1], residual_norm)

    def inner_grad(p, k, v):
        return jax.grad(lambda p: 0.5 * jnp.sum((predict(p, k) - v) ** 2))(p)

    y, (p, mom) = _token_loop(
        predict, inner_grad, q_TxK, k_TxK, v_TxV, theta_T, eta_T, alpha_T,
        tuple(params0), tuple(mom0), chunk_size,
    )
    return y, (p, mom)


# ------------------------------------------------------------- self-modifying memories
def _dgd_chunk_log(mem, mom, k_CxD, vhat_CxO, eta_C, log_alpha_C, momentum, act, dgd=True,
                   q_CxD=None):
    """One chunk of DGD with log α given (finite for α → 0): (memory, momentum, reads).

    reads (only when q is given): y_t = M_t(q_t), the memory after the in-chunk writes up
    to t, from the dual form (`input_side_read`, `output_side_read`); else None.
    dgd=False drops the rank-1 k kᵀ term (plain GD with retention, NL Table 6 "DGD → GD").
    """
    dec = decays(log_alpha_C, eta_C, momentum)
    A, SA, ((B, SB),), reads = _chunk_groups(mem["A"], mom["A"], [_one_group(mem, mom, vhat_CxO)],
                                             k_CxD, dec, momentum, act, dgd, q_CxD)
    y_CxO = None if reads is None else reads[0][0]
    return {**mem, "A": A, "B": B[0]}, {"A": SA, "B": SB[0]}, y_CxO


def dgd_chunk(mem, k_CxD, vhat_CxO, eta_C, alpha_C, mom=None, *, momentum=0.0,
              act=jax.nn.gelu, dgd=True, q_CxD=None):
    """One chunk of DGD (module docstring, NL Eq. 88 with gradients at ξ), no token loop.

    mem {"A","B"[,"P"]}, keys k [C,D], targets v̂ [C,O], step η and retention α [C];
    mom {"A","B"} (None: zeros). chunk size C = 1 is the exact per-token recurrence.
    Returns (memory, momentum) at the chunk end; with q [C,D] also the reads
    y_t = M_t(q_t) after the in-chunk writes up to t: (memory, momentum, y [C,O]).
    """
    momentum = check_momentum(momentum)
    mom = _zero_mom(mem) if mom is None else mom
    new, new_mom, y = _dgd_chunk_log(mem, mom, k_CxD, vhat_CxO, eta_C, log_retention(alpha_C),
                                     momentum, act, dgd, q_CxD)
    return (new, new_mom) if q_CxD is None else (new, new_mom, y)


def _inner_loss(AB, mem, k_D, vhat_O, act):
    return 0.5 * jnp.sum((mlp_apply({**mem, **AB}, k_D[None], act)[0] - vhat_O) ** 2)


def _token_update(run, mom, snap, k_D, vhat_O, eta, alpha, momentum, act, dgd=True):
    """One token of the recurrence, gradient by autodiff at the snapshot `snap`."""
    g = jax.grad(_inner_loss)({"A": snap["A"], "B": snap["B"]}, snap, k_D, vhat_O, act)
    mom = {n: momentum * mom[n] - eta * g[n] for n in ("A", "B")}
    eye_DxD = jnp.eye(k_D.shape[0], dtype=k_D.dtype)
    pre_DxD = alpha * eye_DxD - eta * jnp.outer(k_D, k_D) if dgd else alpha * eye_DxD
    return {**run, "A": pre_DxD @ run["A"] + mom["A"], "B": alpha * run["B"] + mom["B"]}, mom


def dgd_reference(mem, k_CxD, vhat_CxO, eta_C, alpha_C, mom=None, *, momentum=0.0,
                  act=jax.nn.gelu, dgd=True, q_CxD=None):
    """Token loop of `dgd_chunk` (same chunk semantics, autodiff gradients at ξ)."""
    momentum = check_momentum(momentum)
    mom = _zero_mom(mem) if mom is None else mom
    q_in = jnp.zeros_like(k_CxD) if q_CxD is None else q_CxD

    def step(carry, inp):
        q_D, *rest = inp
        run, m = _token_update(*carry, mem, *rest, momentum, act, dgd)
        return (run, m), mlp_apply(run, q_D[None], act)[0]

    (run, mom), y = jax.lax.scan(step, (mem, mom), (q_in, k_CxD, vhat_CxO, eta_C, alpha_C))
    return (run, mom) if q_CxD is None else (run, mom, y)


def _gate_logit(mem, x_NxD, act):
    return mlp_apply(mem, x_NxD, act)[:, 0] + mem["b"]


def _stack(tree: dict, names):
    return jax.tree.map(lambda *a: jnp.stack(a), *[tree[n] for n in names])


def _unstack(stacked, names) -> dict:
    return {n: jax.tree.map(lambda a, i=i: a[i], stacked) for i, n in enumerate(names)}


def _map_apply(stacked, z_NxD, act):
    """M(z) for every memory of a stacked group: [G, N, O]."""
    return jax.vmap(lambda m: mlp_apply(m, z_NxD, act))(stacked)


def selfmod_titans_reference(params0, x_TxD, q_TxD=None, *, chunk_size: int,
                             chunk_size_mem=None, eta_scale: float, momentum: float = 0.0,
                             mom0=None, qk_norm: bool = True, v_norm: bool = False,
                             act=jax.nn.gelu, mem_read: str = "dual", dgd: bool = True,
                             retention: bool = True, frozen: tuple = ()):
    """Token loop of `selfmod_titans`: snapshots refreshed on each chunk grid, autodiff grads.

    Same semantics and switches; reads y_t from the running M_mem after token t's write
    (mem_read="dual") or from its snapshot ("boundary"). chunk sizes, eta_scale and
    momentum may also be traced scalars (one jit for many configurations in tests); only
    Python numbers are validated.
    """
    if all(isinstance(a, (int, float)) for a in (chunk_size, eta_scale, momentum)):
        chunk_size_mem, momentum = _validate(params0, x_TxD, q_TxD, chunk_size, chunk_size_mem,
                                             eta_scale, momentum, mem_read, frozen)
    chunk_size_mem = chunk_size if chunk_size_mem is None else chunk_size_mem
    T = x_TxD.shape[0]
    mems0 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params0)
    moms0 = {n: _zero_mom(m) for n, m in mems0.items()} if mom0 is None else mom0
    norm = l2norm if qk_norm else (lambda a: a)
    q_in = jnp.zeros_like(x_TxD, jnp.float32) if q_TxD is None else jnp.asarray(q_TxD, jnp.float32)
    groups = _groups(params0)
    live = tuple(jnp.asarray([0.0 if n in frozen else 1.0 for n in g], jnp.float32)
                 for g in groups)
    periods = (chunk_size, chunk_size, chunk_size_mem)
    upd = jax.vmap(_token_update, in_axes=(0, 0, 0, None, 0, 0, 0, None, None, None))

    def step(carry, inp):
        run, snap, moms = carry  # tuples over groups of stacked memories
        t, x_D, q_D = inp
        snap = tuple(jax.tree.map(lambda r, s, c=c: jnp.where(t % c == 0, r, s), r_g, s_g)
                     for r_g, s_g, c in zip(run, snap, periods))
        sn = {n: m for g, s_g in zip(groups, snap) for n, m in _unstack(s_g, g).items()}
        x_1xD = x_D[None]
        k_D = norm(mlp_apply(sn["k"], x_1xD, act))[0]
        v_D = mlp_apply(sn["v"], x_1xD, act)[0]
        v_D = l2norm(v_D) if v_norm else v_D
        eta = eta_scale * jax.nn.softplus(_gate_logit(sn["eta"], x_1xD, act)[0])
        alpha = jax.nn.sigmoid(_gate_logit(sn["alpha"], x_1xD, act)[0]) if retention else 1.0
        q_1xD = norm(mlp_apply(sn["q"], x_1xD, act) if "q" in sn else q_D[None])
        new = []
        for r_g, m_g, s_g, live_g in zip(run, moms, snap, live):
            vhat = _map_apply(s_g, v_D[None], act)[:, 0]
            eta_g = live_g * eta
            alpha_g = live_g * alpha + (1.0 - live_g)
            new.append(upd(r_g, m_g, s_g, k_D, vhat, eta_g, alpha_g, momentum, act, dgd))
        mem_now = _unstack(new[2][0] if mem_read == "dual" else snap[2], groups[2])["mem"]
        y_D = mlp_apply(mem_now, q_1xD, act)[0]
        return (tuple(n[0] for n in new), snap, tuple(n[1] for n in new)), y_D

    run0 = (_stack(mems0, groups[0]), _stack(mems0, groups[1]), _stack(mems0, groups[2]))
    mom_0 = (_stack(moms0, groups[0]), _stack(moms0, groups[1]), _stack(moms0, groups[2]))
    xs = (jnp.arange(T), jnp.asarray(x_TxD, jnp.float32), q_in)
    (run, _, moms), y = jax.lax.scan(step, (run0, run0, mom_0), xs)
    mems = {n: v for g, r in zip(groups, run) for n, v in _unstack(r, g).items()}
    moms = {n: v for g, r in zip(groups, moms) for n, v in _unstack(r, g).items()}
    return y.astype(x_TxD.dtype), (mems, moms)


# --------------------------------------------------------------- linear DGD memory
def dgd_linear(q_TxK, k_TxK, v_TxV, eta_T, alpha_T, W0_KxV, S0_KxV, chunk_size: int, *,
               momentum: float = 0.0, remat_group: int = 0):
    """Linear matrix memory with DGD + retention (paper Eq. 93, row convention), chunked.

    Prediction k W; gradient at the chunk-start state W_ξ:
        S_t = β S_{t-1} − η_t k_tᵀ (k_t W_ξ − v_t),   W_t = (α_t I − η_t k_t k_tᵀ) W_{t-1} + S_t
    Reads use the chunk-start state: o_t = q_t W_ξ (chunk_size 1: read before write).
    q,k [T,K], v [T,V], eta (step) and alpha (retention, 1 keeps) [T], W0,S0 [K,V].
    S0 only matters for momentum β > 0. Returns o [T,V], (W_T, S_T).
    """
    T = q_TxK.shape[0]
    n = check_chunks(T, chunk_size)
    momentum = check_momentum(momentum)

    def step(carry, inp):
        W_KxV, S_KxV = carry
        q_CxK, k_CxK, v_CxV, eta_C, la_C = inp
        kW_CxV = k_CxK @ W_KxV
        dec = decays(la_C, eta_C, momentum)
        new = input_side_chunk(W_KxV, S_KxV, k_CxK, kW_CxV, kW_CxV - v_CxV, dec, momentum)
        return new, q_CxK @ W_KxV

    xs = (q_TxK, k_TxK, v_TxV, eta_T, log_retention(alpha_T))
    xs = jax.tree.map(lambda a: a.reshape((n, chunk_size) + a.shape[1:]), xs)
    (W, S), o_NxCxV = chunked_scan(step, (W0_KxV, S0_KxV), xs, remat_group)
    return o_NxCxV.reshape(T, -1), (W, S)


def dgd_linear_reference(q_TxK, k_TxK, v_TxV, eta_T, alpha_T, W0_KxV, S0_KxV,
                         chunk_size: int, *, momentum: float = 0.0):
    """Token loop with the same semantics as `dgd_linear` (autodiff inner gradient).

    chunk_size and momentum may be traced scalars (validated only as Python numbers).
    """
    T = q_TxK.shape[0]
    if isinstance(chunk_size, int) and isinstance(momentum, (int, float)):
        check_chunks(T, chunk_size)
        momentum = check_momentum(momentum)
    eye_KxK = jnp.eye(k_TxK.shape[1], dtype=W0_KxV.dtype)

    def loss(W, k_K, v_V):
        return 0.5 * jnp.sum((k_K @ W - v_V) ** 2)

    def step(carry, inp):
        W, S, W_snap = carry
        t, q_K, k_K, v_V, eta, alpha = inp
        W_snap = jnp.where(t % chunk_size == 0, W, W_snap)
        g = jax.grad(loss)(W_snap, k_K, v_V)
        S = momentum * S - eta * g
        W = (alpha * eye_KxK - eta * jnp.outer(k_K, k_K)) @ W + S
        return (W, S, W_snap), q_K @ W_snap

    xs = (jnp.arange(T), q_TxK, k_TxK, v_TxV, eta_T, alpha_T)
    (W, S, _), o_TxV = jax.lax.scan(step, (W0_KxV, S0_KxV, W0_KxV), xs)
    return o_TxV, (W, S)
