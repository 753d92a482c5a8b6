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
import numpy as np

from nested_jax.ops.delta_rule import (
    check_chunks,
    check_momentum,
    chunk_coeffs,
    decays,
    input_side_chunk,
    input_side_read,
    input_side_solve,
    output_side_chunk,
    output_side_read,
)
from nested_jax.ops.norms import l2norm
from nested_jax.ops.scan import chunked_scan

GATES = ("eta", "alpha")
MEM_READS = ("dual", "boundary")  # M_mem read after the in-chunk writes | at the chunk start


def mlp_apply(mem: dict, z_NxD, act=jax.nn.gelu):
    """M(z) = z·P (or z) + σ(z A) B, without the gate bias."""
    skip_NxO = z_NxD @ mem["P"] if "P" in mem else z_NxD
    return skip_NxO + act(z_NxD @ mem["A"]) @ mem["B"]




def _zero_mom(mem: dict) -> dict:
    return {"A": jnp.zeros_like(mem["A"]), "B": jnp.zeros_like(mem["B"])}


def _skip(P_gxDxO, z_CxD):
    """The skip path of a stacked group: z·P ([g,C,O]) or z itself (P None: identity)."""
    return z_CxD[None] if P_gxDxO is None else jnp.einsum("cd,gdo->gco", z_CxD, P_gxDxO)


def _map_groups(A_DxGH, outs, z_CxD, act):
    """M(z) for memories whose input sides sit side by side in A [D, G·H] (memory g owns
    columns g·H…(g+1)·H) and whose output sides come in groups [(B [g,H,O], P [g,D,O] or
    None)] in A's order: one z·A for all G, one batched σ(zA)·B per group."""
    G = sum(B.shape[0] for B, _ in outs)
    a_CxGxH = act(z_CxD @ A_DxGH).reshape(z_CxD.shape[0], G, -1)
    res, lo = [], 0
    for B, P in outs:
        hi = lo + B.shape[0]
        res.append(_skip(P, z_CxD) + jnp.einsum("cgh,gho->gco", a_CxGxH[:, lo:hi], B))
        lo = hi
    return res


def _chunk_groups(A_DxGH, SA_DxGH, groups, k_CxD, dec, momentum, act, dgd=True, q_CxD=None,
                  v_CxD=None):
    """One chunk of DGD (module docstring, NL Eq. 88, gradients at ξ) for G memories that
    share the keys k and the gates (dec: `decays`, or `chunk_coeffs` with the WY/UT inverse
    and read masks precomputed). The input-side recurrence acts on each column on its own,
    so the G input sides sit side by side as one wide memory A, momentum SA [D, G·H]
    (memory g owns columns g·H…(g+1)·H): one WY/UT solve, one update, for all of them.
    Output sides come in groups of equal shape, in A's order: {"B", "SB" [g,H,O], "P"
    [g,D,O] or None (identity skip), targets "vhat" [g,C,O]}; with v [C,D] instead, every
    memory regresses its own self-generated target v̂ = M_ξ(v) (NL Eq. 84), and its error is
    e = M_ξ(k) − M_ξ(v) = (k − v)·P + (σ(kA) − σ(vA))·B.
    Returns (A, SA, [(B, SB)] per group, reads): reads, only with q [C,D], are
    y_t = M_t(q_t) after the in-chunk writes up to t, [g,C,O] per group (dual form)."""
    C = k_CxD.shape[0]
    G = sum(g["B"].shape[0] for g in groups)
    bounds = np.cumsum([0] + [g["B"].shape[0] for g in groups])
    sl = [slice(int(lo), int(hi)) for lo, hi in zip(bounds[:-1], bounds[1:])]
    rows = [k_CxD] + [r for r in (v_CxD, q_CxD) if r is not None]  # k, v, q meet A at once
    z_RxGH = (jnp.concatenate(rows) if len(rows) > 1 else k_CxD) @ A_DxGH
    z_CxGH = z_RxGH[:C]
    # forward and backward of the inner loss at the chunk-start state ξ
    a_CxGH, da_CxGH = jax.jvp(act, (z_CxGH,), (jnp.ones_like(z_CxGH),))
    a_CxGxH = a_CxGH.reshape(C, G, -1)
    if v_CxD is not None:
        a_minus_av = (a_CxGH - act(z_RxGH[C:2 * C])).reshape(C, G, -1)
    errs, back = [], []
    for g, s in zip(groups, sl):
        if v_CxD is None:
            e_gxCxO = (_skip(g["P"], k_CxD) + jnp.einsum("cgh,gho->gco", a_CxGxH[:, s], g["B"])
                       - g["vhat"])
        else:
            e_gxCxO = (_skip(g["P"], k_CxD - v_CxD)
                       + jnp.einsum("cgh,gho->gco", a_minus_av[:, s], g["B"]))
        errs.append(e_gxCxO)
        back.append(jnp.einsum("gco,gho->cgh", e_gxCxO, g["B"]))
    d_CxGH = (back[0] if len(back) == 1 else jnp.concatenate(back, axis=1)).reshape(C, -1)
    d_CxGH = d_CxGH * da_CxGH
    # input side: the rank-1 DGD term (WY/UT solve) or plain GD, all G memories at once
    u_CxGH = None
    if dgd:
        u_CxGH = input_side_solve(k_CxD, z_CxGH, SA_DxGH, d_CxGH, dec, momentum)
        A_new, SA_new = input_side_chunk(A_DxGH, SA_DxGH, k_CxD, z_CxGH, d_CxGH, dec,
                                         momentum, u_CxGH)
    else:
        A_new, SA_new = output_side_chunk(A_DxGH, SA_DxGH, k_CxD, d_CxGH, dec, momentum)
    out_side = jax.vmap(lambda B, SB, a, e: output_side_chunk(B, SB, a, e, dec, momentum),
                        in_axes=(0, 0, 1, 0))
    outs = [out_side(g["B"], g["SB"], a_CxGxH[:, s], e) for g, s, e in zip(groups, sl, errs)]
    if q_CxD is None:
        return A_new, SA_new, outs, None
    # reads after the in-chunk writes (dual form)
    zq0_CxGH = z_RxGH[-C:]
    qS0_CxGH = q_CxD @ SA_DxGH if momentum else None
    if dgd:
        zq_CxGH = input_side_read(q_CxD, zq0_CxGH, qS0_CxGH, k_CxD, u_CxGH, d_CxGH, dec,
                                  momentum)
    else:
        zq_CxGH = output_side_read(q_CxD, zq0_CxGH, qS0_CxGH, k_CxD, d_CxGH, dec, momentum)
    abar_CxGxH = act(zq_CxGH).reshape(C, G, -1)
    read_out = jax.vmap(lambda ab, aB, aS0, a, e: output_side_read(ab, aB, aS0, a, e, dec,
                                                                   momentum),
                        in_axes=(1, 0, 0, 1, 0))
    reads = []
    for g, s, e in zip(groups, sl, errs):
        ab = abar_CxGxH[:, s]
        aS0 = jnp.einsum("cgh,gho->gco", ab, g["SB"]) if momentum else None
        reads.append(_skip(g["P"], q_CxD) + read_out(
            ab, jnp.einsum("cgh,gho->gco", ab, g["B"]), aS0, a_CxGxH[:, s], e))
    return A_new, SA_new, outs, reads


def _one_group(mem, mom, vhat_CxO=None):
    """A single memory as a group of `_chunk_groups` (leading axis of 1)."""
    grp = {"B": mem["B"][None], "SB": mom["B"][None], "P": mem["P"][None] if "P" in mem else None}
    return grp if vhat_CxO is None else {**grp, "vhat": vhat_CxO[None]}


def _groups(params0) -> tuple[tuple[str, ...], ...]:
    """Memories with equal shapes, stacked and vmapped together: (k, v[, q]), (η, α), (mem,)."""
    return (("k", "v") + (("q",) if "q" in params0 else ()), GATES, ("mem",))


def _read(st, x_CxD, G1, eta_scale, qk_norm, v_norm, retention, act):
    """k, v, η, log α (and q if adaptive) from the projection memories at the chunk start,
    stacked as in `selfmod_titans` (input sides A [D,G·H]; outputs (k, v[, q]) and (η, α))."""
    norm = l2norm if qk_norm else (lambda a: a)
    v_fn = l2norm if v_norm else (lambda a: a)
    out_GxCxD, logit_2xCx1 = _map_groups(st["A"], ((st["Bq"], st["Pq"]), (st["Bg"], st["Pg"])),
                                         x_CxD, act)
    logit_2xC = logit_2xCx1[..., 0] + st["bg"][:, None]
    eta_C = eta_scale * jax.nn.softplus(logit_2xC[0])
    log_alpha_C = jax.nn.log_sigmoid(logit_2xC[1]) if retention else jnp.zeros_like(eta_C)
    q_CxD = norm(out_GxCxD[2]) if G1 > 2 else None
    return norm(out_GxCxD[0]), v_fn(out_GxCxD[1]), eta_C, log_alpha_C, q_CxD


def _keep_frozen(new, old, live_G, chunk: int, momentum: float):
    """Frozen memories (η ≡ 0, α ≡ 1) take no gradient step: X_C = X_0 + Σ_{s≤C} β^s S_0,
    S_C = β^C S_0 (momentum alone moves them; with S_0 = 0, nothing does)."""
    c_frozen = sum(momentum**s for s in range(1, chunk + 1))
    beta_c = momentum**chunk

    def pick(key, mom_key, live):
        x = jnp.where(live, new[key], old[key] + c_frozen * old[mom_key])
        s = jnp.where(live, new[mom_key], beta_c * old[mom_key])
        return {key: x, mom_key: s}

    G, g1 = len(live_G), new["Bq"].shape[0]
    live_cols = np.repeat(live_G, new["A"].shape[1] // G)  # A [D, G·H]: memory g's columns
    live_q = live_G[:g1].reshape((g1,) + (1,) * (new["Bq"].ndim - 1))
    return {**new, **pick("A", "SA", live_cols), **pick("Bq", "SBq", live_q)}


def mem_scan(mem0, mom0, q_TxD, k_TxD, v_TxD, eta_T, la_T, *, chunk_size_mem: int,
             momentum: float, act, dgd: bool, mem_read: str, remat_group: int,
             unroll_max: int):
    """M_mem's scan (NL Eq. 88 with self-targets M_mem,ξ(v)) given the projections' k, v, q,
    η, log α for every token: (y [T,O], (M_mem, its momenta)). Its keys, gates and queries
    are known before the scan, so its decays, WY/UT inverses and read masks are computed for
    all chunks at once, leaving the scan body a few matmuls."""
    dual = mem_read == "dual"
    T = k_TxD.shape[0]

    def mem_step(carry, inp):
        mem, mom = carry
        (q_CxD, k_CxD, v_CxD), dec = inp
        A, SA, ((B, SB),), reads = _chunk_groups(mem["A"], mom["A"], [_one_group(mem, mom)],
                                                 k_CxD, dec, momentum, act, dgd,
                                                 q_CxD if dual else None, v_CxD=v_CxD)
        y = reads[0][0] if dual else mlp_apply(mem, q_CxD, act)
        return ({**mem, "A": A, "B": B[0]}, {"A": SA, "B": SB[0]}), y

    q_N, k_N, v_N, eta_N, la_N = jax.tree.map(
        lambda a: a.reshape((T // chunk_size_mem, chunk_size_mem) + a.shape[1:]),
        (q_TxD, k_TxD, v_TxD, eta_T, la_T))
    coeffs = jax.vmap(lambda kk, la_c, eta_c, qq: chunk_coeffs(
        kk, la_c, eta_c, momentum, qq if dual else None, dgd))(k_N, la_N, eta_N, q_N)
    (m_m, s_m), y = chunked_scan(mem_step, (mem0, mom0), ((q_N, k_N, v_N), coeffs),
                                 remat_group, unroll_max)
    return y.reshape(T, -1), (m_m, s_m)


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
                   v_norm: bool = False, remat_group: int = 0, unroll_max: int = 1,
                   act=jax.nn.gelu,
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
    counts; 0 = off); unroll_max: chunk scans of at most this many steps are unrolled
    (model.unroll_chunks; 1 = loops). Inputs may be bf16: the state and all math are float32, y has x's dtype.
    """
    chunk_size_mem, momentum = _validate(params0, x_TxD, q_TxD, chunk_size, chunk_size_mem,
                                         eta_scale, momentum, mem_read, frozen)
    T = x_TxD.shape[0]
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    mems0 = jax.tree.map(f32, params0)
    moms0 = {n: _zero_mom(m) for n, m in mems0.items()} if mom0 is None else jax.tree.map(f32, mom0)
    sq_names, gate_names, _ = _groups(params0)
    names = sq_names + gate_names
    G1 = len(sq_names)
    live_G = np.asarray([n not in frozen for n in names])

    def stack(tree, key, group):
        if any(key not in tree[n] for n in group):
            return None
        return jnp.stack([tree[n][key] for n in group])

    # The projection memories, stacked: input sides side by side, A [D, G·H] for all G, output
    # sides in two groups of equal shape, (k, v[, q]) [G1,H,D] and the gates (η, α) [2,H,1];
    # the gates' slow skip P and bias b (and a P of the others, if any) are scan constants.
    def side_by_side(tree, group):  # input sides [D, G·H], memory g in columns g·H…(g+1)·H
        return jnp.concatenate([tree[n]["A"] for n in group], axis=-1)

    state0 = {"A": side_by_side(mems0, names), "SA": side_by_side(moms0, names),
              "Bq": stack(mems0, "B", sq_names), "SBq": stack(moms0, "B", sq_names),
              "Bg": stack(mems0, "B", gate_names), "SBg": stack(moms0, "B", gate_names)}
    consts = {"Pq": stack(mems0, "P", sq_names), "Pg": stack(mems0, "P", gate_names),
              "bg": stack(mems0, "b", gate_names)}

    def others_step(st, x_CxD):
        st_c = {**st, **consts}
        k, v, eta, la, q = _read(st_c, x_CxD, G1, eta_scale, qk_norm, v_norm, retention, act)
        groups = [{"B": st["Bq"], "SB": st["SBq"], "P": consts["Pq"]},
                  {"B": st["Bg"], "SB": st["SBg"], "P": consts["Pg"]}]
        dec = decays(la, eta, momentum)  # one set of gates for all memories
        A, SA, ((Bq, SBq), (Bg, SBg)), _ = _chunk_groups(st["A"], st["SA"], groups, k, dec,
                                                         momentum, act, dgd, v_CxD=v)
        new = {"A": A, "SA": SA, "Bq": Bq, "SBq": SBq, "Bg": Bg, "SBg": SBg}
        if not live_G.all():
            new = _keep_frozen(new, st, live_G, x_CxD.shape[0], momentum)
        return new, (k, v, eta, la, q)

    def chunks(a, c):
        return a.reshape((T // c, c) + a.shape[1:])

    x32 = f32(x_TxD)
    st, reads = chunked_scan(others_step, state0, chunks(x32, chunk_size), remat_group,
                             unroll_max)
    k, v, eta, la, q_ad = jax.tree.map(lambda a: a.reshape((T,) + a.shape[2:]), reads)
    if q_ad is None:
        q_ad = l2norm(f32(q_TxD)) if qk_norm else f32(q_TxD)
    y, (m_m, s_m) = mem_scan(mems0["mem"], moms0["mem"], q_ad, k, v, eta, la,
                             chunk_size_mem=chunk_size_mem, momentum=momentum, act=act,
                             dgd=dgd, mem_read=mem_read, remat_group=remat_group,
                             unroll_max=unroll_max)

    H = mems0["k"]["A"].shape[-1]

    def unstack(i, name, B, SB):
        cols = slice(i * H, (i + 1) * H)
        mem = {**mems0[name], "A": st["A"][:, cols], "B": B}
        return mem, {"A": st["SA"][:, cols], "B": SB}

    out = {n: unstack(i, n, st["Bq"][i], st["SBq"][i]) for i, n in enumerate(sq_names)}
    out |= {n: unstack(G1 + j, n, st["Bg"][j], st["SBg"][j]) for j, n in enumerate(gate_names)}
    mems = {**{n: m for n, (m, _) in out.items()}, "mem": m_m}
    moms = {**{n: s for n, (_, s) in out.items()}, "mem": s_m}
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
