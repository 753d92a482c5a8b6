"""HOPE's self-modifying projection memories as one GPU kernel per segment (Pallas).

The chunk recurrence of the k, v, η, α memories in `selfmod.selfmod_titans` (NL §8.1–8.2,
Eqs. 83–93; docs/memories.md) is a chain of ~15 dependent small matmuls per chunk: XLA:GPU
makes ~37 kernels of each chunk step, 16 chunk steps per 128-token segment, per layer, per
pass (docs/architecture.md, "The program on a GPU"). Here one Pallas kernel runs a head's whole
segment: every chunk step of the module docstring of `selfmod.py` with the memories held in
the kernel, writing k, v, η, log α per token, the end state, and each chunk's start state
(the backward's residuals). The backward is a second kernel that walks the chunks in
reverse, and for each one differentiates the same chunk step (`jax.vjp` traced inside the
kernel) from its saved start state: the math has one home, `_step`, written with what the
Triton lowering accepts (2-D matmuls, no slicing, power-of-two shapes).

Scope: the paper's default switches (DGD, momentum 0, every memory learning in context,
fixed q). `selfmod.selfmod_titans(..., kernel="pallas")` runs M_mem's scan after it as
before. On the CPU the kernels run in Pallas's interpreter (exact, slow: for tests).
Second derivatives through the kernel are not provided: the backward treats its
residuals as constants (the online step needs none — the teach signal it differentiates
through is stop_gradient'ed — and its outer gradient takes only first derivatives).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from nested_jax.ops.norms import l2norm

HI = jax.lax.Precision.HIGHEST  # float32 matmuls stay float32 on the GPU (no TF32)
N_IN, N_OUT, N_GATE = 4, 2, 2   # input sides (k, v, η, α), [H,D] output sides (k, v), gates


def _mm(a, b):
    return jax.lax.dot_general(a, b, (((1,), (0,)), ((), ())), precision=HI,
                               preferred_element_type=jnp.float32)


def _mm_t(a, b):  # a · bᵀ
    return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), precision=HI,
                               preferred_element_type=jnp.float32)


def _t_mm(a, b):  # aᵀ · b
    return jax.lax.dot_general(a, b, (((0,), (0,)), ((), ())), precision=HI,
                               preferred_element_type=jnp.float32)


def _decays(la_C, eta_C):
    """`delta_rule.decays` (β = 0) without slices: γ before each token, γ at the chunk end,
    Λ_prev [t,s] = η_s γ_{t-1}/γ_s (s < t), Λ_next [t,s] = η_s γ_t/γ_s (s ≤ t) and
    Λ_end [s] = η_s γ_C/γ_s, each product the exp of a masked sum of log α (no ratios)."""
    C = la_C.shape[0]
    t = jax.lax.broadcasted_iota(jnp.int32, (C, C, C), 0)
    s = jax.lax.broadcasted_iota(jnp.int32, (C, C, C), 1)
    m = jax.lax.broadcasted_iota(jnp.int32, (C, C, C), 2)
    la3 = jnp.broadcast_to(la_C[None, None, :], (C, C, C))
    seg_next = jnp.sum(jnp.where((s < m) & (m <= t), la3, 0.0), axis=2)
    seg_prev = jnp.sum(jnp.where((s < m) & (m < t), la3, 0.0), axis=2)
    t2 = jax.lax.broadcasted_iota(jnp.int32, (C, C), 0)
    s2 = jax.lax.broadcasted_iota(jnp.int32, (C, C), 1)
    la2 = jnp.broadcast_to(la_C[None, :], (C, C))
    g_prev = jnp.exp(jnp.sum(jnp.where(s2 < t2, la2, 0.0), axis=1))
    g_end = jnp.exp(jnp.sum(la_C))
    lam_end = jnp.exp(jnp.sum(jnp.where(t2 > s2, jnp.broadcast_to(la_C[:, None], (C, C)), 0.0),
                              axis=0)) * eta_C
    lam_prev = jnp.where(s2 < t2, jnp.exp(seg_prev), 0.0) * eta_C[None, :]
    lam_next = jnp.where(s2 <= t2, jnp.exp(seg_next), 0.0) * eta_C[None, :]
    return g_prev, g_end, lam_prev, lam_next, lam_end


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


def _step(state, consts, x_CxD, *, eta_scale: float, retention: bool, v_norm: bool,
          qk_norm: bool, with_moms: bool):
    """One chunk of the projection memories (selfmod.py's module docstring, β = 0, DGD):
    the reads at the chunk-start state ξ, then every memory's step on (k, v̂ = M_ξ(v)).
    state = (A: 4 × [D,H] (k, v, η, α), Bo: 2 × [H,D] (k, v), Bg: 2 × [H] (η, α));
    consts = (Pg: 2 × [D] the gates' skips, bg: 2 scalars their biases).
    Returns (new state, reads (k, v, η, log α), momenta (β = 0: S = −η_C g_C) or None)."""
    A, Bo, Bg = state
    Pg, bg = consts
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
    g_prev, g_end, lam_prev, _, lam_end = _decays(la, eta)
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


# ---------------------------------------------------------------------------- kernels
def _load_state(A_ref, Bo_ref, Bg_ref, c=None):
    pre = () if c is None else (c,)
    return (tuple(A_ref[pre + (g,)] for g in range(N_IN)),
            tuple(Bo_ref[pre + (i,)] for i in range(N_OUT)),
            tuple(Bg_ref[pre + (j,)] for j in range(N_GATE)))


def _store_state(refs, state, c=None):
    pre = () if c is None else (c,)
    for ref, parts in zip(refs, state):
        for n, part in enumerate(parts):
            ref[pre + (n,)] = part


def _fwd_kernel(x_ref, A_ref, Bo_ref, Bg_ref, Pg_ref, bg_ref,
                k_ref, v_ref, eta_ref, la_ref, A1_ref, Bo1_ref, Bg1_ref, SA_ref, SBo_ref,
                SBg_ref, As_ref, Bos_ref, Bgs_ref, *, chunk, opts):
    n_chunks = x_ref.shape[0] // chunk
    consts = (tuple(Pg_ref[j] for j in range(N_GATE)), tuple(bg_ref[j] for j in range(N_GATE)))

    def run(c, state, with_moms):
        _store_state((As_ref, Bos_ref, Bgs_ref), state, c)
        rows = pl.ds(c * chunk, chunk)
        new, (k, v, eta, la), moms = _step(state, consts, x_ref[rows, :], with_moms=with_moms,
                                           **opts)
        k_ref[rows, :], v_ref[rows, :], eta_ref[rows], la_ref[rows] = k, v, eta, la
        return new, moms

    state = jax.lax.fori_loop(0, n_chunks - 1, lambda c, st: run(c, st, False)[0],
                              _load_state(A_ref, Bo_ref, Bg_ref))
    state, moms = run(n_chunks - 1, state, True)
    _store_state((A1_ref, Bo1_ref, Bg1_ref), state)
    _store_state((SA_ref, SBo_ref, SBg_ref), moms)


def _bwd_kernel(x_ref, Pg_ref, bg_ref, As_ref, Bos_ref, Bgs_ref,
                dk_ref, dv_ref, deta_ref, dla_ref, dA1_ref, dBo1_ref, dBg1_ref, dSA_ref,
                dSBo_ref, dSBg_ref,
                dx_ref, dA0_ref, dBo0_ref, dBg0_ref, dPg_ref, dbg_ref, *, chunk, opts):
    n_chunks = x_ref.shape[0] // chunk
    consts = (tuple(Pg_ref[j] for j in range(N_GATE)), tuple(bg_ref[j] for j in range(N_GATE)))

    def run(c, dstate, dconsts, dmoms):
        rows = pl.ds(c * chunk, chunk)
        state = _load_state(As_ref, Bos_ref, Bgs_ref, c)
        with_moms = dmoms is not None
        f = functools.partial(_step, with_moms=with_moms, **opts)
        _, vjp = jax.vjp(lambda s, k, x: f(s, k, x) if with_moms else f(s, k, x)[:2],
                         state, consts, x_ref[rows, :])
        dreads = (dk_ref[rows, :], dv_ref[rows, :], deta_ref[rows], dla_ref[rows])
        ct = (dstate, dreads, dmoms) if with_moms else (dstate, dreads)
        dstate, dcon, dx = vjp(ct)
        dx_ref[rows, :] = dx
        return dstate, jax.tree.map(jnp.add, dconsts, dcon)

    last = n_chunks - 1
    dstate = _load_state(dA1_ref, dBo1_ref, dBg1_ref)
    dmoms = _load_state(dSA_ref, dSBo_ref, dSBg_ref)
    zero = (tuple(jnp.zeros_like(p) for p in consts[0]),
            tuple(jnp.zeros_like(b) for b in consts[1]))
    dstate, dconsts = run(last, dstate, zero, dmoms)
    dstate, dconsts = jax.lax.fori_loop(
        0, last, lambda i, cr: run(last - 1 - i, cr[0], cr[1], None), (dstate, dconsts))
    _store_state((dA0_ref, dBo0_ref, dBg0_ref), dstate)
    for j in range(N_GATE):
        dPg_ref[j] = dconsts[0][j]
        dbg_ref[j] = dconsts[1][j]


# ---------------------------------------------------------------------------- calls
def _spec(shape):
    """The (b, h) program's block of a [B, heads, …] array: everything after the two axes."""
    rest = tuple(shape[2:])
    return pl.BlockSpec((None, None) + rest, lambda b, h: (b, h) + (0,) * len(rest))


NUM_WARPS, NUM_STAGES = 8, 1  # Triton launch: 256 threads per (sequence, head); no pipelining


def _call(kernel, ins, out_shapes, interpret: bool):
    B, nh = ins[0].shape[:2]
    outs = [jax.ShapeDtypeStruct(s, jnp.float32) for s in out_shapes]
    return pl.pallas_call(
        kernel, grid=(B, nh), in_specs=[_spec(a.shape) for a in ins],
        out_specs=[_spec(s) for s in out_shapes], out_shape=outs, interpret=interpret,
        compiler_params=plgpu.CompilerParams(num_warps=NUM_WARPS, num_stages=NUM_STAGES),
        name=getattr(kernel, "__name__", None) or kernel.func.__name__)(*ins)


def _by_platform(fn, *args):
    """The Triton kernel on GPUs, Pallas's interpreter elsewhere (chosen when lowering)."""
    return jax.lax.platform_dependent(*args, cuda=functools.partial(fn, interpret=False),
                                      default=functools.partial(fn, interpret=True))


def _forward(x, A, Bo, Bg, Pg, bg, *, chunk, opts, interpret):
    B, nh, T, D = x.shape
    H, nc = A.shape[-1], T // chunk
    kern = functools.partial(_fwd_kernel, chunk=chunk, opts=dict(opts))
    kern.__name__ = "selfmod_segment_fwd"
    shapes = [(B, nh, T, D), (B, nh, T, D), (B, nh, T), (B, nh, T),
              A.shape, Bo.shape, Bg.shape, A.shape, Bo.shape, Bg.shape,
              (B, nh, nc, N_IN, D, H), (B, nh, nc, N_OUT, H, D), (B, nh, nc, N_GATE, H)]
    return tuple(_call(kern, (x, A, Bo, Bg, Pg, bg), shapes, interpret))


def _backward(x, Pg, bg, As, Bos, Bgs, cts, *, chunk, opts, interpret):
    kern = functools.partial(_bwd_kernel, chunk=chunk, opts=dict(opts))
    kern.__name__ = "selfmod_segment_bwd"
    A_shape = As.shape[:2] + As.shape[3:]
    shapes = [x.shape, A_shape, Bos.shape[:2] + Bos.shape[3:], Bgs.shape[:2] + Bgs.shape[3:],
              Pg.shape, bg.shape]
    return tuple(_call(kern, (x, Pg, bg, As, Bos, Bgs) + tuple(cts), shapes, interpret))


def projection_segment(x, A, Bo, Bg, Pg, bg, chunk: int, opts: tuple):
    """The projection memories over one segment, all heads: x [B,nh,T,D] (float32),
    state A [B,nh,4,D,H] (k, v, η, α input sides), Bo [B,nh,2,H,D] (k, v output sides),
    Bg [B,nh,2,H] (η, α output sides), consts Pg [B,nh,2,D], bg [B,nh,2] (gate skips and
    biases). Returns (k, v [B,nh,T,D], η, log α [B,nh,T], end state A, Bo, Bg, momenta SA,
    SBo, SBg, chunk-start states As, Bos, Bgs). opts: sorted (name, value) pairs of
    `_step`'s switches (eta_scale, qk_norm, retention, v_norm)."""
    return _segment_op(chunk, opts)(x, A, Bo, Bg, Pg, bg)


@functools.cache
def _segment_op(chunk: int, opts: tuple):
    """projection_segment for one chunk size and switch set, with its own derivative."""

    @jax.custom_vjp
    def op(x, A, Bo, Bg, Pg, bg):
        return _by_platform(functools.partial(_forward, chunk=chunk, opts=opts),
                            x, A, Bo, Bg, Pg, bg)

    def fwd(x, A, Bo, Bg, Pg, bg):
        # The rule calls the op itself: an enclosing differentiation (the online step's
        # outer gradient through the teach signal's vjp) then meets this custom_vjp again.
        out = op(x, A, Bo, Bg, Pg, bg)
        # Residuals as copies, not the inputs themselves: jax 0.12.1's dead-code rule for a
        # custom_vjp with unused outputs miscounts residuals that forward inputs.
        kept = tuple(jax.lax.optimization_barrier(a) for a in (x, Pg, bg))
        return out, kept + out[-3:]

    def bwd(res, cts):
        x, Pg, bg, As, Bos, Bgs = jax.lax.stop_gradient(res)  # first derivatives (docstring)
        cts = jax.lax.stop_gradient(cts[:10])  # the chunk-start states are residuals only
        return _by_platform(functools.partial(_backward, chunk=chunk, opts=opts),
                            x, Pg, bg, As, Bos, Bgs, cts)

    op.defvjp(fwd, bwd)
    return op


KERNELS = ("xla", "pallas")  # model.selfmod.kernel: XLA's chunk scan | this module's kernels
_INPUTS, _OUTPUTS, _GATES = ("k", "v", "eta", "alpha"), ("k", "v"), ("eta", "alpha")


def unsupported(*, momentum: float, dgd: bool, frozen: tuple, adaptive_q: bool) -> list[str]:
    """The switches this kernel does not implement, as `field=value` strings (empty: fine)."""
    bad = [f"momentum={momentum}"] if momentum else []
    bad += [] if dgd else ["dgd=False"]
    bad += [f"inner_{n}=False" for n in frozen]
    bad += ["adaptive_q=True"] if adaptive_q else []
    return bad


def selfmod_heads(mems, moms, x_BxHxTxD, q_BxHxTxD, *, chunk_size: int, chunk_size_mem: int,
                  eta_scale: float, v_norm: bool, retention: bool = True,
                  mem_read: str = "dual", qk_norm: bool = True, remat_group: int = 0,
                  unroll_max: int = 1, act=jax.nn.gelu):
    """`selfmod.selfmod_titans` for every (sequence, head) at once, with the projection
    memories in `projection_segment`'s kernels and M_mem's scan as in `selfmod.mem_scan`.
    mems/moms: the per-(sequence, head) states [B, nh, …] of `SelfModTitans.init_state`
    (momenta are read only with β > 0, which this path does not implement)."""
    from nested_jax.ops.selfmod import mem_scan  # selfmod.py imports this module's KERNELS

    del moms  # β = 0: the chunk step never reads the incoming momenta
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    mems = jax.tree.map(f32, mems)
    A = jnp.stack([mems[n]["A"] for n in _INPUTS], axis=2)
    Bo = jnp.stack([mems[n]["B"] for n in _OUTPUTS], axis=2)
    Bg = jnp.stack([mems[n]["B"][..., 0] for n in _GATES], axis=2)
    Pg = jnp.stack([mems[n]["P"][..., 0] for n in _GATES], axis=2)
    bg = jnp.stack([mems[n]["b"] for n in _GATES], axis=2)
    opts = tuple(sorted(dict(eta_scale=float(eta_scale), qk_norm=bool(qk_norm),
                             retention=bool(retention), v_norm=bool(v_norm)).items()))
    k, v, eta, la, A1, Bo1, Bg1, SA, SBo, SBg = projection_segment(
        f32(x_BxHxTxD), A, Bo, Bg, Pg, bg, chunk_size, opts)[:10]
    q = l2norm(f32(q_BxHxTxD)) if qk_norm else f32(q_BxHxTxD)
    scan = functools.partial(mem_scan, chunk_size_mem=chunk_size_mem, momentum=0.0, act=act,
                             dgd=True, mem_read=mem_read, remat_group=remat_group,
                             unroll_max=unroll_max)
    mom_mem = {"A": jnp.zeros_like(mems["mem"]["A"]), "B": jnp.zeros_like(mems["mem"]["B"])}
    y, (m_mem, s_mem) = jax.vmap(jax.vmap(scan))(mems["mem"], mom_mem, q, k, v, eta, la)
    new_mems, new_moms = {"mem": m_mem}, {"mem": s_mem}
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
