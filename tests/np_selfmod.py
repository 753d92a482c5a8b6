"""Independent NumPy float64 transcription of HOPE's self-modifying Titans (NL arXiv
2512.24695 §8.1–8.2, Eqs. 83–93) for tests. Shares no code with nested_jax: one token at a
time, inner gradients written out by hand, no chunk algebra.

Memory (NL Eq. 89, row convention): M(z) = z·P (or z when square) + σ(z A) B, σ = GELU
(tanh form). Gate memories M_η, M_α are D→1 with a slow skip P and a bias b added to the
gate logit only. Per token t, with ξ_□ the state of memory □ at its last chunk boundary
(chunk C for k, v, q, η, α; C_mem for M_mem):
    k_t = ℓ2(M_k,ξ(x_t)),  v_t = M_v,ξ(x_t) (ℓ2 if v_norm),  q_t = ℓ2(q_t) or ℓ2(M_q,ξ(x_t))
    η_t = eta_scale · softplus(M_η,ξ(x_t) + b_η),  α_t = sigmoid(M_α,ξ(x_t) + b_α) (1 if no retention)
    v̂_□,t = M_□,ξ(v_t)                                        (Eq. 84, self-generated target)
    g_□,t = ∇_{A,B} ½‖M_□,ξ(k_t) − v̂_□,t‖²                     (gradient at ξ, Eqs. 90–93)
    S_□ ← β S_□ − η_t g_□,t                                     (β = momentum; 0 = Eq. 88)
    A_□ ← (α_t I − η_t k_t k_tᵀ) A_□ + S^A_□   (α_t A_□ + S^A_□ without DGD)     (Eq. 88)
    B_□ ← α_t B_□ + S^B_□
    y_t = M_mem,t(q_t) (after token t's write; "boundary": M_mem,ξ(q_t))
"""

from __future__ import annotations

import copy

import numpy as np

C_GELU = np.sqrt(2.0 / np.pi)


def gelu(z):
    return 0.5 * z * (1.0 + np.tanh(C_GELU * (z + 0.044715 * z**3)))


def gelu_prime(z):
    u = C_GELU * (z + 0.044715 * z**3)
    th = np.tanh(u)
    return 0.5 * (1.0 + th) + 0.5 * z * (1.0 - th**2) * C_GELU * (1.0 + 3 * 0.044715 * z**2)


def softplus(x):
    return np.log1p(np.exp(-abs(x))) + max(x, 0.0)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def l2(v):
    return v / np.sqrt(np.sum(v * v) + 1e-12)


def apply(m, z):
    """M(z) for one row z [D] (no gate bias)."""
    skip = z @ m["P"] if "P" in m else z
    return skip + gelu(z @ m["A"]) @ m["B"]


def inner_grads(m, k, vhat):
    """∇_A and ∇_B of ½‖M(k) − v̂‖², by the chain rule."""
    z = k @ m["A"]
    e = apply(m, k) - vhat
    g_b = np.outer(gelu(z), e)
    g_a = np.outer(k, (e @ m["B"].T) * gelu_prime(z))
    return g_a, g_b


def selfmod(params0, x, q=None, *, chunk, chunk_mem, eta_scale, momentum=0.0,
            mem_read="dual", dgd=True, retention=True, frozen=(), v_norm=False):
    """Returns y [T, D], final memories and momenta (dicts like params0)."""
    p = {n: {k: np.asarray(v, np.float64) for k, v in m.items()} for n, m in params0.items()}
    x = np.asarray(x, np.float64)
    names = list(p)
    run = copy.deepcopy(p)
    mom = {n: {"A": np.zeros_like(m["A"]), "B": np.zeros_like(m["B"])} for n, m in p.items()}
    snap = {}
    ys = []
    D = x.shape[1]
    for t in range(x.shape[0]):
        for n in names:
            if t % (chunk_mem if n == "mem" else chunk) == 0:
                snap[n] = copy.deepcopy(run[n])
        k = l2(apply(snap["k"], x[t]))
        v = apply(snap["v"], x[t])
        v = l2(v) if v_norm else v
        eta = eta_scale * softplus(apply(snap["eta"], x[t])[0] + float(snap["eta"]["b"]))
        alpha = sigmoid(apply(snap["alpha"], x[t])[0] + float(snap["alpha"]["b"])) if retention else 1.0
        q_t = l2(apply(snap["q"], x[t]) if "q" in p else np.asarray(q[t], np.float64))
        for n in names:
            if n in frozen:
                continue
            g_a, g_b = inner_grads(snap[n], k, apply(snap[n], v))
            mom[n]["A"] = momentum * mom[n]["A"] - eta * g_a
            mom[n]["B"] = momentum * mom[n]["B"] - eta * g_b
            pre = alpha * np.eye(D) - (eta * np.outer(k, k) if dgd else 0.0)
            run[n]["A"] = pre @ run[n]["A"] + mom[n]["A"]
            run[n]["B"] = alpha * run[n]["B"] + mom[n]["B"]
        ys.append(apply(run["mem"] if mem_read == "dual" else snap["mem"], q_t))
    return np.stack(ys), run, mom
