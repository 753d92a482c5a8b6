"""HOPE's self-modifying Titans (NL §8, Eqs. 79–93; docs/memories.md): pure functions, one
head of one sequence.

A memory is a residual two-layer MLP, row convention:  M(z) = z·P + σ(z A) B
A [D,H] input side, B [H,O] output side, P the skip: identity when D == O (absent),
else a slow [D,O] matrix (outer-trained only). Memory pytree: {"A", "B"[, "P"][, "b"]};
"b" is the slow scalar bias of a gate memory (added to the gate logit only).
Inner loss ½‖M(k) − v̂‖², gradients at the chunk-start state ξ (σ = GELU by default):
    e_t = M_ξ(k_t) − v̂_t,  z_t = k_t A_ξ,  a_t = σ(z_t),  d_t = (e_t B_ξᵀ) ⊙ σ'(z_t)
    S^A_t = β S^A_{t-1} − η_t k_tᵀ d_t,   A_t = (α_t I − η_t k_t k_tᵀ) A_{t-1} + S^A_t
    S^B_t = β S^B_{t-1} − η_t a_tᵀ e_t,   B_t = α_t B_{t-1} + S^B_t
(k_t k_tᵀ is the D×D outer product, k_tᵀ d_t the D×H one.) β = `momentum`: constant,
Titans-style momentum on the gradient term (η inside, as Titans' S_t); β = 0 is plain DGD.
Chunk algebra in `delta_rule.py`: WY/UT triangular solve for A, scalar decay for B.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from nested_jax.ops.delta_rule import (  # noqa: F401  (dgd_linear re-exported)
    check_chunks,
    check_momentum,
    decays,
    dgd_linear,
    dgd_linear_reference,
    input_side_chunk,
    input_side_read,
    input_side_solve,
    log_retention,
    output_side_chunk,
    output_side_read,
)
from nested_jax.ops.scan import chunked_scan

GATES = ("eta", "alpha")
MEM_READS = ("dual", "boundary")  # M_mem read after the in-chunk writes | at the chunk start


def mlp_apply(mem: dict, z_NxD, act=jax.nn.gelu):
    """M(z) = z·P (or z) + σ(z A) B, without the gate bias."""
    skip_NxO = z_NxD @ mem["P"] if "P" in mem else z_NxD
    return skip_NxO + act(z_NxD @ mem["A"]) @ mem["B"]


def l2norm(x_NxD, eps: float = 1e-12):
    return x_NxD * jax.lax.rsqrt(jnp.sum(x_NxD * x_NxD, axis=-1, keepdims=True) + eps)


def _zero_mom(mem: dict) -> dict:
    return {"A": jnp.zeros_like(mem["A"]), "B": jnp.zeros_like(mem["B"])}


def _chunk_start(mem, k_CxD, vhat_CxO, act):
    """Forward and backward of the inner loss at the chunk-start state ξ (module docstring)."""
    A_DxH, B_HxO = mem["A"], mem["B"]
    z_CxH = k_CxD @ A_DxH
    a_CxH, da_CxH = jax.jvp(act, (z_CxH,), (jnp.ones_like(z_CxH),))
    skip_CxO = k_CxD @ mem["P"] if "P" in mem else k_CxD
    e_CxO = skip_CxO + a_CxH @ B_HxO - vhat_CxO
    d_CxH = (e_CxO @ B_HxO.T) * da_CxH
    return z_CxH, a_CxH, e_CxO, d_CxH


def _dgd_chunk_log(mem, mom, k_CxD, vhat_CxO, eta_C, log_alpha_C, momentum, act, dgd=True,
                   q_CxD=None):
    """One chunk of DGD with log α given (finite for α → 0): (memory, momentum, reads).

    reads (only when q is given): y_t = M_t(q_t), the memory after the in-chunk writes up
    to t, from the dual form (`input_side_read`, `output_side_read`); else None.
    dgd=False drops the rank-1 k kᵀ term (plain GD with retention, NL Table 6 "DGD → GD").
    """
    A_DxH, B_HxO = mem["A"], mem["B"]
    z_CxH, a_CxH, e_CxO, d_CxH = _chunk_start(mem, k_CxD, vhat_CxO, act)
    dec = decays(log_alpha_C, eta_C, momentum)
    if dgd:
        u_CxH = input_side_solve(k_CxD, z_CxH, mom["A"], d_CxH, dec, momentum)
        A_new, SA = input_side_chunk(A_DxH, mom["A"], k_CxD, z_CxH, d_CxH, dec, momentum, u_CxH)
    else:
        A_new, SA = output_side_chunk(A_DxH, mom["A"], k_CxD, d_CxH, dec, momentum)
    B_new, SB = output_side_chunk(B_HxO, mom["B"], a_CxH, e_CxO, dec, momentum)
    y_CxO = None
    if q_CxD is not None:
        qS0_CxH = q_CxD @ mom["A"] if momentum else None
        if dgd:
            zq_CxH = input_side_read(q_CxD, q_CxD @ A_DxH, qS0_CxH, k_CxD, u_CxH, d_CxH, dec,
                                     momentum)
        else:
            zq_CxH = output_side_read(q_CxD, q_CxD @ A_DxH, qS0_CxH, k_CxD, d_CxH, dec, momentum)
        abar_CxH = act(zq_CxH)
        aS0_CxO = abar_CxH @ mom["B"] if momentum else None
        skip_CxO = q_CxD @ mem["P"] if "P" in mem else q_CxD
        y_CxO = skip_CxO + output_side_read(abar_CxH, abar_CxH @ B_HxO, aS0_CxO, a_CxH, e_CxO,
                                            dec, momentum)
    return {**mem, "A": A_new, "B": B_new}, {"A": SA, "B": SB}, y_CxO


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


def _groups(params0) -> tuple[tuple[str, ...], ...]:
    """Memories with equal shapes, stacked and vmapped together: (k, v[, q]), (η, α), (mem,)."""
    return (("k", "v") + (("q",) if "q" in params0 else ()), GATES, ("mem",))


def _stack(tree: dict, names):
    return jax.tree.map(lambda *a: jnp.stack(a), *[tree[n] for n in names])


def _unstack(stacked, names) -> dict:
    return {n: jax.tree.map(lambda a, i=i: a[i], stacked) for i, n in enumerate(names)}


def _map_apply(stacked, z_NxD, act):
    """M(z) for every memory of a stacked group: [G, N, O]."""
    return jax.vmap(lambda m: mlp_apply(m, z_NxD, act))(stacked)


def _read(sq, gates, x_NxD, eta_scale, qk_norm, v_norm, retention, act):
    """k, v, η, log α (and q if adaptive) from the stacked (k, v[, q]) and (η, α) memories."""
    norm = l2norm if qk_norm else (lambda a: a)
    v_fn = l2norm if v_norm else (lambda a: a)
    out_GxNxD = _map_apply(sq, x_NxD, act)
    logit_2xN = jax.vmap(lambda m: _gate_logit(m, x_NxD, act))(gates)
    eta_N = eta_scale * jax.nn.softplus(logit_2xN[0])
    log_alpha_N = jax.nn.log_sigmoid(logit_2xN[1]) if retention else jnp.zeros_like(eta_N)
    q_NxD = norm(out_GxNxD[2]) if out_GxNxD.shape[0] > 2 else None
    return norm(out_GxNxD[0]), v_fn(out_GxNxD[1]), eta_N, log_alpha_N, q_NxD


def _validate(params0, x_TxD, q_TxD, chunk_size, chunk_size_mem, eta_scale, momentum,
              mem_read="dual", frozen=()):
    T = x_TxD.shape[0]
    chunk_size_mem = chunk_size if chunk_size_mem is None else chunk_size_mem
    check_chunks(T, chunk_size, "chunk_size")
    check_chunks(T, chunk_size_mem, "chunk_size_mem")
    if ("q" in params0) == (q_TxD is not None):
        raise ValueError("pass q iff params0 has no adaptive 'q' memory (then q = M_q(x)).")
    if eta_scale < 0:
        raise ValueError(f"eta_scale={eta_scale} must be >= 0.")
    missing = {"k", "v", "eta", "alpha", "mem"} - set(params0)
    if missing:
        raise ValueError(f"params0 lacks memories {sorted(missing)}.")
    if mem_read not in MEM_READS:
        raise ValueError(f"mem_read={mem_read!r}; choose one of {MEM_READS}.")
    bad = set(frozen) - {"k", "v", "q"}
    if bad:
        raise ValueError(f"frozen={tuple(frozen)}: only the projection memories k, v, q can be "
                         f"frozen (not {sorted(bad)}).")
    return chunk_size_mem, check_momentum(momentum)


def selfmod_titans(params0, x_TxD, q_TxD=None, *, chunk_size: int, chunk_size_mem=None,
                   eta_scale: float, momentum: float = 0.0, mom0=None, qk_norm: bool = True,
                   v_norm: bool = False, remat_group: int = 0, act=jax.nn.gelu,
                   mem_read: str = "dual", dgd: bool = True, retention: bool = True,
                   frozen: tuple = ()):
    """Self-modifying Titans (NL §8.1–8.2, Eqs. 83–93), one head: y [T,D], (memories, momenta).

    params0: {"k","v","eta","alpha","mem"[,"q"]} memories (see `init_selfmod_params`),
    the meta-learned initial states M_□,0; mom0 the same keys with {"A","B"} (None: zeros).
    Per token, the projections read their memories at their last chunk boundary ξ
    ("generated at the end of each chunk for the next", §8.2; chunk_size for k, v, q, η, α):
        k_t = norm(M_k,ξ(x_t)), v_t = M_v,ξ(x_t), q_t = norm(q_t) (or norm(M_q,ξ(x_t)))
        η_t = eta_scale·softplus(M_η,ξ(x_t) + b_η),  α_t = sigmoid(M_α,ξ(x_t) + b_α)
        v̂_□,t = M_□,ξ(v_t)                                     (self-generated targets, Eq. 84)
    every memory takes the DGD step of the module docstring on (k_t, v̂_□,t) (Eq. 88, gradients
    at ξ, Eqs. 90–93), and the output memory (chunk_size_mem) is read
        mem_read="dual":     y_t = M_mem,t(q_t), after the in-chunk writes up to t (the dual
                             form, §8.2: an output sees its own chunk);
        mem_read="boundary": y_t = M_mem,ξ(q_t) (ablation: blind to its own chunk).
    v̂ is a constant of the inner loss only (the chunk form never differentiates the inner
    loss wrt it); the outer gradient flows through v̂ into v_t = M_v(x_t), so every M_□,0,
    M_v included, is meta-learned (§8.1). Outer gradients flow through reads and writes.
    Ablation switches (NL Table 6): dgd=False drops the k kᵀ term (DGD → GD);
    retention=False fixes α ≡ 1 (no weight decay); frozen ⊆ {"k","v","q"} keeps those
    projection memories at M_□,0 ("w/o inner k / v / q"); momentum β > 0 adds Titans-style
    momentum on the gradient term.
    v_norm (not in the paper) also ℓ2-normalises v: the self-targets M(v) then live on the
    unit sphere with the keys. Stability: the self-target loop amplifies when ‖x_t‖, ‖v_t‖ ≫
    ‖k_t‖ = 1 and can diverge within tens of tokens for eta_scale ≳ 0.05; feed ‖x_t‖ ≈ 1,
    keep eta_scale small (1e-3 in the PyTorch reproduction) or set v_norm.
    Any two chunk sizes dividing T work: k, v, q, η, α never depend on M_mem, so one scan
    runs the other memories at chunk_size, a second runs M_mem at chunk_size_mem.
    remat_group: chunks per rematerialised group in each scan (must divide both chunk
    counts; 0 = off). Inputs may be bf16: the state and all math are float32, y has x's dtype.
    """
    chunk_size_mem, momentum = _validate(params0, x_TxD, q_TxD, chunk_size, chunk_size_mem,
                                         eta_scale, momentum, mem_read, frozen)
    T = x_TxD.shape[0]
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    mems0 = jax.tree.map(f32, params0)
    moms0 = {n: _zero_mom(m) for n, m in mems0.items()} if mom0 is None else jax.tree.map(f32, mom0)
    sq_names, gate_names, _ = _groups(params0)
    live_G = jnp.asarray([0.0 if n in frozen else 1.0 for n in sq_names], jnp.float32)
    upd = jax.vmap(lambda m, s, k, vh, eta, la: _dgd_chunk_log(m, s, k, vh, eta, la, momentum,
                                                               act, dgd)[:2],
                   in_axes=(0, 0, None, 0, 0, 0))

    def others_step(carry, x_CxD):
        (sq, sq_s), (gt, gt_s) = carry
        k, v, eta, la, q = _read(sq, gt, x_CxD, eta_scale, qk_norm, v_norm, retention, act)
        # A frozen memory takes no step (η = 0) and keeps everything (log α = 0).
        eta_sq, la_sq = live_G[:, None] * eta[None], live_G[:, None] * la[None]
        eta_gt, la_gt = jnp.broadcast_to(eta, (2,) + eta.shape), jnp.broadcast_to(la, (2,) + la.shape)
        new = (upd(sq, sq_s, k, _map_apply(sq, v, act), eta_sq, la_sq),
               upd(gt, gt_s, k, _map_apply(gt, v, act), eta_gt, la_gt))
        return new, (k, v, eta, la, q)

    def mem_step(carry, inp):
        mem, mom = carry
        q_CxD, k_CxD, v_CxD, eta_C, la_C = inp
        vhat = mlp_apply(mem, v_CxD, act)
        q_read = q_CxD if mem_read == "dual" else None
        new, new_mom, y = _dgd_chunk_log(mem, mom, k_CxD, vhat, eta_C, la_C, momentum, act, dgd,
                                         q_read)
        return (new, new_mom), (mlp_apply(mem, q_CxD, act) if y is None else y)

    def chunks(a, c):
        return a.reshape((T // c, c) + a.shape[1:])

    carry0 = tuple((_stack(mems0, g), _stack(moms0, g)) for g in (sq_names, gate_names))
    x32 = f32(x_TxD)
    (sq, gt), reads = chunked_scan(others_step, carry0, chunks(x32, chunk_size), remat_group)
    k, v, eta, la, q_ad = jax.tree.map(lambda a: a.reshape((T,) + a.shape[2:]), reads)
    if q_ad is None:
        q_ad = l2norm(f32(q_TxD)) if qk_norm else f32(q_TxD)
    xs = jax.tree.map(lambda a: chunks(a, chunk_size_mem), (q_ad, k, v, eta, la))
    (m_m, s_m), y = chunked_scan(mem_step, (mems0["mem"], moms0["mem"]), xs, remat_group)
    mems = {**_unstack(sq[0], sq_names), **_unstack(gt[0], gate_names), "mem": m_m}
    moms = {**_unstack(sq[1], sq_names), **_unstack(gt[1], gate_names), "mem": s_m}
    return y.reshape(T, -1).astype(x_TxD.dtype), (mems, moms)


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
        v_D = v_D * jax.lax.rsqrt(jnp.sum(v_D * v_D) + 1e-12) if v_norm else v_D
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


def init_selfmod_params(key, d: int, hidden: int, *, adaptive_q: bool = False,
                        out_scale: float = 0.1, alpha_init: float = 0.99) -> dict:
    """params0 for one head: near-identity memories, α ≈ alpha_init, η ≈ eta_scale.

    A ~ N(0, 1/d) (σ(xA) is O(1) for O(1)-entry inputs), B ~ N(0, out_scale²/hidden),
    so M ≈ skip at init. Gate memories (D→1): P = 0, bias b_α = logit(alpha_init),
    b_η = softplus⁻¹(1) so that η_t = eta_scale·softplus(·) starts at ≈ eta_scale.
    """
    names = ("k", "v", "mem") + (("q",) if adaptive_q else ()) + GATES
    params = {}
    for n, kn in zip(names, jax.random.split(key, len(names))):
        ka, kb = jax.random.split(kn)
        out = 1 if n in GATES else d
        params[n] = {
            "A": jax.random.normal(ka, (d, hidden), jnp.float32) / math.sqrt(d),
            "B": jax.random.normal(kb, (hidden, out), jnp.float32) * out_scale / math.sqrt(hidden),
        }
    params["eta"].update(P=jnp.zeros((d, 1)), b=jnp.asarray(math.log(math.e - 1.0), jnp.float32))
    b_alpha = math.log(alpha_init / (1.0 - alpha_init))
    params["alpha"].update(P=jnp.zeros((d, 1)), b=jnp.asarray(b_alpha, jnp.float32))
    return params
