"""HOPE's self-modifying Titans with its chunk scans as GPU kernels (Pallas; `model.selfmod.
kernel = "pallas"`).

The chunk recurrences of `selfmod.selfmod_titans` (NL §8.1–8.2, Eqs. 83–93; docs/memories.md)
are chains of ~15 dependent small matmuls per chunk, which XLA:GPU makes into ~37 kernels per
chunk step — 16 steps of the projection memories and 4 of M_mem per 128-token segment, per
layer, per pass (docs/architecture.md, "The program on a GPU"). Here each scan is one kernel
per (sequence, head) each way (`kernel_scan.scan_op`): `projection_step` is one chunk of the
k, v, η, α memories, `mem_step` one chunk of M_mem with its reads, both the module
docstring's maths of `selfmod.py` written with what the Triton lowering accepts (2-D
matmuls, no slicing, power-of-two shapes). Scope: the paper's default switches (DGD,
momentum 0, every memory learning in context, fixed q); `unsupported` names the rest.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp

from nested_jax.ops.kernel_scan import Scan, choose, not_powers_of_two, scan_op
from nested_jax.ops.kernel_scan import mm as _mm, mm_t as _mm_t, t_mm as _t_mm
from nested_jax.ops.norms import l2norm

N_IN, N_OUT, N_GATE = 4, 2, 2   # input sides (k, v, η, α), [H,D] output sides (k, v), gates


def _decays(la_C, eta_C):
    """`delta_rule.decays` (β = 0) without slices, for tokens t, s of a chunk (0-based):
    γ before / after each token (g_prev, g_next), at the chunk end (g_end), and
    Λ_prev [t,s] = η_s γ_{t-1}/γ_s (s < t), Λ_next [t,s] = η_s γ_t/γ_s (s ≤ t),
    Λ_end [s] = η_s γ_C/γ_s. Every product is the exp of a masked sum of log α (no ratios;
    the segment sums Σ_{s<m≤t} log α_m as one mask matmul)."""
    C = la_C.shape[0]
    row = jax.lax.broadcasted_iota(jnp.int32, (C, C), 0)
    col = jax.lax.broadcasted_iota(jnp.int32, (C, C), 1)
    la_rows = jnp.broadcast_to(la_C[None, :], (C, C))  # [t, m] = log α_m
    after = (row > col).astype(jnp.float32)  # [m, s] = [s < m]
    seg_next = _mm(jnp.where(col <= row, la_rows, 0.0), after)  # Σ_{s<m≤t}
    seg_prev = _mm(jnp.where(col < row, la_rows, 0.0), after)   # Σ_{s<m<t}
    g_prev = jnp.exp(jnp.sum(jnp.where(col < row, la_rows, 0.0), axis=1))
    g_next = jnp.exp(jnp.sum(jnp.where(col <= row, la_rows, 0.0), axis=1))
    g_end = jnp.exp(jnp.sum(la_C))
    lam_end = jnp.exp(jnp.sum(jnp.where(row > col, jnp.broadcast_to(la_C[:, None], (C, C)),
                                        0.0), axis=0)) * eta_C
    lam_prev = jnp.where(col < row, jnp.exp(seg_prev), 0.0) * eta_C[None, :]
    lam_next = jnp.where(col <= row, jnp.exp(seg_next), 0.0) * eta_C[None, :]
    return g_prev, g_next, g_end, lam_prev, lam_next, lam_end


def _unit_lower_inverse(l_CxC):
    """(I + l)⁻¹ for strictly lower l by doubling (as `delta_rule._doubling_inverse`)."""
    C = l_CxC.shape[0]
    eye = (jax.lax.broadcasted_iota(jnp.int32, (C, C), 0)
           == jax.lax.broadcasted_iota(jnp.int32, (C, C), 1)).astype(jnp.float32)
    M = -l_CxC
    T = eye + M
    span = 2
    while span < C:
        M = _mm(M, M)
        T = T + _mm(T, M)
        span *= 2
    return T


def projection_step(state, consts, tokens, with_moms: bool, *, eta_scale: float,
                    retention: bool, v_norm: bool, qk_norm: bool):
    """One chunk of the projection memories (selfmod.py's module docstring, β = 0, DGD):
    the reads at the chunk-start state ξ, then every memory's step on (k, v̂ = M_ξ(v)).
    state = (A: 4 × [D,H] (k, v, η, α), Bo: 2 × [H,D] (k, v), Bg: 2 × [H] (η, α));
    consts = (Pg: 2 × [D] the gates' skips, bg: 2 scalars their biases); tokens = (x [C,D],).
    Returns (new state, reads (k, v, η, log α), momenta (β = 0: S = −η_C g_C) or None)."""
    A, Bo, Bg = state
    Pg, bg = consts
    (x_CxD,) = tokens
    C = x_CxD.shape[0]
    act = jax.nn.gelu
    # reads at ξ (NL Eqs. 83–84): k = norm(M_k(x)), v = M_v(x), η, α from the gate memories
    ax = [act(_mm(x_CxD, A[g])) for g in range(N_IN)]
    out = [x_CxD + _mm(ax[i], Bo[i]) for i in range(N_OUT)]
    logit = [jnp.sum(x_CxD * Pg[j][None, :], axis=1) + jnp.sum(ax[N_OUT + j] * Bg[j][None, :],
                                                                axis=1) + bg[j]
             for j in range(N_GATE)]
    eta = eta_scale * jax.nn.softplus(logit[0])
    la = jax.nn.log_sigmoid(logit[1]) if retention else jnp.zeros_like(eta)
    k = l2norm(out[0]) if qk_norm else out[0]
    v = l2norm(out[1]) if v_norm else out[1]
    g_prev, _, g_end, lam_prev, _, lam_end = _decays(la, eta)
    # DGD at ξ with self-generated targets (Eq. 88): e = M_ξ(k) − M_ξ(v)
    z = [_mm(k, A[g]) for g in range(N_IN)]
    a, da = zip(*[jax.jvp(act, (zg,), (jnp.ones_like(zg),)) for zg in z])
    amv = [a[g] - act(_mm(v, A[g])) for g in range(N_IN)]
    kmv = k - v
    e = [kmv + _mm(amv[i], Bo[i]) for i in range(N_OUT)]
    e += [jnp.sum(kmv * Pg[j][None, :], axis=1) + jnp.sum(amv[N_OUT + j] * Bg[j][None, :], axis=1)
          for j in range(N_GATE)]
    d = [_mm_t(e[i], Bo[i]) * da[i] for i in range(N_OUT)]
    d += [e[N_OUT + j][:, None] * Bg[j][None, :] * da[N_OUT + j] for j in range(N_GATE)]
    # input sides: the WY/UT solve, one inverse for all four memories
    T = _unit_lower_inverse(_mm_t(k, k) * lam_prev)
    u = [_mm(T, g_prev[:, None] * z[g] + d[g]) for g in range(N_IN)]
    A_new = tuple(g_end * A[g] - _t_mm(k, lam_end[:, None] * u[g]) for g in range(N_IN))
    Bo_new = tuple(g_end * Bo[i] - _t_mm(a[i], lam_end[:, None] * e[i]) for i in range(N_OUT))
    Bg_new = tuple(g_end * Bg[j] - jnp.sum(a[N_OUT + j] * (lam_end * e[N_OUT + j])[:, None],
                                           axis=0) for j in range(N_GATE))
    moms = None
    if with_moms:  # β = 0: S_C = −η_C g_C, the last token's gradient
        last = jax.lax.broadcasted_iota(jnp.int32, (C,), 0) == C - 1
        w = jnp.where(last, eta, 0.0)
        moms = (tuple(-_t_mm(k, w[:, None] * d[g]) for g in range(N_IN)),
                tuple(-_t_mm(a[i], w[:, None] * e[i]) for i in range(N_OUT)),
                tuple(-jnp.sum(a[N_OUT + j] * (w * e[N_OUT + j])[:, None], axis=0)
                      for j in range(N_GATE)))
    return (A_new, Bo_new, Bg_new), (k, v, eta, la), moms


def mem_step(state, consts, tokens, with_moms: bool, *, dual: bool):
    """One chunk of M_mem (the same DGD step, `selfmod.mem_scan`), reading y = M_mem(q):
    dual=True after the in-chunk writes up to t (NL §8.2), else at the chunk start ξ.
    state = ((A [D,H],), (B [H,D],)); tokens = (q, k, v [C,D], η, log α [C]); outputs (y,)."""
    del consts
    (A,), (B,) = state
    q, k, v, eta, la = tokens
    C = k.shape[0]
    act = jax.nn.gelu
    g_prev, g_next, g_end, lam_prev, lam_next, lam_end = _decays(la, eta)
    z = _mm(k, A)
    a, da = jax.jvp(act, (z,), (jnp.ones_like(z),))
    e = (k - v) + _mm(a - act(_mm(v, A)), B)
    d = _mm_t(e, B) * da
    u = _mm(_unit_lower_inverse(_mm_t(k, k) * lam_prev), g_prev[:, None] * z + d)
    new = ((g_end * A - _t_mm(k, lam_end[:, None] * u),),
           (g_end * B - _t_mm(a, lam_end[:, None] * e),))
    if dual:  # q_t X_t after the writes up to t, input side then output side (delta_rule.py)
        zq = g_next[:, None] * _mm(q, A) - _mm(_mm_t(q, k) * lam_next, u)
        ab = act(zq)
        y = q + g_next[:, None] * _mm(ab, B) - _mm(_mm_t(ab, a) * lam_next, e)
    else:
        y = q + _mm(act(_mm(q, A)), B)
    moms = None
    if with_moms:
        w = jnp.where(jax.lax.broadcasted_iota(jnp.int32, (C,), 0) == C - 1, eta, 0.0)
        moms = ((-_t_mm(k, w[:, None] * d),), (-_t_mm(a, w[:, None] * e),))
    return new, (y,), moms


# model.selfmod.kernel: "auto" = these kernels when the model is built for a GPU and they
# apply (`use_kernels`), else XLA's chunk scans; "xla" | "pallas" force one (pallas on the
# CPU runs Pallas's interpreter: tests).
# "auto" takes the kernels within the sizes compiled for an H100 (sm_90, 8 warps): memories
# up to 64 × 64, chunks up to 16 (projections) and 32 (M_mem). At head 64 those use up to
# 202 KB of an SM's 227 KB of shared memory; M_mem chunks of 64 did not finish compiling in
# 15 minutes. Beyond them: XLA's scans ("pallas" still forces the kernels).
MAX_TILE, MAX_CHUNK, MAX_CHUNK_MEM = 64, 16, 32
_INPUTS, _OUTPUTS, _GATES = ("k", "v", "eta", "alpha"), ("k", "v"), ("eta", "alpha")


def unsupported(*, momentum: float, dgd: bool, frozen: tuple, adaptive_q: bool) -> list[str]:
    """The switches these kernels do not implement, as `field=value` strings (empty: fine)."""
    bad = [f"momentum={momentum}"] if momentum else []
    bad += [] if dgd else ["dgd=False"]
    bad += [f"inner_{n}=False" for n in frozen]
    bad += ["adaptive_q=True"] if adaptive_q else []
    return bad


def use_kernels(choice: str, *, head_dim: int, hidden: int, chunk_size: int,
                chunk_size_mem: int, **switches) -> bool:
    """Whether `model.selfmod.kernel = choice` runs these kernels (switches as `unsupported`
    takes them; `kernel_scan.choose`)."""
    sizes = dict(head_dim=head_dim, hidden=hidden, chunk_size=chunk_size,
                 chunk_size_mem=chunk_size_mem)
    return choose(choice, not unsupported(**switches) and not not_powers_of_two(sizes)
                  and max(head_dim, hidden) <= MAX_TILE and chunk_size <= MAX_CHUNK
                  and chunk_size_mem <= MAX_CHUNK_MEM)


def _model_args(m) -> tuple[dict, dict]:
    """(sizes, switches) of a model config (config.model) as `use_kernels` takes them."""
    s = m.selfmod
    head = m.head_dim or m.d_model // m.n_heads
    sizes = dict(head_dim=head, hidden=s.hidden_mult * head, chunk_size=s.chunk_size,
                 chunk_size_mem=s.chunk_size_mem or s.chunk_size)
    frozen = tuple(n for n, on in (("k", s.inner_k), ("v", s.inner_v)) if not on)
    return sizes, dict(momentum=s.momentum, dgd=s.dgd, frozen=frozen, adaptive_q=s.adaptive_q)


def model_problems(m) -> tuple[list[str], list[str]]:
    """What stops these kernels for a model config: (its unsupported switches, its sizes
    that are not powers of two), as `field=value` strings."""
    sizes, switches = _model_args(m)
    return unsupported(**switches), not_powers_of_two(
        {_SIZE_NAMES[k]: v for k, v in sizes.items()})


_SIZE_NAMES = {"head_dim": "head dim", "chunk_size": "model.selfmod.chunk_size",
               "chunk_size_mem": "model.selfmod.chunk_size_mem",
               "hidden": "memory hidden (model.selfmod.hidden_mult × head dim)"}


def model_uses_kernels(m) -> bool:
    """`use_kernels` for a model config (config.model): what `SelfModTitans` will build."""
    sizes, switches = _model_args(m)
    return use_kernels(m.selfmod.kernel, **sizes, **switches)


def selfmod_heads(mems, moms, x_BxHxTxD, q_BxHxTxD, *, chunk_size: int, chunk_size_mem: int,
                  eta_scale: float, v_norm: bool, retention: bool = True,
                  mem_read: str = "dual", qk_norm: bool = True):
    """`selfmod.selfmod_titans` for every (sequence, head) at once, both chunk scans as
    kernels: the projection memories (`projection_step`, chunk_size) then M_mem
    (`mem_step`, chunk_size_mem). mems/moms: the per-(sequence, head) states [B, nh, …] of
    `SelfModTitans.init_state` (momenta are only read with β > 0, not implemented here).
    Returns (y [B, nh, T, D] in x's dtype, (memories, momenta)) as selfmod_titans does."""
    del moms  # β = 0: a chunk step never reads the incoming momenta
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    mems = jax.tree.map(f32, mems)
    D = x_BxHxTxD.shape[-1]
    state = (jnp.stack([mems[n]["A"] for n in _INPUTS], axis=2),
             jnp.stack([mems[n]["B"] for n in _OUTPUTS], axis=2),
             jnp.stack([mems[n]["B"][..., 0] for n in _GATES], axis=2))
    consts = (jnp.stack([mems[n]["P"][..., 0] for n in _GATES], axis=2),
              jnp.stack([mems[n]["b"] for n in _GATES], axis=2))
    opts = tuple(sorted(dict(eta_scale=float(eta_scale), qk_norm=bool(qk_norm),
                             retention=bool(retention), v_norm=bool(v_norm)).items()))
    proj = Scan(projection_step, chunk_size, "selfmod_projections", ((D,), (D,), (), ()), opts)
    (k, v, eta, la), (A1, Bo1, Bg1), (SA, SBo, SBg) = scan_op(proj)(
        state, consts, (f32(x_BxHxTxD),))
    q = l2norm(f32(q_BxHxTxD)) if qk_norm else f32(q_BxHxTxD)
    mem = Scan(mem_step, chunk_size_mem, "selfmod_mem", ((D,),),
               (("dual", mem_read == "dual"),))
    (y,), (Am, Bm), (SAm, SBm) = scan_op(mem)(
        (mems["mem"]["A"][:, :, None], mems["mem"]["B"][:, :, None]), (), (q, k, v, eta, la))
    new_mems = {"mem": {**mems["mem"], "A": Am[:, :, 0], "B": Bm[:, :, 0]}}
    new_moms = {"mem": {"A": SAm[:, :, 0], "B": SBm[:, :, 0]}}
    for g, n in enumerate(_INPUTS):
        if n in _OUTPUTS:
            i = _OUTPUTS.index(n)
            B, SB = Bo1[:, :, i], SBo[:, :, i]
        else:
            j = _GATES.index(n)
            B, SB = Bg1[:, :, j, :, None], SBg[:, :, j, :, None]
        new_mems[n] = {**mems[n], "A": A1[:, :, g], "B": B}
        new_moms[n] = {"A": SA[:, :, g], "B": SB}
    return y.astype(x_BxHxTxD.dtype), (new_mems, new_moms)
