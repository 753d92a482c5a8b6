"""The CMS level update as pure math (nested_jax.ops.cms): teach-signal scaling and clipping,
inner gradient Jᵀδ̃, period cadence, surprise gate and inner optimizer step, each checked
against a direct computation on a tiny level (L = 1 layer, B = 2 rows)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nested_jax.ops import cms

L, B, S, D, F = 1, 2, 4, 6, 8


def _meta(key):
    k1, k2 = jax.random.split(key)
    return {"scale": 1.0 + 0.1 * jax.random.normal(k1, (L, D)),
            "w1": 0.3 * jax.random.normal(k1, (L, D, F)),
            "w2": 0.3 * jax.random.normal(k2, (L, F, D))}


def _level(tx, key=jax.random.key(5)):
    delta = jax.tree.map(lambda m: 0.01 * jax.random.normal(key, (L, B) + m.shape[1:]),
                         _meta(jax.random.key(0)))
    return {"delta": delta, "opt": jax.vmap(jax.vmap(tx.init))(delta),
            "acc": jax.tree.map(jnp.zeros_like, delta), "surprise": jnp.zeros((L, B))}


def _grads(seed=1):
    """A per-row gradient with the delta's tree."""
    return jax.tree.map(lambda m: jax.random.normal(jax.random.key(seed), (L, B) + m.shape[1:]),
                        _meta(jax.random.key(0)))


def _teach(scale_per_row=(1.0, 1.0), seed=2):
    d = jax.random.normal(jax.random.key(seed), (L, B, S, D))
    return d * jnp.asarray(scale_per_row)[None, :, None, None]


def test_inner_grads_equal_autodiff_of_the_level_with_the_clipped_teach_signal():
    """g = Σ_t J_tᵀ δ̃_t per row, δ̃ = s·δ clipped per token to norm c: the gradient of
    Σ_t <level(x)_t, δ̃_t> wrt the row's weights, by jax.grad of `level_apply`."""
    meta = _meta(jax.random.key(0))
    delta = _level(cms.inner_optimizer("gd", 0.1, 0.9, 0.99))["delta"]
    x = jax.random.normal(jax.random.key(3), (L, B, S, D))
    teach = _teach((1.0, 30.0))  # row 1's tokens exceed the clip, row 0's mostly not
    s, c = 0.5, 2.0
    g, d_tilde = cms.inner_grads(meta, delta, x, teach, None, scale=s, clip=c)
    norms = np.linalg.norm(np.asarray(d_tilde), axis=-1)
    assert norms.max() <= c + 1e-5 and norms[0, 1].min() == pytest.approx(c, rel=1e-5)
    raw = np.asarray(teach) * s
    small = np.linalg.norm(raw, axis=-1) <= c
    np.testing.assert_allclose(np.asarray(d_tilde)[small], raw[small], rtol=1e-6)
    for row in range(B):
        w = jax.tree.map(lambda m, d: m[0] + d[0, row], meta, delta)
        want = jax.grad(
            lambda p: jnp.sum(cms.level_apply(p, x[0, row][None]) * d_tilde[0, row][None]))(w)
        chex.assert_trees_all_close(jax.tree.map(lambda a: a[0, row], g), want,
                                    rtol=1e-5, atol=1e-6)


def test_inner_grads_without_clipping_scale_the_segment_gradient():
    """Without clipping Jᵀ(s·δ) = s·Jᵀδ: the vjp's gradient is scaled, no second pass."""
    meta = _meta(jax.random.key(0))
    delta = _level(cms.inner_optimizer("gd", 0.1, 0.9, 0.99))["delta"]
    raw, teach = _grads(), _teach()
    g, d_tilde = cms.inner_grads(meta, delta, None, None, raw, scale=0.25, clip=0.0)
    chex.assert_trees_all_close(g, jax.tree.map(lambda a: 0.25 * a, raw))
    assert d_tilde is None
    _, d_tilde = cms.inner_grads(meta, delta, None, teach, raw, scale=0.25, clip=0.0)
    chex.assert_trees_all_close(d_tilde, 0.25 * teach)


def test_period_cadence_accumulates_then_takes_one_gd_step():
    """Period 2S: the first segment only accumulates; the second takes delta ← delta −
    lr·(g1 + g2) and clears the accumulator. Both rows update (the gate is off)."""
    lr, tx = 0.1, cms.inner_optimizer("gd", 0.1, 0.9, 0.99)
    level = _level(tx)
    g1, g2 = _grads(1), _grads(2)
    kw = dict(tx=tx, period=2 * S, surprise_threshold=0.0)
    mid, applied = cms.update_level(level, g1, None, tokens_after=jnp.int32(S), **kw)
    chex.assert_trees_all_equal(mid["delta"], level["delta"])
    chex.assert_trees_all_close(mid["acc"], g1)
    assert np.all(np.asarray(applied) == 0.0)
    end, applied = cms.update_level(mid, g2, None, tokens_after=jnp.int32(2 * S), **kw)
    want = jax.tree.map(lambda d, a, b: d - lr * (a + b), level["delta"], g1, g2)
    chex.assert_trees_all_close(end["delta"], want, rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_equal(end["acc"], jax.tree.map(jnp.zeros_like, g1))
    assert np.all(np.asarray(applied) == 1.0) and applied.shape == (L, B)


def test_surprise_gate_is_per_row_and_resets_at_the_period():
    """surprise = Σ_t ‖δ̃_t‖; at the period's end a row whose mean surprise is below the
    threshold keeps its delta and optimizer state; every row's accumulators reset."""
    tx = cms.inner_optimizer("momentum", 0.1, 0.9, 0.99)
    level = _level(tx)
    d_tilde = _teach((0.01, 10.0))  # row 0 barely surprised, row 1 very
    surprise = np.linalg.norm(np.asarray(d_tilde), axis=-1).sum(-1)  # [L, B]
    threshold = float(surprise.mean()) / S  # between the two rows' means
    new, applied = cms.update_level(level, _grads(), d_tilde, tx=tx, period=S,
                                    tokens_after=jnp.int32(S), surprise_threshold=threshold)
    np.testing.assert_array_equal(np.asarray(applied), [[0.0, 1.0]])
    for old, got in zip(jax.tree.leaves(level["delta"]), jax.tree.leaves(new["delta"])):
        np.testing.assert_array_equal(np.asarray(got)[:, 0], np.asarray(old)[:, 0])
        assert np.abs(np.asarray(got)[:, 1] - np.asarray(old)[:, 1]).max() > 0
    np.testing.assert_array_equal(np.asarray(new["surprise"]), 0.0)
    # Mid-period the surprise accrues (no reset, no step).
    mid, _ = cms.update_level(level, _grads(), d_tilde, tx=tx, period=2 * S,
                              tokens_after=jnp.int32(S), surprise_threshold=threshold)
    np.testing.assert_allclose(np.asarray(mid["surprise"]), surprise, rtol=1e-6)


@pytest.mark.parametrize("kind", ["gd", "momentum", "precond", "precond_repro"])
def test_inner_optimizers_first_step(kind):
    """gd and momentum step −lr·g (momentum starts at 0); the Adam-like ones are
    scale-invariant: about −lr·sign(g) (precond) and −3.16·lr·sign(g) (precond_repro)."""
    lr, beta, beta2 = 0.1, 0.9, 0.999
    tx = cms.inner_optimizer(kind, lr, beta, beta2)
    level = _level(tx)
    g = _grads()
    new, _ = cms.update_level(level, g, None, tx=tx, period=S, tokens_after=jnp.int32(S),
                              surprise_threshold=0.0)
    step = jax.tree.map(jnp.subtract, new["delta"], level["delta"])
    if kind in ("gd", "momentum"):
        want = jax.tree.map(lambda a: -lr * a, g)
    else:
        k = 1.0 if kind == "precond" else (1 - beta) / np.sqrt(1 - beta2)  # 3.16
        want = jax.tree.map(lambda a: -lr * k * jnp.sign(a), g)
    chex.assert_trees_all_close(step, want, rtol=1e-3, atol=1e-6)


def test_unknown_inner_optimizer_is_a_value_error():
    with pytest.raises(ValueError, match="'adamw' is unknown"):
        cms.inner_optimizer("adamw", 0.1, 0.9, 0.99)


@pytest.mark.parametrize("threshold", [0.0, "between"])
def test_every_segment_shortcut_equals_the_general_path(threshold):
    """period = segment length: the static path (no accumulation, no runtime branch) gives
    the general path's delta, optimizer state, zero accumulators and applied rows."""
    tx = cms.inner_optimizer("momentum", 0.1, 0.9, 0.99)
    level = _level(tx)
    d_tilde = _teach((0.01, 10.0))
    if threshold == "between":
        threshold = float(np.linalg.norm(np.asarray(d_tilde), axis=-1).sum(-1).mean()) / S
    kw = dict(tx=tx, period=S, tokens_after=jnp.int32(3 * S), surprise_threshold=threshold)
    for _ in range(2):  # two periods in a row: the carried state stays equal too
        general, a_general = cms.update_level(level, _grads(), d_tilde, **kw)
        static, a_static = cms.update_level(level, _grads(), d_tilde, every_segment=True, **kw)
        chex.assert_trees_all_close(static, general, rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(np.asarray(a_static), np.asarray(a_general))
        level = static
    assert np.asarray(a_static).max() == 1.0


def _swiglu(meta, delta):
    """The level with an up projection w3 (the SwiGLU form): meta and delta gain one."""
    k = jax.random.key(7)
    return ({**meta, "w3": 0.3 * jax.random.normal(k, meta["w1"].shape)},
            {**delta, "w3": 3.0 * jax.random.normal(k, delta["w1"].shape)})


@pytest.mark.parametrize("mlp", ["gelu", "swiglu"])
def test_level_read_with_per_row_weights_matches_the_plain_read_values_and_grads(mlp):
    """`level_apply_rows(meta, delta, x)` (the model's read, custom backward in
    `rows_matmul`) = `level_apply(meta + delta, x)` by plain autodiff: values and gradients
    wrt x, meta and delta, and the outer gradient through an inner vjp wrt delta (how the
    online scan uses it: teach signal inside, outer loss outside)."""
    meta = jax.tree.map(lambda a: a[0], _meta(jax.random.key(0)))
    delta = jax.tree.map(lambda a: 30.0 * a[0],
                         _level(cms.inner_optimizer("gd", 0.1, 0.9, 0.99))["delta"])
    if mlp == "swiglu":
        meta, delta = _swiglu(meta, delta)
    x = jax.random.normal(jax.random.key(3), (B, S, D))
    ct = jax.random.normal(jax.random.key(4), (B, S, D))
    plain = lambda m, d, x: cms.level_apply(  # noqa: E731
        jax.tree.map(lambda a, b: a[None] + b, m, d), x)

    def outer(read):
        def f(m, d, x):
            y, vjp = jax.vjp(lambda dd: read(m, dd, x), d)
            g = jax.lax.stop_gradient(vjp(ct)[0])  # the inner gradient, as a teach vjp
            return jnp.sum(y * ct) + sum(jnp.sum(a) for a in jax.tree.leaves(g))
        return (jax.value_and_grad(f, argnums=(0, 1, 2))(meta, delta, x),
                jax.vjp(read, meta, delta, x))

    (got, got_vjp), (want, want_vjp) = outer(cms.level_apply_rows), outer(plain)
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(got_vjp[0], want_vjp[0], rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(got_vjp[1](ct), want_vjp[1](ct), rtol=1e-5, atol=1e-5)


def test_swiglu_level_equals_a_numpy_transcription():
    """level_apply with an up projection W3 = x + (silu(n(x)·W1) ⊙ n(x)·W3)·W2 with
    n(x) = scale · x / sqrt(mean x² + eps), written out in NumPy (float64): the form of a
    transformer's MLP that level stacking copies into the CMS (docs/pretrained.md)."""
    meta = jax.tree.map(lambda a: a[0], _meta(jax.random.key(0)))
    meta, _ = _swiglu(meta, meta)
    x = jax.random.normal(jax.random.key(3), (B, S, D))
    p = {k: np.asarray(v, np.float64) for k, v in meta.items()}
    xn = np.asarray(x, np.float64)
    n = p["scale"] * xn / np.sqrt(np.mean(xn * xn, -1, keepdims=True) + 1e-6)
    g = n @ p["w1"]
    want = xn + ((g / (1 + np.exp(-g))) * (n @ p["w3"])) @ p["w2"]
    np.testing.assert_allclose(np.asarray(cms.level_apply(meta, x)), want, rtol=1e-5, atol=1e-5)
