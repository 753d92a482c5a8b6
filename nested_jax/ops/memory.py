"""Titans neural memory: chunked matmul-only dual form and token-loop references.

Pure functions on one head of one sequence (callers vmap; see `batched`). Semantics
(Titans Eqs. 11–14, §3.2; docs/memories.md, "Titans memory"): inner loss ½‖M(k) − v‖²,
gradient at the chunk-start state, momentum S_t = η_t S_{t-1} − θ_t ∇, forgetting
W_t = (1 − α_t) W_{t-1} + S_t, read after write y_t = M_t(q_t). chunk_size = 1 is the exact
per-token recurrence.

Inputs may be bf16: gates, states and every accumulation are float32; y comes back in
q's dtype, end states in float32.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from nested_jax.ops.platform import target_platform
from nested_jax.ops.scan import chunked_scan
from nested_jax.ops.segsum import segsum

Array = jax.Array
F32 = jnp.float32
LN_EPS = 1e-6
ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu": jax.nn.gelu,  # tanh approximation, as in TTT-MLP
    "silu": jax.nn.silu,
}


# ----------------------------------------------------------------------------- helpers
def _num_chunks(T: int, chunk_size: int) -> int:
    if chunk_size < 1 or T % chunk_size:
        raise ValueError(
            f"sequence length T={T} is not divisible by chunk_size={chunk_size}; "
            "pad the sequence or pick a chunk size that divides it."
        )
    return T // chunk_size


def _activation(activation: str | Callable[[Array], Array]) -> Callable[[Array], Array]:
    if callable(activation):
        return activation
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose from {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[activation]


def _safe_log(x: Array) -> Array:
    """log x with log 0 = -inf and a zero (not NaN) gradient where x == 0."""
    pos = x > 0
    return jnp.where(pos, jnp.log(jnp.where(pos, x, 1.0)), -jnp.inf)


def _safe_log1m(a: Array) -> Array:
    """log(1 − a) for a in [0, 1]: -inf at a == 1 with a zero gradient there."""
    ok = a < 1
    return jnp.where(ok, jnp.log1p(-jnp.where(ok, a, 0.0)), -jnp.inf)


class ChunkCoeffs(NamedTuple):
    """Per-chunk scalars of the dual form (docs/memories.md, "Chunked dual form"), all chunks
    at once.

    G[n, t, j]: weight of token j's gradient in W_t (lower-triangular).
    beta, f: coefficients of W0 and S0 in W_t. n: weight of token j's gradient in
    S_C. m: coefficient of S0 in S_C.
    """

    G_NxCxC: Array
    beta_NxC: Array
    f_NxC: Array
    n_NxC: Array
    m_N: Array


def _coeffs_log(theta_NxC: Array, eta_NxC: Array, alpha_NxC: Array) -> ChunkCoeffs:
    """The closed form of docs/memories.md: b = cumsum log(1−α), μ = cumsum log η,
    G = D·P·diag(θ).

    Values are exact at η = 0 and α = 1; there d/dη (d/dα) of that gate is 0.
    """
    la_NxC, le_NxC = _safe_log1m(alpha_NxC), _safe_log(eta_NxC)
    D_NxCxC = jnp.exp(segsum(la_NxC))  # D[t, i] = Π_{i<l≤t} (1 − α_l)
    P_NxCxC = jnp.exp(segsum(le_NxC))  # P[i, j] = Π_{j<l≤i} η_l
    mom_NxC = jnp.exp(jnp.cumsum(le_NxC, axis=1))  # Π_{l≤t} η_l
    hi = jax.lax.Precision.HIGHEST  # coefficients in full fp32 even where dots default to TF32
    G_NxCxC = jnp.einsum("nti,nij->ntj", D_NxCxC, P_NxCxC, precision=hi) * theta_NxC[:, None, :]
    return ChunkCoeffs(
        G_NxCxC=G_NxCxC,
        beta_NxC=jnp.exp(jnp.cumsum(la_NxC, axis=1)),
        f_NxC=jnp.einsum("nti,ni->nt", D_NxCxC, mom_NxC, precision=hi),
        n_NxC=theta_NxC * P_NxCxC[:, -1, :],
        m_N=mom_NxC[:, -1],
    )


def _coeffs_cumulative(theta_NxC: Array, eta_NxC: Array, alpha_NxC: Array) -> ChunkCoeffs:
    """Same coefficients from the recurrence itself, O(C²) per chunk, no exp/log.

    Runs S_t = η_t S_{t-1} + e_t, W_t = (1 − α_t) W_{t-1} + S_t on coefficient rows
    over the columns [S0, W0, token 1..C] (the Titans update applied to one-hot
    inputs), as C sequential steps batched over every chunk. Products of gates
    only: exact values and gradients at η = 0 and α = 1.
    """
    N, C = theta_NxC.shape
    J = C + 2
    onehot_CxJ = jnp.eye(C, J, k=2, dtype=F32)
    S_NxJ = jnp.zeros((N, J), F32).at[:, 0].set(1.0)
    W_NxJ = jnp.zeros((N, J), F32).at[:, 1].set(1.0)

    def step(carry, x):
        S, W = carry
        eta_N, keep_N, e_J = x
        S = eta_N[:, None] * S + e_J[None, :]
        W = keep_N[:, None] * W + S
        return (S, W), W

    xs = (eta_NxC.T, 1.0 - alpha_NxC.T, onehot_CxJ)
    (S_NxJ, _), W_CxNxJ = jax.lax.scan(step, (S_NxJ, W_NxJ), xs)
    W_NxCxJ = jnp.swapaxes(W_CxNxJ, 0, 1)
    return ChunkCoeffs(
        G_NxCxC=W_NxCxJ[:, :, 2:] * theta_NxC[:, None, :],
        beta_NxC=W_NxCxJ[:, :, 1],
        f_NxC=W_NxCxJ[:, :, 0],
        n_NxC=theta_NxC * S_NxJ[:, 2:],
        m_N=S_NxJ[:, 0],
    )


COEFF_METHODS = {"log": _coeffs_log, "cumulative": _coeffs_cumulative}


def chunk_coefficients(theta_NxC, eta_NxC, alpha_NxC, method: str = "auto") -> ChunkCoeffs:
    """Dual-form coefficients for every chunk.

    method: "cumulative" (C sequential steps of O(C) vector work, no matmul; on a
    2-core CPU ~7x cheaper than "log" at C = 64, fwd+bwd), "log" (D·P, one C×C×C
    batched matmul and two C×C exps, no sequential loop), or "auto": cumulative on
    CPU, log on accelerators (where a C-step loop costs C kernel launches): the platform
    the program is built for (`platform.target_platform`: a compile-only GPU counts).
    """
    if method == "auto":
        method = "cumulative" if target_platform() == "cpu" else "log"
    if method not in COEFF_METHODS:
        raise ValueError(
            f"unknown coefficient method {method!r}; choose from {sorted(COEFF_METHODS)} or 'auto'"
        )
    gates = [jnp.asarray(g, F32) for g in (theta_NxC, eta_NxC, alpha_NxC)]
    return COEFF_METHODS[method](*gates)


def _prepare(q, k, v, gates, chunk_size):
    """Chunk views in float32: Q,K [N,C,K], V [N,C,V], coefficient inputs [N,C]."""
    T = q.shape[0]
    N = _num_chunks(T, chunk_size)
    Q, K, V = (jnp.asarray(x, F32).reshape(N, chunk_size, -1) for x in (q, k, v))
    g = [jnp.asarray(x, F32).reshape(N, chunk_size) for x in gates]
    return Q, K, V, g


# ----------------------------------------------------------------------- linear memory
def titans_linear(
    q_TxK: Array,
    k_TxK: Array,
    v_TxV: Array,
    theta_T: Array,
    eta_T: Array,
    alpha_T: Array,
    W0_KxV: Array,
    S0_KxV: Array,
    chunk_size: int,
    remat_group: int = 0,
    unroll_max: int = 1,
    coeff_method: str = "auto",
) -> tuple[Array, tuple[Array, Array]]:
    """Linear Titans memory, chunked dual form. Returns y [T,V], (W, S) end states.

    Per chunk (docs/memories.md, "Chunked dual form"), with E = K W0 − V the errors at the
    chunk start:
        Y = diag(β) Q W0 + diag(f) Q S0 − ((Q Kᵀ) ⊙ G) E
        W_C = β_C W0 + f_C S0 − Kᵀ diag(G_C,:) E,   S_C = m_C S0 − Kᵀ diag(n) E
    The state-free parts (coefficients, (Q Kᵀ) ⊙ G) are built for all chunks at once;
    the scan over chunks carries (W, S) only. remat_group: chunks per rematerialised
    group (0 = off; must divide T / chunk_size). coeff_method: see `chunk_coefficients`.
    """
    Q, K, V, (th, et, al) = _prepare(q_TxK, k_TxK, v_TxV, (theta_T, eta_T, alpha_T), chunk_size)
    co = chunk_coefficients(th, et, al, coeff_method)
    # State-independent part of every chunk at once: ((Q Kᵀ) ⊙ G).
    QKG_NxCxC = jnp.einsum("nck,ndk->ncd", Q, K) * co.G_NxCxC
    xs = (Q, K, V, QKG_NxCxC, co.beta_NxC, co.f_NxC, co.G_NxCxC[:, -1, :], co.n_NxC, co.m_N)

    def step(carry, x):
        W, S = carry
        Qc, Kc, Vc, QKG, beta, f, g_last, n, m = x
        E_CxV = Kc @ W - Vc  # errors at the chunk-start state
        Y_CxV = beta[:, None] * (Qc @ W) + f[:, None] * (Qc @ S) - QKG @ E_CxV
        W_new = beta[-1] * W + f[-1] * S - Kc.T @ (g_last[:, None] * E_CxV)
        S_new = m * S - Kc.T @ (n[:, None] * E_CxV)
        return (W_new, S_new), Y_CxV

    state0 = (jnp.asarray(W0_KxV, F32), jnp.asarray(S0_KxV, F32))
    (W, S), Y_NxCxV = chunked_scan(step, state0, xs, remat_group, unroll_max)
    return Y_NxCxV.reshape(q_TxK.shape[0], -1).astype(q_TxK.dtype), (W, S)


# -------------------------------------------------------------------------- MLP memory
def _layer_norm(x: Array, scale: Array, bias: Array) -> Array:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + LN_EPS) * scale + bias


def _check_wrap(q, v, residual_norm) -> None:
    if residual_norm is not None and q.shape[-1] != v.shape[-1]:
        raise ValueError(
            f"residual_norm needs equal key and value dims (x + LN(mem(x))), got "
            f"{q.shape[-1]} and {v.shape[-1]}."
        )


def _wrap(x: Array, core_out: Array, residual_norm) -> Array:
    """Memory output from the core MLP output: plain, or x + LN(core)·scale + bias."""
    if residual_norm is None:
        return core_out
    shape = (1,) * (core_out.ndim - 1) + (-1,)
    scale, bias = (jnp.asarray(a, F32).reshape(shape) for a in residual_norm)
    return x + _layer_norm(core_out, scale, bias)


def titans_mlp(
    q_TxK: Array,
    k_TxK: Array,
    v_TxV: Array,
    theta_T: Array,
    eta_T: Array,
    alpha_T: Array,
    params0: tuple[Array, ...],
    mom0: tuple[Array, ...],
    chunk_size: int,
    activation: str | Callable[[Array], Array] = "gelu",
    remat_group: int = 0,
    unroll_max: int = 1,
    residual_norm: tuple[Array, Array] | None = None,
    coeff_method: str = "auto",
) -> tuple[Array, tuple[tuple[Array, ...], tuple[Array, ...]]]:
    """Deep MLP memory σ(…σ(x W1)…) W_L of L = len(params0) ≥ 2 layers (Titans §3.1, depth
    L_M of §5.5), layer-by-layer dual form (docs/memories.md, "MLP (deep) memory"; L = 2 is
    σ(x W1) W2).

    params0 = (W1 [K,F], …, W_L [F,V]), mom0 likewise. residual_norm = (scale [V],
    bias [V]) makes the memory x + LN(MLP(x))·scale + bias (TTT / lucidrains
    ResidualNorm; needs K == V) for both the inner loss and the read; the dual form
    stays exact because every gradient is taken at the chunk-start state: per layer l
    with input H_{l-1} (H_0 = K) and back-propagated error Δ_l (Δ_L = E),
        Z̄_l = diag(β) H̄_{l-1} W_l + diag(f) H̄_{l-1} S_l − ((H̄_{l-1} H_{l-1}ᵀ) ⊙ G) Δ_l
    with H̄_0 = Q, H̄_l = σ(Z̄_l), and Y = Z̄_L.
    Returns y [T,V], ((W1, …, W_L), (S1, …, S_L)).
    """
    act = _activation(activation)
    _check_wrap(q_TxK, v_TxV, residual_norm)
    if len(params0) < 2 or len(mom0) != len(params0):
        raise ValueError(f"titans_mlp needs >= 2 layers and one momentum per layer, got "
                         f"{len(params0)} and {len(mom0)}.")
    Q, K, V, (th, et, al) = _prepare(q_TxK, k_TxK, v_TxV, (theta_T, eta_T, alpha_T), chunk_size)
    co = chunk_coefficients(th, et, al, coeff_method)
    QKG_NxCxC = jnp.einsum("nck,ndk->ncd", Q, K) * co.G_NxCxC
    xs = (Q, K, V, QKG_NxCxC, co.G_NxCxC, co.beta_NxC, co.f_NxC, co.n_NxC, co.m_N)

    def step(carry, x):
        Ws, Ss = carry
        Qc, Kc, Vc, QKG, G, beta, f, n, m = x
        g_last = G[-1]
        # Chunk-start forward of the inner loss: layer inputs H_{l-1} and pre-activations.
        Hs, dA = [Kc], []
        for W in Ws[:-1]:
            A_CxF, dA_CxF = jax.jvp(act, (Hs[-1] @ W,), (jnp.ones((Kc.shape[0], W.shape[1])),))
            Hs.append(A_CxF)
            dA.append(dA_CxF)
        O_CxV, wrap_vjp = jax.vjp(lambda o: _wrap(Kc, o, residual_norm), Hs[-1] @ Ws[-1])
        (E_CxV,) = wrap_vjp(O_CxV - Vc)
        # Backward: Δ_L = E, Δ_l = (Δ_{l+1} W_{l+1}ᵀ) ⊙ σ'(Z_l).
        Deltas = [E_CxV]
        for W, d in zip(Ws[:0:-1], dA[::-1]):
            Deltas.insert(0, (Deltas[0] @ W.T) * d)
        # Reads after each token's write, layer by layer.
        Hbar = Qc
        for li, (W, S, Hl, Dl) in enumerate(zip(Ws, Ss, Hs, Deltas)):
            HHG = QKG if li == 0 else (Hbar @ Hl.T) * G
            Zbar = beta[:, None] * (Hbar @ W) + f[:, None] * (Hbar @ S) - HHG @ Dl
            Hbar = act(Zbar) if li < len(Ws) - 1 else Zbar
        Y_CxV = _wrap(Qc, Hbar, residual_norm)
        # End-of-chunk states.
        Wn = tuple(beta[-1] * W + f[-1] * S - Hl.T @ (g_last[:, None] * Dl)
                   for W, S, Hl, Dl in zip(Ws, Ss, Hs, Deltas))
        Sn = tuple(m * S - Hl.T @ (n[:, None] * Dl) for S, Hl, Dl in zip(Ss, Hs, Deltas))
        return (Wn, Sn), Y_CxV

    f32 = lambda t: tuple(jnp.asarray(a, F32) for a in t)  # noqa: E731
    (params, mom), Y_NxCxV = chunked_scan(step, (f32(params0), f32(mom0)), xs, remat_group,
                                          unroll_max)
    return Y_NxCxV.reshape(q_TxK.shape[0], -1).astype(q_TxK.dtype), (params, mom)


def mlp_read(params: tuple[Array, ...], q_TxK: Array, activation="gelu",
             residual_norm: tuple[Array, Array] | None = None) -> Array:
    """M(q) of a (deep) MLP memory with fixed weights: no write (Titans Eq. 15, y = M*(q))."""
    act = _activation(activation)
    h = jnp.asarray(q_TxK, F32)
    for W in params[:-1]:
        h = act(h @ W)
    return _wrap(jnp.asarray(q_TxK, F32), h @ params[-1], residual_norm).astype(q_TxK.dtype)


# ------------------------------------------------------------------ batching over B, H
def batched(fn: Callable, state_has_batch: bool = False) -> Callable:
    """Map a one-head memory fn over [B, H, T, ...] inputs.

    Returned function: run(q, k, v, theta, eta, alpha, state0, state1, *,
    per_head=None, **kwargs). q,k,v [B,H,T,·], gates [B,H,T]; the two initial
    states have a leading H axis (trained per-head parameters, shared over the
    batch), or [B,H,...] when state_has_batch. per_head: dict of keyword arrays
    with a leading H axis (e.g. residual_norm=(scale_HxV, bias_HxV)); other
    keyword arguments are static (chunk_size, remat_group, ...).
    """

    def run(q, k, v, theta, eta, alpha, state0, state1, *, per_head=None, **kwargs):
        per_head = {} if per_head is None else per_head

        def one(q, k, v, th, et, al, s0, s1, ph):
            return fn(q, k, v, th, et, al, s0, s1, **kwargs, **ph)

        over_h = jax.vmap(one, in_axes=(0,) * 9)
        s_ax = 0 if state_has_batch else None
        over_bh = jax.vmap(over_h, in_axes=(0,) * 6 + (s_ax, s_ax, None))
        return over_bh(q, k, v, theta, eta, alpha, state0, state1, per_head)

    return run


def linear_flops_per_token(dk: int, dv: int, chunk_size: int) -> float:
    """Chunked linear memory ≈ 10·dk·dv + 2C(dk + dv) FLOPs / token / head (docs/memories.md,
    "Cost per token")."""
    return 10.0 * dk * dv + 2.0 * chunk_size * (dk + dv)


def mlp_flops_per_token(dk: int, dh: int, dv: int, chunk_size: int) -> float:
    """Chunked MLP ≈ 10·dk·h + 12·h·dv + 2C(dk + 2h + dv) FLOPs / token / head
    (docs/memories.md, "Cost per token")."""
    return 10.0 * dk * dh + 12.0 * dh * dv + 2.0 * chunk_size * (dk + 2 * dh + dv)

