"""HOPE's self-modifying Titans against the paper, decided by an independent NumPy float64
transcription (tests/np_selfmod.py, NL Eqs. 83–93): values, end states, outer gradients by
finite differences (so M_v's meta-learning is checked on a path that shares no code), the
dual-form reads of M_mem inside its own chunk, and each ablation switch."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import np_selfmod
from nested_jax.ops import selfmod as sm

D, H, T, ETA = 8, 8, 32, 0.3


@pytest.fixture(autouse=True, scope="module")
def _precise_fast_compile():
    """float32 'highest' matmuls; cheaper XLA compiles (these tests are compile-bound)."""
    old = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    with jax.default_matmul_precision("highest"):
        yield
    jax.config.update("jax_disable_most_optimizations", old)


def inputs(seed=0, adaptive_q=False):
    kp, kx, kq, kw, k1, k2 = jax.random.split(jax.random.PRNGKey(seed), 6)
    p = sm.init_selfmod_params(kp, D, H, adaptive_q=adaptive_q, out_scale=0.5, alpha_init=0.98)
    p["eta"]["P"] = jax.random.normal(k1, (D, 1))  # data-dependent gates
    p["alpha"]["P"] = jax.random.normal(k2, (D, 1))
    x = jax.random.normal(kx, (T, D)) / np.sqrt(D)
    q = None if adaptive_q else jax.random.normal(kq, (T, D))
    return p, x, q, jax.random.normal(kw, (T, D))


def loss_np(p, x, q, w, kw):
    y, run, _ = np_selfmod.selfmod(p, x, q, **kw)
    ends = sum(np.sum(np.sin(a)) for n in sorted(run) for a in run[n].values())
    return float(np.sum(y * np.asarray(w, np.float64)) + ends)


@functools.lru_cache(None)
def jax_value_and_grad(kw_items):
    kw = dict(kw_items)

    def loss(p, x, q, w):
        y, (mems, _) = sm.selfmod_titans(
            p, x, q, chunk_size=kw["chunk"], chunk_size_mem=kw["chunk_mem"],
            eta_scale=kw["eta_scale"], momentum=kw.get("momentum", 0.0),
            mem_read=kw.get("mem_read", "dual"), dgd=kw.get("dgd", True),
            retention=kw.get("retention", True), frozen=kw.get("frozen", ()))
        ends = sum(jnp.sum(jnp.sin(a)) for a in jax.tree.leaves(mems))
        return jnp.sum(y * w) + ends, (y, mems)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))


CASES = {
    "paper": dict(chunk=4, chunk_mem=8),
    "per_token": dict(chunk=1, chunk_mem=1),
    "mem_chunk_smaller": dict(chunk=8, chunk_mem=4, momentum=0.5),
    "boundary_read": dict(chunk=4, chunk_mem=8, mem_read="boundary"),
    "gd_not_dgd": dict(chunk=4, chunk_mem=8, dgd=False, momentum=0.5, eta_scale=0.1),
    "no_retention": dict(chunk=4, chunk_mem=16, retention=False),
    "frozen_k_v": dict(chunk=4, chunk_mem=8, frozen=("k", "v")),
}


def _kw(name):
    return {"eta_scale": ETA, **CASES[name]}


def _directions(p, seed):
    """A random direction over all of params0 and one over M_v's two matrices alone."""
    leaves, treedef = jax.tree.flatten(p)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    full = jax.tree.unflatten(treedef, [jax.random.normal(k, a.shape) for k, a in zip(keys, leaves)])
    only_v = jax.tree.map(jnp.zeros_like, p)
    only_v["v"] = {"A": full["v"]["A"], "B": full["v"]["B"]}
    return {"all": full, "M_v": only_v}


def _fd(p, x, q, w, kw, dp, dx, eps=1e-6):
    def at(s):
        pp = jax.tree.map(lambda a, d: np.asarray(a, np.float64) + s * np.asarray(d, np.float64), p, dp)
        return loss_np(pp, np.asarray(x, np.float64) + s * dx, q, w, kw)
    return (at(eps) - at(-eps)) / (2 * eps)


@pytest.mark.parametrize("name", sorted(CASES))
def test_selfmod_matches_numpy_transcription(name):
    """Outputs, end states and outer gradients (directional, finite differences of the
    float64 transcription) of `selfmod_titans` equal the paper's equations."""
    kw = _kw(name)
    p, x, q, w = inputs(seed=len(name))
    (val, (y, mems)), (gp, gx) = jax_value_and_grad(tuple(sorted(kw.items())))(p, x, q, w)
    y_ref, run, _ = np_selfmod.selfmod(p, x, q, **kw)
    np.testing.assert_allclose(np.asarray(y), y_ref, rtol=0, atol=2e-5 * np.abs(y_ref).max())
    for n in run:
        for leaf in ("A", "B"):
            np.testing.assert_allclose(np.asarray(mems[n][leaf]), run[n][leaf], rtol=0,
                                       atol=2e-5 * max(1.0, np.abs(run[n][leaf]).max()))
    assert abs(float(val) - loss_np(p, x, q, w, kw)) < 1e-4 * max(1.0, abs(float(val)))
    x_dir = np.asarray(jax.random.normal(jax.random.PRNGKey(7), x.shape))
    zero_p = jax.tree.map(jnp.zeros_like, p)
    for what, dp in _directions(p, seed=3).items():
        ad = sum(float(jnp.vdot(g, d)) for g, d in zip(jax.tree.leaves(gp), jax.tree.leaves(dp)))
        fd = _fd(p, x, q, w, kw, dp, np.zeros_like(x_dir))
        assert abs(ad - fd) <= 1e-3 * max(abs(fd), 1e-2), (what, ad, fd)
        if what == "M_v" and "v" not in kw.get("frozen", ()):
            assert abs(fd) > 1e-3, "M_v must be meta-learned: its outer gradient is not zero"
    ad_x = float(jnp.vdot(gx, x_dir))
    fd_x = _fd(p, x, q, w, kw, zero_p, x_dir)
    assert abs(ad_x - fd_x) <= 1e-3 * max(abs(fd_x), 1e-2), (ad_x, fd_x)


def test_adaptive_q_matches_numpy_transcription():
    kw = _kw("paper")
    p, x, q, _ = inputs(seed=11, adaptive_q=True)
    y, _ = jax.jit(functools.partial(sm.selfmod_titans, chunk_size=4, chunk_size_mem=8,
                                     eta_scale=ETA))(p, x, None)
    y_ref, _, _ = np_selfmod.selfmod(p, x, None, **kw)
    np.testing.assert_allclose(np.asarray(y), y_ref, rtol=0, atol=2e-5 * np.abs(y_ref).max())


@functools.lru_cache(None)
def _grad_y_at(mem_read):
    def f(x, p, q, t):
        y, _ = sm.selfmod_titans(p, x, q, chunk_size=4, chunk_size_mem=8, eta_scale=ETA,
                                 mem_read=mem_read)
        return jnp.sum(jnp.take(y, t, axis=0))
    return jax.jit(jax.grad(f))


@pytest.mark.parametrize("mem_read", ["dual", "boundary"])
def test_output_reads_its_own_chunk_and_nothing_after(mem_read):
    """y_t depends on x_s, s ≤ t, inside its own M_mem chunk (dual form, NL §8.2) and on no
    s > t; the boundary ablation is blind to its own chunk."""
    p, x, q, _ = inputs(seed=2)
    for t in (3, 12, 21, T - 1):  # chunk_mem 8: positions inside and at the end of a chunk
        g = np.abs(np.asarray(_grad_y_at(mem_read)(x, p, q, t))).max(axis=1)
        start = (t // 8) * 8
        assert g[t + 1:].max(initial=0.0) == 0.0, f"y_{t} depends on later inputs"
        if mem_read == "dual":
            assert g[start:t + 1].min() > 0.0, f"y_{t} must see every input of its chunk up to t"
        else:
            assert g[start:].max() == 0.0
        if start:
            assert g[:start].max() > 0.0
