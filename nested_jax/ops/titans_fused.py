"""Titans' MLP memory with its chunk scan as GPU kernels (Pallas; `model.titans.kernel`).

`memory.titans_mlp` (Titans Eqs. 11–14, §3.2; docs/memories.md, "MLP (deep) memory") is a
loop over chunks of ~30 dependent small matmuls, which XLA:GPU makes into tens of kernels per
chunk step — 128 chunk steps per layer per pass at the pilot's 2048 tokens
(docs/architecture.md, "The program on a GPU"). Here the loop runs inside one kernel per
(sequence, head) each way, as `kernel_scan` does for HOPE's memories — but the memory does
not fit one streaming multiprocessor: W1 [K, F], W2 [F, V] and their momenta are 64K floats
(256 KB) at head 64, hidden 4 × 64. So the state lives in the kernel's output buffers in
global memory (L2-resident: 256 KB per program) and a chunk step walks it in column tiles of
W1 (row tiles of W2) of width `TILE`, only one tile in registers at a time.

That works because, with the gradient taken at the chunk-start state, a chunk step of the
2-layer memory splits over hidden units j except for two sums (tile j: W1_j = W1[:, j],
W2_j = W2[j, :]):

    O   = Σ_j σ(K W1_j) W2_j                      the chunk-start output, then
    E   = wrap'ᵀ(wrap(O) − V)                      the output error (wrap: k + LN(·) or ·)
    per tile j (`tile_step`): A_j = σ(K W1_j), D1_j = (E W2_jᵀ) ⊙ σ'(K W1_j),
        Z̄1_j = diag(β) Q W1_j + diag(f) Q S1_j − ((Q Kᵀ) ⊙ G) D1_j,  H̄_j = σ(Z̄1_j),
        R_j  = diag(β) H̄_j W2_j + diag(f) H̄_j S2_j − ((H̄_j A_jᵀ) ⊙ G) E,
        and the tile's end state (W, S of both layers, as `titans_mlp`)
    Y   = wrap(Q, Σ_j R_j)                         the reads after each token's write

(the read's (H̄ Aᵀ ⊙ G) E is linear in H̄ Aᵀ = Σ_j H̄_j A_jᵀ, so it splits too). The gates'
coefficients (G, β, f, n, m) and (Q Kᵀ) ⊙ G are made per chunk inside the kernel
(`chunk_coeffs`), so a call takes only q, k, v and the three gates per token. The forward
kernel saves each chunk's start state and the two sums (O and Σ_j R_j, per token); the
backward kernel walks the chunks in reverse and, per chunk, takes `jax.vjp` of the same
phase functions (`chunk_coeffs`, `out_part`, `output_error`, `tile_step`, `read`) traced
inside the kernel, tile by tile, accumulating the cotangents of the state tiles in its
output buffers. The maths has one home
per phase, differentiated by JAX; the custom derivative and the platform choice are
`kernel_scan.differentiable`'s (first derivatives only, as there).

Scope: depth 2, tanh-GELU or SiLU, with or without the residual LayerNorm; power-of-two
head, hidden and chunk sizes (chunk ≥ 16: Triton's smallest matmul); `problems` names
what a config asks beyond that.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from nested_jax.ops import kernel_scan as ks
from nested_jax.ops.kernel_scan import last_row, mm, mm_t, t_mm
from nested_jax.ops.memory import ACTIVATIONS, LN_EPS

F32 = jnp.float32
TILE = 64        # hidden units per tile of the state walked through global memory
MIN_CHUNK = 16   # Triton's dot needs every side ≥ 16
MAX_HEAD = 64    # the sizes compiled for sm_90 (tests/test_titans_fused.py)
N_TOK = 6        # token inputs: q, k, v, θ, η, α (rows of [T, …])
N_RES = 6        # the backward's residuals: chunk-start tiles W1, S1, W2, S2; rows of O, Z
LOG_FLOOR = -1e30  # log 0 inside the kernel: finite, so masked matmuls of logs stay exact


# --------------------------------------------------------------- the phases of a chunk
def _ln(o, scale, bias):
    mean = jnp.mean(o, axis=-1, keepdims=True)
    var = jnp.mean((o - mean) ** 2, axis=-1, keepdims=True)
    return (o - mean) * jax.lax.rsqrt(var + LN_EPS) * scale[None, :] + bias[None, :]


def wrap(x, o, ln: tuple):
    """The memory's output from its core MLP's: x + LN(o)·scale + bias, or o (ln = ())."""
    return x + _ln(o, *ln) if ln else o


def out_part(k, w1, w2, *, act):
    """Tile j's share of the chunk-start output: σ(K W1_j) W2_j."""
    return mm(act(mm(k, w1)), w2)


def output_error(o, k, v, ln: tuple):
    """E: the inner loss ½‖wrap(o) − v‖²'s gradient wrt the core output o."""
    out, vjp = jax.vjp(lambda oo: wrap(k, oo, ln), o)
    return vjp(out - v)[0]


def _masked_log(x, ok, f):
    return jnp.where(ok, f(jnp.where(ok, x, 0.5)), LOG_FLOOR)


def chunk_coeffs(q, k, theta, eta, alpha):
    """The chunk's dual-form coefficients (`memory.chunk_coefficients`, "log" method, in what
    Triton lowers): with b = cumsum log(1 − α), μ = cumsum log η, D[t, i] = exp(b_t − b_i)
    and P[i, j] = exp(μ_i − μ_j) on and below the diagonal (each the exp of a masked segment
    sum, taken as one mask matmul), G = (D P) diag(θ), β = exp(b), f = D exp(μ), n = θ ⊙
    P[C−1, :], m = exp(μ_C); returns ((Q Kᵀ) ⊙ G, G, β, f, n, G[C−1, :], β_C, f_C, m).
    A gate of exactly 0 (η) or 1 (α) takes the log LOG_FLOOR instead of −∞."""
    C = q.shape[0]
    row = jax.lax.broadcasted_iota(jnp.int32, (C, C), 0)
    col = jax.lax.broadcasted_iota(jnp.int32, (C, C), 1)
    after = (row > col).astype(F32)  # [l, i] = [i < l]

    def decay(logs):  # exp of Σ_{i<l≤t} logs_l on and below the diagonal, and of Σ_{l≤t}
        upto = jnp.where(col <= row, jnp.broadcast_to(logs[None, :], (C, C)), 0.0)
        seg = jnp.where(col <= row, jnp.exp(mm(upto, after)), 0.0)
        return seg, jnp.exp(jnp.sum(upto, axis=1))

    D, beta = decay(_masked_log(alpha, alpha < 1, lambda a: jnp.log1p(-a)))
    P, mom = decay(_masked_log(eta, eta > 0, jnp.log))
    g = mm(D, P) * theta[None, :]
    f = jnp.sum(D * mom[None, :], axis=1)
    return (mm_t(q, k) * g, g, beta, f, theta * last_row(P), last_row(g), last_row(beta),
            last_row(f), last_row(mom))


def tile_step(e, q, k, co, w1, s1, w2, s2, *, act):
    """One tile's chunk step: its end state (W1_j, S1_j, W2_j, S2_j) and its share R_j of
    the reads' core output (module docstring); co: `chunk_coeffs`."""
    qkg, g, beta, f, n, g_end, b_end, f_end, m_end = co
    a, da = jax.jvp(act, (mm(k, w1),), (jnp.ones((k.shape[0], w1.shape[1]), F32),))
    d1 = mm_t(e, w2) * da
    h = act(beta[:, None] * mm(q, w1) + f[:, None] * mm(q, s1) - mm(qkg, d1))
    r = beta[:, None] * mm(h, w2) + f[:, None] * mm(h, s2) - mm(mm_t(h, a) * g, e)
    new = (b_end * w1 + f_end * s1 - t_mm(k, g_end[:, None] * d1),
           m_end * s1 - t_mm(k, n[:, None] * d1),
           b_end * w2 + f_end * s2 - t_mm(a, g_end[:, None] * e),
           m_end * s2 - t_mm(a, n[:, None] * e))
    return new, r


def read(q, z, ln: tuple):
    """Y = wrap(Q, Σ_j R_j): the reads after each token's write."""
    return wrap(q, z, ln)


def chunk_step(tiles, consts, tokens, *, act):
    """A whole chunk with every tile at once (its FLOPs for the cost model)."""
    q, k, v = tokens[:3]
    co = chunk_coeffs(q, k, *tokens[3:])
    o = sum(out_part(k, t[0], t[2], act=act) for t in tiles)
    e = output_error(o, k, v, consts)
    steps = [tile_step(e, q, k, co, *t, act=act) for t in tiles]
    return tuple(s[0] for s in steps), read(q, sum(s[1] for s in steps), consts)


# ------------------------------------------------------------------------- the kernels
def _no_sync():
    pass


def _fwd_kernel(*refs, act, n_ln: int, chunk: int, keep_starts: bool, sync):
    st, ln_refs, tok, (y_ref,), end, res = ks.split(
        refs, (4, n_ln, N_TOK, 1, 4, N_RES if keep_starts else 0))
    starts, sums = res[:4], res[4:]  # the backward's residuals (none without keep_starts)
    n_tiles, n_chunks = st[0].shape[0], tok[0].shape[0] // chunk
    ln = tuple(r[...] for r in ln_refs)
    for j in range(n_tiles):  # the working state: the end-state buffers
        for src, dst in zip(st, end):
            dst[j] = src[j]
    sync()

    def chunk_body(c, carry):
        rows = pl.ds(c * chunk, chunk)
        x = tuple(r[rows] for r in tok)
        q, k, v = x[:3]
        co = chunk_coeffs(q, k, *x[3:])
        o = jax.lax.fori_loop(0, n_tiles, lambda j, o: o + out_part(
            k, end[0][j], end[2][j], act=act), jnp.zeros(v.shape, F32))
        e = output_error(o, k, v, ln)

        def tile_body(j, z):
            tiles = tuple(r[j] for r in end)
            for r, t in zip(starts, tiles):
                r[c, j] = t
            new, part = tile_step(e, q, k, co, *tiles, act=act)
            sync()
            for r, t in zip(end, new):
                r[j] = t
            return z + part

        z = jax.lax.fori_loop(0, n_tiles, tile_body, jnp.zeros(v.shape, F32))
        y_ref[rows] = read(q, z, ln)
        for r, a in zip(sums, (o, z)):  # the two sums over tiles: the backward reads them
            r[rows] = a
        sync()
        return carry

    jax.lax.fori_loop(0, n_chunks, chunk_body, 0)


def _bwd_kernel(*refs, act, n_ln: int, chunk: int, sync):
    ln_refs, tok, res, (dy_ref,), d_end, d_tok, d_st, d_ln = ks.split(
        refs, (n_ln, N_TOK, N_RES, 1, 4, N_TOK, 4, n_ln))
    starts, (o_ref, z_ref) = res[:4], res[4:]
    n_tiles, n_chunks = d_end[0].shape[0], tok[0].shape[0] // chunk
    ln = tuple(r[...] for r in ln_refs)
    for j in range(n_tiles):  # the state's cotangent, walked back chunk by chunk
        for src, dst in zip(d_end, d_st):
            dst[j] = src[j]
    sync()

    def chunk_body(i, dln):
        c = n_chunks - 1 - i
        rows = pl.ds(c * chunk, chunk)
        x = tuple(r[rows] for r in tok)
        q, k, v = x[:3]
        co, co_vjp = jax.vjp(chunk_coeffs, q, k, *x[3:])
        start = lambda j: tuple(r[c, j] for r in starts)  # noqa: E731
        zeros = jnp.zeros(v.shape, F32)
        e, err_vjp = jax.vjp(output_error, o_ref[rows], k, v, ln)
        _, read_vjp = jax.vjp(read, q, z_ref[rows], ln)
        dq_read, dz, dln_read = read_vjp(dy_ref[rows])

        def tile_back(j, acc):
            _, vjp = jax.vjp(functools.partial(tile_step, act=act), e, q, k, co, *start(j))
            de, dq, dk, dco, *dtiles = vjp((tuple(r[j] for r in d_st), dz))
            sync()
            for r, d in zip(d_st, dtiles):
                r[j] = d
            return jax.tree.map(jnp.add, acc, (de, dq, dk, dco))

        de, dq_t, dk_t, dco = jax.lax.fori_loop(
            0, n_tiles, tile_back, jax.tree.map(jnp.zeros_like, (e, q, k, co)))
        sync()
        do, dk_err, dv, dln_err = err_vjp(de)

        def out_back(j, dk):
            _, vjp = jax.vjp(functools.partial(out_part, act=act), k, starts[0][c, j],
                             starts[2][c, j])
            dk_j, dw1, dw2 = vjp(do)
            w1_ct, w2_ct = d_st[0][j], d_st[2][j]
            sync()
            d_st[0][j] = w1_ct + dw1
            d_st[2][j] = w2_ct + dw2
            return dk + dk_j

        dk_out = jax.lax.fori_loop(0, n_tiles, out_back, zeros)
        sync()
        dq_co, dk_co, *dgates = co_vjp(dco)
        dx = (dq_read + dq_t + dq_co, dk_err + dk_t + dk_out + dk_co, dv, *dgates)
        for r, d in zip(d_tok, dx):
            r[rows] = d
        return jax.tree.map(lambda a, b, c_: a + b + c_, dln, dln_read, dln_err)

    dln = jax.lax.fori_loop(0, n_chunks, chunk_body, jax.tree.map(jnp.zeros_like, ln))
    for r, d in zip(d_ln, dln):
        r[...] = d


def _program_flops(tiles, consts, tokens, chunk: int, backward: bool, act) -> float:
    """One (sequence, head) program's FLOPs: its chunk steps by XLA's cost analysis (the
    backward's: recomputed forward + the step's vjp)."""
    one = lambda a, rows=None: jax.ShapeDtypeStruct(  # noqa: E731
        (rows,) + a.shape[3:] if rows else a.shape[2:], F32)
    n_tiles, T = tiles[0].shape[2], tokens[0].shape[2]
    tl = tuple(tuple(jax.ShapeDtypeStruct(a.shape[3:], F32) for a in tiles)
               for _ in range(n_tiles))
    co = tuple(one(a) for a in consts)
    tok = tuple(one(a, chunk) for a in tokens)
    step = functools.partial(chunk_step, act=act)
    return T // chunk * ks.step_flops(step, (tl, co, tok), backward)


def _record(name, state, consts, tokens, chunk, backward, act):
    B, nh = tokens[0].shape[:2]
    spec = lambda a: jax.ShapeDtypeStruct(a.shape, F32)  # noqa: E731
    ks.GPU_KERNELS[name] = {"programs": B * nh, "flops": functools.partial(
        _program_flops, tuple(map(spec, state)), tuple(map(spec, consts)),
        tuple(map(spec, tokens)), chunk, backward, act)}


def _forward(state, consts, tokens, *, act, chunk, interpret, keep_starts):
    B, nh, T = tokens[0].shape[:3]
    rows = (B, nh, T, tokens[2].shape[-1])
    res = ([a.shape[:2] + (T // chunk,) + a.shape[2:] for a in state] + [rows, rows]
           if keep_starts else [])
    shapes = [rows] + [a.shape for a in state] + res
    name = "titans_mlp_" + ("fwd" if keep_starts else "read")
    if not interpret:
        _record(name, state, consts, tokens, chunk, False, act)
    kernel = functools.partial(_fwd_kernel, act=act, n_ln=len(consts), chunk=chunk,
                               keep_starts=keep_starts,
                               sync=_no_sync if interpret else plgpu.debug_barrier)
    outs = ks.call(kernel, name, tuple(state) + tuple(consts) + tuple(tokens), shapes,
                   interpret)
    return tuple(outs[:1]), tuple(outs[1:5]), (), tuple(outs[5:])


def _backward(consts, tokens, starts, cts, *, act, chunk, interpret):
    state = [a.shape[:2] + a.shape[3:] for a in starts[:4]]
    shapes = [a.shape for a in tokens] + state + [a.shape for a in consts]
    if not interpret:
        specs = tuple(jax.ShapeDtypeStruct(s, F32) for s in state)
        _record("titans_mlp_bwd", specs, consts, tokens, chunk, True, act)
    kernel = functools.partial(_bwd_kernel, act=act, n_ln=len(consts), chunk=chunk,
                               sync=_no_sync if interpret else plgpu.debug_barrier)
    outs = ks.call(kernel, "titans_mlp_bwd",
                   tuple(consts) + tuple(tokens) + tuple(starts) + tuple(cts), shapes,
                   interpret)
    return tuple(outs[:N_TOK]), tuple(outs[N_TOK:N_TOK + 4]), tuple(outs[N_TOK + 4:])


@functools.cache
def _op(activation: str, chunk: int):
    act = ACTIVATIONS[activation]
    return ks.differentiable(functools.partial(_forward, act=act, chunk=chunk),
                             functools.partial(_backward, act=act, chunk=chunk))


# ---------------------------------------------------------------------------- the op
def titans_mlp_heads(q, k, v, theta, eta, alpha, params, mom, residual_norm, chunk_size: int,
                     activation: str = "gelu"):
    """`memory.titans_mlp` (depth 2) for every (sequence, head) at once as kernels.

    q, k [B, H, T, K], v [B, H, T, V], gates [B, H, T]; params = (W1 [B, H, K, F], W2 [B, H,
    F, V]), mom likewise; residual_norm = (scale [H, V], bias [H, V]) or None. Returns (y [B,
    H, T, V] in q's dtype, ((W1, W2), (S1, S2))) in float32, as `titans_mlp` per head."""
    B, H, T, K = q.shape
    F, V, C = params[0].shape[-1], v.shape[-1], chunk_size
    tile = min(TILE, F)
    f32 = lambda a: jnp.asarray(a, F32)  # noqa: E731
    tokens = tuple(f32(a) for a in (q, k, v, theta, eta, alpha))
    cols = lambda a: f32(a).reshape(B, H, K, F // tile, tile).swapaxes(2, 3)  # noqa: E731
    rows_ = lambda a: f32(a).reshape(B, H, F // tile, tile, V)  # noqa: E731
    state = (cols(params[0]), cols(mom[0]), rows_(params[1]), rows_(mom[1]))
    consts = () if residual_norm is None else tuple(
        jnp.broadcast_to(f32(a)[None], (B, H, V)) for a in residual_norm)
    (y,), (w1, s1, w2, s2), _ = _op(activation, C)(state, consts, tokens)
    uncols = lambda a: a.swapaxes(2, 3).reshape(B, H, K, F)  # noqa: E731
    unrows = lambda a: a.reshape(B, H, F, V)  # noqa: E731
    return y.astype(q.dtype), ((uncols(w1), unrows(w2)), (uncols(s1), unrows(s2)))


def problems(*, memory: str, depth: int, head_dim: int, hidden: int, chunk_size: int
             ) -> list[str]:
    """What these kernels cannot run, as `field=value` strings (empty: fine)."""
    bad = [] if memory == "mlp" else [f"model.titans.memory={memory}"]
    bad += [] if depth == 2 else [f"model.titans.depth={depth}"]
    bad += [f"{p} (not a power of two)" for p in ks.not_powers_of_two({
        "head dim": head_dim, "model.titans.chunk_size": chunk_size,
        "memory hidden (model.titans.hidden_mult × head dim)": hidden})]
    if chunk_size < MIN_CHUNK:
        bad.append(f"model.titans.chunk_size={chunk_size} (under {MIN_CHUNK})")
    if head_dim < MIN_CHUNK:
        bad.append(f"head dim={head_dim} (under {MIN_CHUNK})")
    return bad


def _model_sizes(m) -> dict:
    t = m.titans
    head = m.head_dim or m.d_model // m.n_heads
    return dict(memory=t.memory, depth=int(t.depth), head_dim=head,
                hidden=int(t.hidden_mult) * head, chunk_size=int(t.chunk_size))


def model_problems(m) -> list[str]:
    """`problems` of a model config (config.model)."""
    return problems(**_model_sizes(m))


def model_uses_kernels(m) -> bool:
    """Whether `TitansMemory` builds these kernels for a model config: "auto" where they
    apply, the head is at most MAX_HEAD (the size compiled for sm_90) and the program is for
    a GPU (`kernel_scan.choose`). A call whose length `fits_call` rejects still takes XLA's
    scan (e.g. decoding's short calls), "pallas" or not."""
    return ks.choose(m.titans.kernel, not model_problems(m)
                     and _model_sizes(m)["head_dim"] <= MAX_HEAD)


def fits_call(T: int, chunk: int) -> bool:
    """Whether a call of T tokens in chunks of `chunk` can run here: Triton's blocks need
    power-of-two token counts (decoding's short calls take XLA's scan)."""
    return chunk >= MIN_CHUNK and T >= chunk and T % chunk == 0 and not T & (T - 1)
