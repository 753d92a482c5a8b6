"""Titans memory ops: the chunked dual form equals the token loop (values, states, grads).

Float32 with highest matmul precision; relative errors are ‖a − b‖ / ‖b‖ per array.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nested_jax.configs import default
from nested_jax.ops import memory as M
from nested_jax.ops import reference as ref

TOL = 1e-5
METHODS = ("cumulative", "log")
TRAINING_UNROLL = default.get_config().model.unroll_chunks  # chunk scans training unrolls
linear = jax.jit(M.titans_linear, static_argnums=8, static_argnames=("remat_group", "coeff_method"))
linear_ref = jax.jit(ref.titans_linear_reference, static_argnums=8)
mlp = jax.jit(
    M.titans_mlp, static_argnums=8, static_argnames=("activation", "remat_group", "coeff_method")
)
mlp_ref = jax.jit(ref.titans_mlp_reference, static_argnums=8, static_argnames="activation")


@pytest.fixture(autouse=True)
def _highest_precision():
    with jax.default_matmul_precision("highest"):
        yield


def rel_err(a, b) -> float:
    """Largest per-leaf relative error ‖a − b‖ / ‖b‖ over two pytrees."""
    errs = jax.tree.map(
        lambda x, y: float(jnp.linalg.norm(jnp.ravel(x - y)) / jnp.linalg.norm(jnp.ravel(y))), a, b
    )
    return max(jax.tree.leaves(errs))


def make_inputs(T=64, dk=8, dv=6, seed=0, theta=(0.05, 0.5), eta=(0.5, 0.99), alpha=(0.0, 0.1)):
    """Unit-norm q, k (as the model's ℓ2-normalised projections), gates in the given ranges."""
    r = np.random.default_rng(seed)
    q, k = r.normal(size=(T, dk)), r.normal(size=(T, dk))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    k /= np.linalg.norm(k, axis=1, keepdims=True)
    v = r.normal(size=(T, dv))
    gates = [r.uniform(*rng, size=T) for rng in (theta, eta, alpha)]
    W0, S0 = 0.3 * r.normal(size=(dk, dv)), 0.1 * r.normal(size=(dk, dv))
    return [jnp.asarray(a, jnp.float32) for a in (q, k, v, *gates, W0, S0)]


def mlp_state(dk=8, h=16, dv=8, seed=1):
    r = np.random.default_rng(seed)
    f = lambda *s: jnp.asarray(r.normal(size=s), jnp.float32)  # noqa: E731
    params = (0.4 * f(dk, h), 0.4 * f(h, dv))
    mom = (0.02 * f(dk, h), 0.02 * f(h, dv))
    return params, mom


def extreme_gates(T, seed=0):
    """Gates that hit every edge: η = 0 exactly, α = 0, α → 1 (and = 1), tiny θ."""
    r = np.random.default_rng(seed)
    theta = r.uniform(0.05, 0.5, T)
    eta = r.uniform(0.5, 0.999, T)
    alpha = r.uniform(0.0, 0.05, T)
    idx = np.arange(T)
    eta[idx % 5 == 0] = 0.0
    alpha[idx % 7 == 0] = 0.0
    alpha[idx % 11 == 3] = 1.0 - 1e-7
    alpha[idx % 13 == 4] = 1.0
    theta[idx % 3 == 1] = 1e-8
    return [jnp.asarray(a, jnp.float32) for a in (theta, eta, alpha)]


# ----------------------------------------------------------------------------- linear
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("chunk", [1, 4, 16, 64])
def test_linear_chunked_equals_token_loop(chunk, method):
    """C = 1 against the exact per-token recurrence, C > 1 against chunk-start gradients."""
    args = make_inputs(T=128)
    y, state = linear(*args, chunk, coeff_method=method)
    y_ref, state_ref = linear_ref(*args, chunk)
    assert rel_err(y, y_ref) < TOL
    assert rel_err(state, state_ref) < TOL


def test_linear_chunk_start_gradients_differ_from_exact():
    """Sanity: the chunk approximation is a different function (the tests can fail)."""
    args = make_inputs(T=64)
    y16, _ = linear(*args, 16)
    y1, _ = linear_ref(*args, 1)
    assert rel_err(y16, y1) > 1e-2


def grad(fn, argnums):
    return jax.jit(jax.grad(fn, argnums))


@functools.cache
def loss_grad(fn, **static):
    """Jitted gradient wrt the 8 inputs of Σ y⊙w_y + Σ_s state_s⊙w_s (weights as args).

    Cached per (fn, static args), so tests with equal shapes share one compile.
    """

    def loss(weights, *args):
        wy, ws = weights
        y, state = fn(*args, **static)
        return jnp.sum(y * wy) + sum(jnp.sum(s * w) for s, w in zip(jax.tree.leaves(state), ws))

    return jax.jit(jax.grad(loss, argnums=tuple(range(1, 9))))


def random_weights(y_shape, state_shapes, seed=5):
    r = np.random.default_rng(seed)
    f = lambda s: jnp.asarray(r.normal(size=s), jnp.float32)  # noqa: E731
    return f(y_shape), [f(s) for s in state_shapes]


# TRAINING_UNROLL: the 4 chunks' scan unrolled, as training compiles it (model.unroll_chunks
# = 16 in the presets; the tests' model configs loop).
@pytest.mark.parametrize("chunk,method,unroll", [(1, "cumulative", 1), (16, "cumulative", 1),
                                                 (16, "log", 1),
                                                 (16, "cumulative", TRAINING_UNROLL)])
def test_linear_outer_gradients_match_reference(chunk, method, unroll):
    args = make_inputs(T=64)
    weights = random_weights((64, 6), [(8, 6)] * 2)
    g = loss_grad(M.titans_linear, chunk_size=chunk, coeff_method=method,
                  unroll_max=unroll)(weights, *args)
    g_ref = loss_grad(ref.titans_linear_reference, chunk_size=chunk)(weights, *args)
    for name, a, b in zip("q k v theta eta alpha W0 S0".split(), g, g_ref):
        assert rel_err(a, b) < TOL, name


def test_linear_causal():
    """Outputs of chunk 0 do not depend on any later input (gradient is exactly zero)."""
    q, k, v, th, et, al, W0, S0 = make_inputs(T=32)
    f = lambda k, v, th: M.titans_linear(q, k, v, th, et, al, W0, S0, 8)[0][:8].sum()  # noqa: E731
    for g in grad(f, (0, 1, 2))(k, v, th):
        assert float(jnp.abs(g[8:]).max()) == 0.0
        assert float(jnp.abs(g[:8]).max()) > 0.0


def test_linear_remat_groups_change_nothing():
    args = make_inputs(T=64)
    weights = random_weights((64, 6), [(8, 6)] * 2)
    g0 = loss_grad(M.titans_linear, chunk_size=16, coeff_method="cumulative")(weights, *args)
    g2 = loss_grad(M.titans_linear, chunk_size=16, coeff_method="cumulative", remat_group=2)(
        weights, *args
    )
    assert rel_err(g2, g0) < 1e-6


@pytest.mark.parametrize("method", METHODS)
def test_linear_gate_extremes(method):
    """η = 0, α = 0, α → 1 and tiny θ: exact values, finite values and gradients."""
    q, k, v, _, _, _, W0, S0 = make_inputs(T=64)
    args = [q, k, v, *extreme_gates(64), W0, S0]
    y, state = linear(*args, 16, coeff_method=method)
    y_ref, state_ref = linear_ref(*args, 16)
    assert rel_err(y, y_ref) < TOL and rel_err(state, state_ref) < TOL
    weights = random_weights((64, 6), [(8, 6)] * 2)
    g = loss_grad(M.titans_linear, chunk_size=16, coeff_method=method)(weights, *args)
    assert all(bool(jnp.isfinite(x).all()) for x in g)
    if method == "cumulative":  # products of gates only: exact gradients at η = 0, α = 1 too
        g_ref = loss_grad(ref.titans_linear_reference, chunk_size=16)(weights, *args)
        assert rel_err(g, g_ref) < TOL


@pytest.mark.parametrize("method", METHODS)
def test_linear_long_sequence_finite(method):
    """T = 8192 with extreme gates: no under/overflow in values or gradients."""
    T = 8192
    q, k, v, _, _, _, W0, S0 = make_inputs(T=T, dk=8, dv=8)
    th, et, al = extreme_gates(T)
    et = jnp.where(et > 0, 0.999, 0.0)  # long momentum memory, hard resets
    args = [q, k, v, th, et, al, W0, S0]

    def loss(*a):
        y, (W, S) = M.titans_linear(*a, 64, remat_group=8, coeff_method=method)
        return jnp.mean(y**2) + jnp.mean(W**2) + jnp.mean(S**2), y

    (val, y), g = jax.jit(jax.value_and_grad(loss, tuple(range(8)), has_aux=True))(*args)
    assert bool(jnp.isfinite(val))
    assert all(bool(jnp.isfinite(x).all()) for x in g)
    assert rel_err(y, linear_ref(*args, 64)[0]) < TOL


def test_indivisible_length_raises():
    args = make_inputs(T=50)
    for fn in (M.titans_linear, ref.titans_linear_reference):
        with pytest.raises(ValueError, match=r"T=50.*chunk_size=16"):
            fn(*args, 16)
    params, mom = mlp_state(dv=6)
    with pytest.raises(ValueError, match=r"T=50.*chunk_size=16"):
        mlp(*args[:6], params, mom, 16)
    with pytest.raises(ValueError, match="equal key and value dims"):
        M.titans_mlp(*args[:6], params, mom, 10, residual_norm=(jnp.ones(6), jnp.zeros(6)))


def test_bf16_inputs_keep_fp32_state():
    args = make_inputs(T=64)
    args16 = [a.astype(jnp.bfloat16) for a in args[:6]] + args[6:]
    y, (W, S) = linear(*args16, 16)
    assert y.dtype == jnp.bfloat16 and W.dtype == S.dtype == jnp.float32
    y32, (W32, _) = linear(*[a.astype(jnp.float32) for a in args16[:6]], *args[6:], 16)
    assert rel_err(y.astype(jnp.float32), y32) < 1e-2  # only the output rounding
    assert rel_err(W, W32) < 1e-6


def test_numpy_float64_chunk_formulas():
    """docs/memories.md's closed form in float64: it is the recurrence, and ours matches."""
    r = np.random.default_rng(0)
    C, dk, dv = 16, 8, 6
    Q, K, V = r.normal(size=(C, dk)), r.normal(size=(C, dk)), r.normal(size=(C, dv))
    th, et, al = r.uniform(0.05, 0.3, C), r.uniform(0.5, 0.99, C), r.uniform(0, 0.1, C)
    W0, S0 = r.normal(size=(dk, dv)), 0.1 * r.normal(size=(dk, dv))
    b, mu = np.cumsum(np.log1p(-al)), np.cumsum(np.log(et))
    D = np.tril(np.exp(b[:, None] - b[None, :]))
    P = np.tril(np.exp(mu[:, None] - mu[None, :]))
    G = D @ P @ np.diag(th)
    beta, f, n, mC = np.exp(b), D @ np.exp(mu), th * np.exp(mu[-1] - mu), np.exp(mu[-1])
    E = K @ W0 - V
    Y = beta[:, None] * (Q @ W0) + f[:, None] * (Q @ S0) - ((Q @ K.T) * G) @ E
    WC = beta[-1] * W0 + f[-1] * S0 - K.T @ (G[-1][:, None] * E)
    SC = mC * S0 - K.T @ (n[:, None] * E)
    W, S, Ys = W0.copy(), S0.copy(), []
    for t in range(C):  # token recurrence with chunk-start gradients, float64
        S = et[t] * S - th[t] * np.outer(K[t], K[t] @ W0 - V[t])
        W = (1 - al[t]) * W + S
        Ys.append(Q[t] @ W)
    assert np.abs(np.array(Ys) - Y).max() < 1e-12
    assert np.abs(W - WC).max() < 1e-12 and np.abs(S - SC).max() < 1e-12
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    for method in METHODS:
        co = M.chunk_coefficients(f32(th)[None], f32(et)[None], f32(al)[None], method)
        assert np.abs(np.asarray(co.G_NxCxC[0]) - G).max() < 1e-5 * np.abs(G).max()
        y, (Wj, Sj) = linear(*map(f32, (Q, K, V, th, et, al, W0, S0)), C, coeff_method=method)
        assert rel_err(y, f32(Y)) < TOL
        assert rel_err(Wj, f32(WC)) < TOL and rel_err(Sj, f32(SC)) < TOL


# -------------------------------------------------------------------------------- MLP
def mlp_inputs(T=64, dk=8, h=16, dv=8, theta=(0.02, 0.1), **kw):
    args = make_inputs(T=T, dk=dk, dv=dv, theta=theta, **kw)[:6]
    return args, mlp_state(dk, h, dv)


@pytest.mark.parametrize(
    "chunk,activation,wrapped",
    [(1, "gelu", False), (4, "gelu", False), (16, "silu", False), (64, "gelu", False),
     (1, "gelu", True), (16, "gelu", True)],
)
def test_mlp_chunked_equals_token_loop(chunk, activation, wrapped):
    # The LayerNorm-wrapped memory is chaotic for long T or large θ (LN's Jacobian
    # scales like 1/‖core output‖): fp32 rounding then grows in both implementations
    # alike, so it is compared on a short, gentle, well-conditioned sequence.
    args, (params, mom) = mlp_inputs(T=64, theta=(0.01, 0.05)) if wrapped else mlp_inputs(T=128)
    r = np.random.default_rng(3)
    rn = (jnp.asarray(1 + 0.1 * r.normal(size=8), jnp.float32),
          jnp.asarray(0.1 * r.normal(size=8), jnp.float32)) if wrapped else None
    kw = dict(activation=activation, residual_norm=rn)
    y, state = mlp(*args, params, mom, chunk, **kw)
    y_ref, state_ref = mlp_ref(*args, params, mom, chunk, **kw)
    assert rel_err(y, y_ref) < TOL
    assert rel_err(state, state_ref) < TOL


@pytest.mark.parametrize("depth,wrapped", [(3, False), (4, True)])
def test_deep_memory_chunked_equals_token_loop(depth, wrapped):
    """Titans memory depth L_M = 3, 4 (Titans §5.5): the layer-by-layer dual form with every
    layer's gradient at the chunk start == the autodiff token loop (values and end states)."""
    args, _ = mlp_inputs(T=32 if wrapped else 64, theta=(0.01, 0.05))  # LN: see above
    r = np.random.default_rng(depth)
    dims = [8] + [16] * (depth - 1) + [8]
    params = tuple(jnp.asarray(r.normal(size=(a, b)) / np.sqrt(a), jnp.float32)
                   for a, b in zip(dims[:-1], dims[1:]))
    mom = tuple(0.01 * jnp.ones_like(p) for p in params)
    rn = (jnp.full((8,), 0.5, jnp.float32), jnp.zeros((8,), jnp.float32)) if wrapped else None
    y, state = mlp(*args, params, mom, 16, residual_norm=rn)
    y_ref, state_ref = mlp_ref(*args, params, mom, 16, residual_norm=rn)
    assert len(state[0]) == depth
    assert rel_err(y, y_ref) < TOL and rel_err(state, state_ref) < TOL


@pytest.mark.parametrize("chunk,unroll", [(1, 1), (16, 1), (16, TRAINING_UNROLL)])  # see above
def test_mlp_outer_gradients_match_reference(chunk, unroll):
    args, (params, mom) = mlp_inputs(T=64)
    weights = random_weights((64, 8), [(8, 16), (16, 8)] * 2)
    g = loss_grad(M.titans_mlp, chunk_size=chunk, unroll_max=unroll)(weights, *args, params, mom)
    g_ref = loss_grad(ref.titans_mlp_reference, chunk_size=chunk)(weights, *args, params, mom)
    for name, a, b in zip("q k v theta eta alpha params0 mom0".split(), g, g_ref):
        assert rel_err(a, b) < TOL, name


def test_mlp_gate_extremes_finite():
    args, (params, mom) = mlp_inputs(T=64)
    args = args[:3] + extreme_gates(64)
    args[3] = args[3] * 0.2
    y, state = mlp(*args, params, mom, 16)
    y_ref, state_ref = mlp_ref(*args, params, mom, 16)
    assert rel_err(y, y_ref) < TOL and rel_err(state, state_ref) < TOL
    weights = random_weights((64, 8), [(8, 16), (16, 8)] * 2)
    g = loss_grad(M.titans_mlp, chunk_size=16)(weights, *args, params, mom)
    assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(g))


def test_mlp_residual_norm_keeps_correlated_chunks_bounded():
    """A chunk sums C gradients taken at its start; with correlated keys (SiLU then ℓ2, as
    the model makes them), θ = 0.3 and momentum 0.9 the plain MLP memory runs away within
    512 tokens, while x + LN(core) (LN scale 1/√K, matching unit-norm values) stays bounded.
    This is why model.titans.residual_norm defaults on."""
    K, F, T = 32, 128, 512
    ks = jax.random.split(jax.random.key(0), 5)
    unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    q, k, v = (unit(jax.nn.silu(jax.random.normal(kk, (T, K)))) for kk in ks[:3])
    params = (jax.random.normal(ks[3], (K, F)) * K**-0.5,
              jax.random.normal(ks[4], (F, K)) * 0.1 * F**-0.5)
    mom = jax.tree.map(jnp.zeros_like, params)
    gates = (jnp.full((T,), 0.3), jnp.full((T,), 0.9), jnp.full((T,), 1e-3))
    _, (plain, _) = mlp(q, k, v, *gates, params, mom, 16)
    rn = (jnp.full((K,), K**-0.5), jnp.zeros((K,)))
    y, (wrapped, _) = M.titans_mlp(q, k, v, *gates, params, mom, 16, residual_norm=rn)
    assert not all(bool(jnp.isfinite(w).all()) and float(jnp.abs(w).max()) < 1e6 for w in plain)
    assert bool(jnp.isfinite(y).all())
    assert all(float(jnp.abs(w).max()) < 100.0 for w in wrapped)


# ---------------------------------------------------------------------------- batching
def test_batched_equals_per_head_calls():
    B, H, T = 2, 3, 32
    per = [[make_inputs(T=T, seed=10 * b + h) for h in range(H)] for b in range(B)]
    def stack(i):
        return jnp.stack([jnp.stack([per[b][h][i] for h in range(H)]) for b in range(B)])

    acts = [stack(i) for i in range(6)]
    W0, S0 = stack(6)[0], stack(7)[0]  # per-head initial state, shared over the batch
    y, (W, S) = jax.jit(lambda *a: M.batched(M.titans_linear)(*a, chunk_size=8))(*acts, W0, S0)
    assert y.shape == (B, H, T, 6) and W.shape == (B, H, 8, 6)
    for b in range(B):
        for h in range(H):
            y1, (W1, _) = linear(*per[b][h][:6], W0[h], S0[h], 8)
            assert rel_err(y[b, h], y1) < 1e-6 and rel_err(W[b, h], W1) < 1e-6
    # Per-sequence states (e.g. carried across segments): [B, H, K, V].
    W0_b, S0_b = (jnp.stack([a, 0.5 * a]) for a in (W0, S0))
    run = jax.jit(lambda *a: M.batched(M.titans_linear, state_has_batch=True)(*a, chunk_size=8))
    y_b, _ = run(*acts, W0_b, S0_b)
    assert rel_err(y_b[0], y[0]) < 1e-6
    assert rel_err(y_b[1, 2], linear(*per[1][2][:6], 0.5 * W0[2], 0.5 * S0[2], 8)[0]) < 1e-6


def test_batched_mlp_with_per_head_norm():
    B, H, T = 2, 2, 16
    args, (params, mom) = mlp_inputs(T=T)
    acts = [jnp.broadcast_to(a, (B, H) + a.shape) for a in args]
    params_h = jax.tree.map(lambda a: jnp.stack([a, 0.5 * a]), params)
    mom_h = jax.tree.map(lambda a: jnp.stack([a, a]), mom)
    rn_h = (jnp.stack([jnp.ones(8), 2 * jnp.ones(8)]), jnp.zeros((2, 8)))
    run = jax.jit(
        lambda *a: M.batched(M.titans_mlp)(*a, per_head=dict(residual_norm=rn_h), chunk_size=4)
    )
    y, _ = run(*acts, params_h, mom_h)
    for h in range(H):
        ph = jax.tree.map(lambda a: a[h], params_h)
        y1, _ = mlp(*args, ph, mom, 4, residual_norm=(rn_h[0][h], rn_h[1][h]))
        assert rel_err(y[1, h], y1) < 1e-6
