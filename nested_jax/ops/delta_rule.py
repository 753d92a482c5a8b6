"""Delta gradient descent (DGD) with retention: chunk algebra and the linear memory.

Row-vector convention, tokens are rows, one head of one sequence (callers vmap).
Within a chunk every gradient g_t is taken at the chunk-start state ξ, so g_t is a
constant outer product. Two kinds of matrix X (with momentum S, constant β in [0, 1)):

    input side (rank-1 DGD term):   S_t = β S_{t-1} − η_t k_tᵀ d_t
                                    X_t = (α_t I − η_t k_t k_tᵀ) X_{t-1} + S_t
    output side (retention only):   S_t = β S_{t-1} − η_t a_tᵀ e_t
                                    X_t = α_t X_{t-1} + S_t

(k_t k_tᵀ is the [K,K] outer product of the row k_t.) β = 0 is plain DGD, S_t = −η_t g_t.
α_t is a retention factor: 1 keeps everything (the opposite of Titans' forget gate).

Chunk solution, γ_t = Π_{j≤t} α_j computed as exp of segment sums of log α (never a
ratio of cumulative products, so nothing over/underflows for tiny α or long chunks):
with u_t = k_t X_{t-1} the input side is X_t = α_t X_{t-1} − η_t k_tᵀ u_t + S_t, and the
u_t solve the unit-lower-triangular C×C system (WY/UT form of a gated delta rule)

    (I + L) U = diag(γ_{t-1}) K X_0 + diag(c_{t-1}) K S_0 − ((K Kᵀ) ⊙ G_{t-1,:}) D
    L_ts = (γ_{t-1}/γ_s) η_s (k_t·k_s)  for s < t
    G_ti = η_i Σ_{i≤s≤t} (γ_t/γ_s) β^{s-i},   c_t = Σ_{s≤t} (γ_t/γ_s) β^s

    X_C = γ_C X_0 + c_C S_0 − Kᵀ diag(η_s γ_C/γ_s) U − Kᵀ diag(G_C,:) D
    S_C = β^C S_0 − Kᵀ diag(η_i β^{C-i}) D
(β = 0: G_ti = η_i γ_t/γ_i, c = 0, and the D terms fold into U: rhs += D.)
The output side is the same without L and U.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from nested_jax.ops.segsum import segsum

TINY = 1e-30  # floor for α before its log (α = 0 then means α = 1e-30)


def log_retention(alpha):
    """log α with α floored at TINY: finite values and gradients down to α = 0.

    Gradients flow through log α, so d/dα = (d/d log α)/α: exact for ordinary α, zero at
    α = 0, and imprecise (float32 underflow) for α ≲ 1e-20. Gates given as logits should
    pass log α = log_sigmoid(logit) directly (as `selfmod_titans` does).
    """
    return jnp.log(jnp.maximum(alpha, TINY))


def check_momentum(momentum: float) -> float:
    momentum = float(momentum)
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum={momentum} must be in [0, 1).")
    return momentum


def _mm(a, b):
    return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)  # tiny: exact on GPUs too


def decays(log_alpha_C, eta_C, momentum: float = 0.0) -> dict:
    """Decay weights of one chunk; rows t = 0..C (row 0 = chunk start), cols s = 1..C.

    gamma [C+1]: γ_t.  lam [C+1,C]: η_s γ_t/γ_s (0 for s > t).
    momentum > 0 adds G [C+1,C], c [C+1], sw [C] (η_i β^{C-i}), betaC (β^C).
    """
    C = log_alpha_C.shape[0]
    la_n = jnp.concatenate([jnp.zeros((1,), log_alpha_C.dtype), log_alpha_C])
    dm = jnp.exp(segsum(la_n))  # dm[t, s] = Π_{s<j≤t} α_j (0 for s > t)
    out = dict(gamma=dm[:, 0], lam=dm[:, 1:] * eta_C[None, :])
    if momentum:
        i = jnp.arange(C)
        lag = i[:, None] - i[None, :]
        pow_CxC = jnp.where(lag >= 0, momentum ** jnp.maximum(lag, 0).astype(eta_C.dtype), 0.0)
        out["G"] = _mm(dm[:, 1:], pow_CxC) * eta_C[None, :]
        out["c"] = _mm(dm[:, 1:], momentum ** (i + 1).astype(eta_C.dtype))
        out["sw"] = eta_C * momentum ** (C - 1 - i).astype(eta_C.dtype)
        out["betaC"] = momentum**C
    return out


def _doubling_inverse(l_CxC):
    """(I + l)⁻¹ for strictly lower-triangular l, with matmuls only: l is nilpotent, so
    (I + l)⁻¹ = Σ_{k<C} M^k = (I + M)(I + M²)(I + M⁴)… with M = −l, ⌈log₂ C⌉ − 1 doublings
    of two C×C×C matmuls each. Exact like a triangular solve, and it avoids XLA:CPU's
    batched triangular-solve kernel, which at some sizes (e.g. C = 32 under vmap) ran ~1000×
    slower than these matmuls."""
    C = l_CxC.shape[-1]
    M_CxC = -l_CxC
    T_CxC = jnp.eye(C, dtype=l_CxC.dtype) + M_CxC  # Σ_{k<span} M^k
    span = 2
    while span < C:
        M_CxC = _mm(M_CxC, M_CxC)  # M^span
        T_CxC = T_CxC + _mm(T_CxC, M_CxC)
        span *= 2
    return T_CxC


@jax.custom_vjp
def unit_lower_inverse(l_CxC):
    """(I + l)⁻¹ for strictly lower-triangular l (`_doubling_inverse`). Backward: the
    inverse's own adjoint, l̄ = −Tᵀ T̄ Tᵀ with T = (I + l)⁻¹ (two matmuls; not the
    doublings' autodiff)."""
    return _doubling_inverse(l_CxC)


def _inverse_fwd(l_CxC):
    # The rule calls the function itself: when an enclosing differentiation sees this
    # forward (the online scan's outer gradient through the teach signal's vjp), it uses
    # the custom rule too instead of differentiating the doublings.
    T_CxC = unit_lower_inverse(l_CxC)
    return T_CxC, T_CxC


def _inverse_bwd(T_CxC, dT_CxC):
    return (-_mm(_mm(T_CxC.T, dT_CxC), T_CxC.T),)


unit_lower_inverse.defvjp(_inverse_fwd, _inverse_bwd)


@jax.custom_vjp
def unit_lower_solve(l_CxC, rhs_CxH):
    """Solve (I + l) u = rhs for strictly lower-triangular l: u = T·rhs with the explicit
    inverse T = (I + l)⁻¹ (`_doubling_inverse`: the same matmul count as doubling on rhs).
    Backward (custom, the solve's own adjoint): r̄ = Tᵀ ū and l̄ = −r̄ uᵀ, from the kept T
    and u — two matmuls, where the doublings' autodiff or a transposed doubling solve takes
    a dozen small kernels per chunk (the chunked scans' backward pass is kernel-bound)."""
    return _mm(_doubling_inverse(l_CxC), rhs_CxH)


def _solve_fwd(l_CxC, rhs_CxH):
    T_CxC = unit_lower_inverse(l_CxC)  # an enclosing differentiation takes its rule
    u_CxH = _mm(T_CxC, rhs_CxH)
    return u_CxH, (T_CxC, u_CxH)


def _solve_bwd(res, du_CxH):
    T_CxC, u_CxH = res
    drhs_CxH = _mm(T_CxC.T, du_CxH)
    return -_mm(drhs_CxH, u_CxH.T), drhs_CxH


unit_lower_solve.defvjp(_solve_fwd, _solve_bwd)


def chunk_coeffs(k_CxK, log_alpha_C, eta_C, momentum: float = 0.0, q_CxK=None,
                 dgd: bool = True) -> dict:
    """`decays` plus everything else of a chunk that depends on its keys, gates and queries
    only, never on the state: the WY/UT inverse "inv" = (I + L)⁻¹ (dgd), (K Kᵀ) ⊙ G "kkG"
    (momentum) and the read masks (Q Kᵀ) ⊙ Λ "qk_lam", (Q Kᵀ) ⊙ G "qk_G" (with q). For a scan
    whose keys and gates are known before it starts (M_mem's), computed for all chunks at
    once outside the scan; `input_side_solve` / `input_side_read` use them when present."""
    C = k_CxK.shape[0]
    dec = decays(log_alpha_C, eta_C, momentum)
    kk_CxC = k_CxK @ k_CxK.T
    if dgd:
        dec["inv"] = unit_lower_inverse(kk_CxC * dec["lam"][:C])
    if momentum:
        dec["kkG"] = kk_CxC * dec["G"][:C]
    if q_CxK is not None:
        qk_CxC = q_CxK @ k_CxK.T
        dec["qk_lam"] = qk_CxC * dec["lam"][1:]
        if momentum:
            dec["qk_G"] = qk_CxC * dec["G"][1:]
    return dec


def input_side_solve(k_CxK, kX0_CxH, S0_KxH, d_CxH, dec: dict, momentum: float):
    """The u_t = k_t X_{t-1} (β = 0: k_t X_{t-1} + d_t) of one chunk: the WY/UT solve.
    dec from `decays`, or from `chunk_coeffs` (precomputed inverse). Vmapped over memories
    that share k and the gates (k, dec unbatched), the powers of L are computed once."""
    C = k_CxK.shape[0]
    rhs_CxH = dec["gamma"][:C, None] * kX0_CxH
    if momentum:
        kkG_CxC = dec["kkG"] if "kkG" in dec else (k_CxK @ k_CxK.T) * dec["G"][:C]
        rhs_CxH = rhs_CxH + dec["c"][:C, None] * (k_CxK @ S0_KxH) - kkG_CxC @ d_CxH
    else:
        rhs_CxH = rhs_CxH + d_CxH
    if "inv" in dec:
        return _mm(dec["inv"], rhs_CxH)
    l_CxC = (k_CxK @ k_CxK.T) * dec["lam"][:C]  # strictly lower: lam[t-1, s] = 0 for s ≥ t
    return unit_lower_solve(l_CxC, rhs_CxH)


def input_side_chunk(X0_KxH, S0_KxH, k_CxK, kX0_CxH, d_CxH, dec: dict, momentum: float,
                     u_CxH=None):
    """End state (X_C, S_C) of the rank-1 DGD recurrence over one chunk (module docstring).

    u_CxH: the chunk's `input_side_solve` when the caller already has it.
    """
    C = k_CxK.shape[0]
    if u_CxH is None:
        u_CxH = input_side_solve(k_CxK, kX0_CxH, S0_KxH, d_CxH, dec, momentum)
    X_KxH = dec["gamma"][C] * X0_KxH - k_CxK.T @ (dec["lam"][C][:, None] * u_CxH)
    if momentum:
        X_KxH = X_KxH + dec["c"][C] * S0_KxH - k_CxK.T @ (dec["G"][C][:, None] * d_CxH)
    return X_KxH, _momentum_end(S0_KxH, k_CxK, d_CxH, dec, momentum)


def input_side_read(q_CxK, qX0_CxH, qS0_CxH, k_CxK, u_CxH, d_CxH, dec: dict, momentum: float):
    """q_t X_t for every t of the chunk: reads after the in-chunk writes up to t (dual form).

    X_t = γ_t X_0 + c_t S_0 − Σ_{s≤t} (γ_t/γ_s) η_s k_sᵀ u_s − Σ_{i≤t} G_ti k_iᵀ d_i, so
        Q X = diag(γ) Q X_0 + diag(c) Q S_0 − ((Q Kᵀ) ⊙ Λ) U − ((Q Kᵀ) ⊙ G) D
    with Λ_ts = η_s γ_t/γ_s (s ≤ t), rows t = 1..C (β = 0: no S_0 and G terms, D inside U).
    qS0 is only read with momentum (pass None otherwise).
    """
    if "qk_lam" in dec:  # precomputed (`chunk_coeffs`)
        qk_lam, qk_G = dec["qk_lam"], dec.get("qk_G")
    else:
        qk_CxC = q_CxK @ k_CxK.T
        qk_lam, qk_G = qk_CxC * dec["lam"][1:], (qk_CxC * dec["G"][1:] if momentum else None)
    out_CxH = dec["gamma"][1:, None] * qX0_CxH - qk_lam @ u_CxH
    if momentum:
        out_CxH = out_CxH + dec["c"][1:, None] * qS0_CxH - qk_G @ d_CxH
    return out_CxH


def output_side_chunk(X0_HxV, S0_HxV, a_CxH, e_CxV, dec: dict, momentum: float):
    """End state (X_C, S_C) of the retention-only recurrence over one chunk."""
    C = a_CxH.shape[0]
    if momentum:
        X_HxV = dec["gamma"][C] * X0_HxV + dec["c"][C] * S0_HxV
        X_HxV = X_HxV - a_CxH.T @ (dec["G"][C][:, None] * e_CxV)
    else:
        X_HxV = dec["gamma"][C] * X0_HxV - a_CxH.T @ (dec["lam"][C][:, None] * e_CxV)
    return X_HxV, _momentum_end(S0_HxV, a_CxH, e_CxV, dec, momentum)


def output_side_read(r_CxH, rX0_CxV, rS0_CxV, a_CxH, e_CxV, dec: dict, momentum: float):
    """r_t X_t for every t of the chunk (retention-only side, reads after the writes up to t):
        R X = diag(γ) R X_0 + diag(c) R S_0 − ((R Aᵀ) ⊙ W) E,  W = Λ (β = 0) or G."""
    w_CxC = dec["G"][1:] if momentum else dec["lam"][1:]
    out_CxV = dec["gamma"][1:, None] * rX0_CxV - ((r_CxH @ a_CxH.T) * w_CxC) @ e_CxV
    if momentum:
        out_CxV = out_CxV + dec["c"][1:, None] * rS0_CxV
    return out_CxV


def _momentum_end(S0, left_CxK, right_CxH, dec, momentum):
    if momentum:
        return dec["betaC"] * S0 - left_CxK.T @ (dec["sw"][:, None] * right_CxH)
    eta_last = dec["lam"][-1, -1]  # η_C (γ_C/γ_C = 1): β = 0 keeps S_C = −η_C g_C
    return -eta_last * (left_CxK[-1][:, None] * right_CxH[-1][None, :])


def check_chunks(T: int, chunk_size: int, what: str = "chunk_size") -> int:
    if chunk_size < 1 or T % chunk_size:
        raise ValueError(f"sequence length T={T} must be divisible by {what}={chunk_size}.")
    return T // chunk_size


