"""Science tests for DGD and self-modifying Titans: chunked == JAX token loop (values, states,
outer gradients), causality via gradients, gate extremes, long sequences, errors. The
independent NumPy check against the paper's equations is tests/test_selfmod_paper.py."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nested_jax.ops import selfmod as sm
from nested_jax.ops import reference as ref
from nested_jax.ops.reference import dgd_linear, dgd_linear_reference

D, H, T = 8, 16, 64
ETA = 0.3  # eta_scale: large, so the gradient and DGD terms matter (stable for ‖x_t‖ ≈ 1)
TOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def _precise_fast_compile():
    """float32 'highest' matmuls; cheaper XLA compiles (the tests are compile-bound)."""
    old = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    with jax.default_matmul_precision("highest"):
        yield
    jax.config.update("jax_disable_most_optimizations", old)


def rel(a, b) -> float:
    """Relative error ‖a − b‖ / ‖b‖ over all leaves of a pytree together."""
    pairs = list(zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
    num = sum(float(jnp.sum((x - y) ** 2)) for x, y in pairs)
    return (num / max(sum(float(jnp.sum(y**2)) for _, y in pairs), 1e-30)) ** 0.5


def finite(tree) -> bool:
    return all(bool(jnp.isfinite(leaf).all()) for leaf in jax.tree.leaves(tree))


def make_params(key, adaptive_q=False):
    p = sm.init_selfmod_params(key, D, H, adaptive_q=adaptive_q, out_scale=0.5, alpha_init=0.98)
    k1, k2 = jax.random.split(jax.random.fold_in(key, 1))
    p["eta"]["P"] = jax.random.normal(k1, (D, 1))  # data-dependent gates
    p["alpha"]["P"] = jax.random.normal(k2, (D, 1))
    return p


def make_x(key, t):
    return jax.random.normal(key, (t, D)) / np.sqrt(D)  # ‖x_t‖ ≈ 1, like k_t


def make_inputs(seed=0, t=T):
    kp, kx, kq, kw = jax.random.split(jax.random.PRNGKey(seed), 4)
    return (make_params(kp), make_x(kx, t), jax.random.normal(kq, (t, D)),
            jax.random.normal(kw, (t, D)))


def _loss(y, mems, wy, ws):
    return jnp.sum(y * wy) + ws * sum(jnp.sum(jnp.sin(a)) for a in jax.tree.leaves(mems))


@functools.lru_cache(None)
def chunked_vg(C, Cm, mom, remat):
    def f(p, x, q, wy, ws):
        y, (mems, moms) = sm.selfmod_titans(p, x, q, chunk_size=C, chunk_size_mem=Cm,
                                            eta_scale=ETA, momentum=mom, remat_group=remat)
        return _loss(y, mems, wy, ws), (y, mems, moms)
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))


@functools.lru_cache(None)
def reference_vg():
    """One compile for every configuration: chunk sizes and momentum are traced."""
    def f(p, x, q, wy, ws, C, Cm, mom):
        y, (mems, moms) = ref.selfmod_titans_reference(p, x, q, chunk_size=C, chunk_size_mem=Cm,
                                                      eta_scale=ETA, momentum=mom)
        return _loss(y, mems, wy, ws), (y, mems, moms)
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))


def run_both(cfg, p, x, q, wy, ws=1.0):
    C, Cm, mom, remat = cfg
    a = chunked_vg(C, Cm, mom, remat)(p, x, q, wy, ws)
    b = reference_vg()(p, x, q, wy, ws, jnp.int32(C), jnp.int32(Cm), jnp.float32(mom))
    return a, b


GRAD_CFGS = [(1, 1, 0.0, 0), (4, 16, 0.5, 2)]  # (chunk, chunk_mem, momentum, remat_group)


@pytest.mark.parametrize("cfg", GRAD_CFGS)
def test_selfmod_chunked_matches_token_loop_values_and_outer_grads(cfg):
    p, x, q, wy = make_inputs()
    ((la, (ya, ma, sa)), ga), ((lb, (yb, mb, sb)), gb) = run_both(cfg, p, x, q, wy)
    assert rel(ya, yb) < TOL and rel(ma, mb) < TOL and rel(sa, sb) < TOL
    for a, b in zip(ga, gb):  # d/d params0, x, q through the whole scan (reads and writes)
        assert rel(a, b) < TOL, rel(a, b)


@functools.lru_cache(None)
def reference_value(adaptive, v_norm):
    def f(p, x, q, C, Cm):
        return ref.selfmod_titans_reference(p, x, None if adaptive else q, chunk_size=C,
                                           chunk_size_mem=Cm, eta_scale=ETA, v_norm=v_norm)
    return jax.jit(f)


@pytest.mark.parametrize("C,Cm,adaptive,v_norm,t", [(16, 64, False, False, T),
                                                    (64, 4, True, False, T),
                                                    (4, 6, False, True, 24)])
def test_selfmod_chunked_matches_token_loop_values(C, Cm, adaptive, v_norm, t):
    """Chunk 64 on either memory, adaptive M_q, v_norm, chunk sizes that aren't multiples."""
    kp, kx, kq = jax.random.split(jax.random.PRNGKey(1), 3)
    p = make_params(kp, adaptive_q=adaptive)
    x, q = make_x(kx, t), jax.random.normal(kq, (t, D))
    y, st = jax.jit(functools.partial(sm.selfmod_titans, chunk_size=C, chunk_size_mem=Cm,
                                      eta_scale=ETA, v_norm=v_norm))(p, x, None if adaptive else q)
    y_ref, st_ref = reference_value(adaptive, v_norm)(p, x, q, jnp.int32(C), jnp.int32(Cm))
    assert rel(y, y_ref) < TOL and rel(st, st_ref) < TOL


def test_selfmod_bf16_inputs_float32_state():
    p, x, q, _ = make_inputs(seed=5)
    f = jax.jit(functools.partial(sm.selfmod_titans, chunk_size=16, chunk_size_mem=64,
                                  eta_scale=ETA))
    x16, q16 = x.astype(jnp.bfloat16), q.astype(jnp.bfloat16)
    y16, st16 = f(p, x16, q16)
    y32, st32 = f(p, x16.astype(jnp.float32), q16.astype(jnp.float32))
    assert y16.dtype == jnp.bfloat16 and st16[0]["mem"]["A"].dtype == jnp.float32
    assert rel(st16, st32) == 0.0 and rel(y16, y32.astype(jnp.bfloat16)) == 0.0


@pytest.mark.parametrize("cfg", GRAD_CFGS)
def test_selfmod_causal_via_gradients(cfg):
    """y_t depends on x_s for s ≤ t (its own M_mem chunk included: dual-form reads) and on
    no s > t; on q only through q_t."""
    p, x, q, wy = make_inputs(seed=2)
    vg = chunked_vg(*cfg)
    for t in (0, 5, 17, 38, T - 1):
        w = jnp.zeros_like(wy).at[t].set(wy[t])
        _, (_, gx, gq) = vg(p, x, q, w, 0.0)
        assert float(jnp.abs(gx[t + 1:]).max(initial=0.0)) == 0.0, (t, cfg)
        assert float(jnp.abs(gx[t]).max()) > 0.0  # its own token's write is read
        assert float(jnp.abs(gq.at[t].set(0.0)).max()) == 0.0
        assert float(jnp.abs(gq[t]).max()) > 0.0


@pytest.mark.parametrize("gate,value", [("eta", -1e4), ("alpha", -30.0), ("alpha", -100.0),
                                        ("alpha", 30.0)])
def test_selfmod_gate_extremes_finite(gate, value):
    """η = 0 exactly (softplus(−1e4)), α → 0 (down to sigmoid(−100) ≈ 0), α = 1 in float32."""
    p, x, q, wy = make_inputs(seed=4)
    p["eta"]["b"] = jnp.asarray(np.log(np.expm1(0.3)), jnp.float32)  # η ≈ 0.3·ETA: stable at α = 1
    vg = chunked_vg(*GRAD_CFGS[1])
    (_, (y0, _, _)), _ = vg(p, x, q, wy, 1.0)
    p[gate]["b"] = jnp.asarray(value, jnp.float32)
    (_, (y, mems, moms)), g = vg(p, x, q, wy, 1.0)
    assert finite((y, mems, moms, g))
    ((_, (yr, mr, _)), gr) = reference_vg()(p, x, q, wy, 1.0, jnp.int32(4), jnp.int32(16),
                                             jnp.float32(0.5))
    assert rel(y, yr) < TOL and rel(mems, mr) < TOL and rel(g, gr) < TOL
    if gate == "eta":  # no gradient writes: momenta stay 0, matrices only decay by α
        assert all(float(jnp.abs(a).max()) == 0.0 for a in jax.tree.leaves(moms))
        assert rel(y, y0) > 1e-2  # so the writes do matter in the other tests


# ---------------------------------------------------------------- dgd_chunk (MLP memory)

def chunk_inputs(C, gate, seed=0):
    ks = jax.random.split(jax.random.PRNGKey(seed), 8)
    out = 1 if gate else D
    mem = {"A": jax.random.normal(ks[0], (D, H)) / np.sqrt(D),
           "B": 0.5 * jax.random.normal(ks[1], (H, out)) / np.sqrt(H)}
    if gate:
        mem["P"] = 0.3 * jax.random.normal(ks[2], (D, 1))
    mom = {"A": 0.1 * jax.random.normal(ks[3], (D, H)),
           "B": 0.1 * jax.random.normal(ks[4], (H, out))}
    k = sm.l2norm(jax.random.normal(ks[5], (C, D)))
    vhat = jax.random.normal(ks[6], (C, out))
    eta = jax.random.uniform(ks[7], (C,), maxval=0.5)
    alpha = jax.random.uniform(jax.random.fold_in(ks[7], 1), (C,), minval=0.3, maxval=1.0)
    return mem, k, vhat, eta, alpha, mom


@pytest.mark.parametrize("C,mom,gate,dgd", [(1, 0.0, False, True), (4, 0.9, True, True),
                                            (16, 0.0, True, False), (64, 0.9, False, True),
                                            (16, 0.9, False, False)])
def test_dgd_chunk_matches_token_loop(C, mom, gate, dgd):
    """Square memory (identity skip) and gate memory (slow P, scalar output), end states and
    the dual-form reads y_t = M_t(q_t) after each in-chunk write; DGD and plain GD."""
    mem, k, vhat, eta, alpha, mom0 = chunk_inputs(C, gate)
    q = jax.random.normal(jax.random.PRNGKey(9), k.shape)
    f = functools.partial(ref.dgd_chunk, momentum=mom, dgd=dgd, q_CxD=q)
    r = functools.partial(ref.dgd_reference, momentum=mom, dgd=dgd, q_CxD=q)
    out, want = jax.jit(f)(mem, k, vhat, eta, alpha, mom0), jax.jit(r)(mem, k, vhat, eta, alpha, mom0)
    assert rel(out, want) < TOL
    assert rel(out[2], want[2]) < TOL  # the reads on their own


def test_dgd_chunk_grads_and_gate_extremes():
    mem, k, vhat, eta, alpha, mom0 = chunk_inputs(16, gate=True)

    def loss(fn, *args):
        return sum(jnp.sum(jnp.sin(a)) for a in jax.tree.leaves(fn(*args, momentum=0.9)))

    g = jax.jit(jax.grad(functools.partial(loss, ref.dgd_chunk), argnums=tuple(range(6))))
    g_ref = jax.jit(jax.grad(functools.partial(loss, ref.dgd_reference), argnums=tuple(range(6))))
    zero, one = jnp.zeros_like(alpha), jnp.ones_like(alpha)
    for e, a in [(eta, alpha), (zero, alpha), (eta, zero), (eta, 1e-30 * one), (eta, one)]:
        out, want = g(mem, k, vhat, e, a, mom0), g_ref(mem, k, vhat, e, a, mom0)
        assert finite(out)
        if bool((a > 1e-20).all()):  # dα is computed through log α: tiny α loses dα precision
            assert rel(out, want) < TOL
        assert rel(out[:4] + out[5:], want[:4] + want[5:]) < TOL


# ---------------------------------------------------------------- dgd_linear (matrix memory)

def linear_inputs(t, seed=0, K=16, V=8):
    ks = jax.random.split(jax.random.PRNGKey(seed), 7)
    return (jax.random.normal(ks[0], (t, K)), sm.l2norm(jax.random.normal(ks[1], (t, K))),
            jax.random.normal(ks[2], (t, V)), jax.random.uniform(ks[3], (t,), maxval=0.3),
            jax.random.uniform(ks[4], (t,), minval=0.5, maxval=1.0),
            jax.random.normal(ks[5], (K, V)), 0.1 * jax.random.normal(ks[6], (K, V)))


def _linear_loss(fn, *args, C, mom):
    o, (W, S) = fn(*args, C, momentum=mom)
    return jnp.sum(jnp.sin(o)) + jnp.sum(jnp.sin(W)) + jnp.sum(jnp.sin(S)), (o, W, S)


@functools.lru_cache(None)
def linear_vg(C, mom):
    loss = functools.partial(_linear_loss, dgd_linear, C=C, mom=mom)
    return jax.jit(jax.value_and_grad(loss, argnums=tuple(range(7)), has_aux=True))


@functools.lru_cache(None)
def linear_ref_vg():
    """Token loop, chunk size and momentum traced: one compile per sequence length."""
    def loss(*args):
        return _linear_loss(dgd_linear_reference, *args[:7], C=args[7], mom=args[8])
    return jax.jit(jax.value_and_grad(loss, argnums=tuple(range(7)), has_aux=True))


def run_linear(args, C, mom):
    return linear_vg(C, mom)(*args), linear_ref_vg()(*args, jnp.int32(C), jnp.float32(mom))


@pytest.mark.parametrize("C,mom", [(1, 0.0), (1, 0.9), (4, 0.9), (16, 0.0), (64, 0.9)])
def test_dgd_linear_matches_token_loop_values_and_grads(C, mom):
    """Reads o_t, final (W, S), and d/d(q, k, v, η, α, W0, S0)."""
    ((_, out), g), ((_, out_ref), g_ref) = run_linear(linear_inputs(T), C, mom)
    assert rel(out, out_ref) < TOL
    for a, b in zip(g, g_ref):
        assert rel(a, b) < TOL, rel(a, b)


@pytest.mark.parametrize("mom", [0.0, 0.9])
def test_dgd_linear_long_sequence_gate_extremes(mom):
    """T = 4096, chunk 64: finite values and gradients at η = 0, α = 0, α = 1, random gates."""
    t = 4096
    q, k, v, eta, alpha, W0, S0 = linear_inputs(t, seed=2)
    eta = eta * (1.0 - mom)  # same effective step size with momentum
    zeros, ones = jnp.zeros((t,)), jnp.ones((t,))
    for e, a in [(eta, alpha), (zeros, alpha), (eta, zeros), (eta, ones), (eta, 1e-12 * ones)]:
        args = (q, k, v, e, a, W0, S0)
        (_, out), g = linear_vg(64, mom)(*args)
        assert finite((out, g))
        assert rel(out, linear_ref()(*args, jnp.int32(64), jnp.float32(mom))) < TOL


@functools.lru_cache(None)
def linear_ref():
    return jax.jit(lambda *a: dgd_linear_reference(*a[:7], a[7], momentum=a[8]))


# ---------------------------------------------------------------- init and errors

def test_init_starts_near_identity_with_gentle_gates():
    @jax.jit
    def f(key):
        p = sm.init_selfmod_params(key, 32, 64)
        x = jax.random.normal(jax.random.fold_in(key, 1), (128, 32))
        alpha = jax.nn.sigmoid(sm.mlp_apply(p["alpha"], x)[:, 0] + p["alpha"]["b"])
        eta = jax.nn.softplus(sm.mlp_apply(p["eta"], x)[:, 0] + p["eta"]["b"])  # × eta_scale
        return sm.mlp_apply(p["k"], x), x, alpha, eta

    mk, x, alpha, eta = f(jax.random.PRNGKey(0))
    assert rel(mk, x) < 0.15
    assert 0.98 < float(alpha.min()) and float(alpha.max()) < 0.995
    assert 0.8 < float(eta.min()) and float(eta.max()) < 1.2


def test_errors():
    p, x, q, _ = make_inputs()
    call = functools.partial(sm.selfmod_titans, p, x, q, eta_scale=ETA)
    with pytest.raises(ValueError, match="divisible by chunk_size="):
        call(chunk_size=5)
    with pytest.raises(ValueError, match="chunk_size_mem"):
        call(chunk_size=4, chunk_size_mem=48)
    with pytest.raises(ValueError, match="momentum"):
        call(chunk_size=4, momentum=1.0)
    with pytest.raises(ValueError, match="pass q iff"):
        sm.selfmod_titans(p, x, None, chunk_size=4, eta_scale=ETA)
    with pytest.raises(ValueError, match="remat_group"):
        call(chunk_size=4, remat_group=3)
    with pytest.raises(ValueError, match="divisible"):
        dgd_linear(*linear_inputs(10), chunk_size=4)
    with pytest.raises(ValueError, match="eta_scale"):
        sm.selfmod_titans(p, x, q, chunk_size=4, eta_scale=-1.0)


@pytest.mark.parametrize("C", [1, 2, 5, 8, 32])
def test_unit_lower_solve_and_inverse_match_linalg_values_and_grads(C):
    """The doubling inverse and its custom backward passes against jnp.linalg (LU solve,
    autodiff): values and gradients wrt l and rhs, batched by vmap as the chunk scans use it."""
    from nested_jax.ops.delta_rule import unit_lower_inverse, unit_lower_solve

    k = jax.random.split(jax.random.key(C), 4)
    l = jnp.tril(0.3 * jax.random.normal(k[0], (3, C, C)), -1)
    rhs = jax.random.normal(k[1], (3, C, 7))
    du, dT = jax.random.normal(k[2], (3, C, 7)), jax.random.normal(k[3], (3, C, C))
    eye = jnp.eye(C)
    ref_solve = lambda l, r: jnp.linalg.solve(eye + l, r)  # noqa: E731
    ref_inv = lambda l: jnp.linalg.inv(eye + l)  # noqa: E731
    with jax.default_matmul_precision("highest"):
        want_u, want_vjp = jax.vjp(jax.vmap(ref_solve), l, rhs)
        want_T, want_vjp_T = jax.vjp(jax.vmap(ref_inv), l)
    got_u, got_vjp = jax.vjp(jax.vmap(unit_lower_solve), l, rhs)
    got_T, got_vjp_T = jax.vjp(jax.vmap(unit_lower_inverse), l)
    np.testing.assert_allclose(got_u, want_u, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_T, want_T, rtol=1e-5, atol=1e-5)
    for got, want in zip(got_vjp(du), want_vjp(du)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got_vjp_T(dT)[0], want_vjp_T(dT)[0], rtol=1e-4, atol=1e-4)


def test_unit_lower_solve_grads_through_an_inner_vjp():
    """The online scan differentiates the forward of the teach signal's vjp: the outer
    gradient through a vjp of the solve (and of the inverse) must match jnp.linalg's."""
    from nested_jax.ops.delta_rule import unit_lower_inverse, unit_lower_solve

    C = 8
    k = jax.random.split(jax.random.key(0), 3)
    l = jnp.tril(0.3 * jax.random.normal(k[0], (C, C)), -1)
    rhs = jax.random.normal(k[1], (C, 5))
    eye = jnp.eye(C)

    def outer(solve, inv):
        def f(l, rhs):
            u, vjp = jax.vjp(lambda a, b: solve(a, b) + inv(a) @ b, l, rhs)
            g = jax.lax.stop_gradient(vjp(u))  # the teach signal: no outer gradient
            return jnp.sum(u**2) + jnp.sum(g[0])
        return jax.value_and_grad(f, argnums=(0, 1))(l, rhs)

    with jax.default_matmul_precision("highest"):
        want = outer(lambda a, b: jnp.linalg.solve(eye + a, b), lambda a: jnp.linalg.inv(eye + a))
    got = outer(unit_lower_solve, unit_lower_inverse)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
