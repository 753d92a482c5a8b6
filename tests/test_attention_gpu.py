"""Attention through `jax.nn.dot_product_attention` (ops.attention.dot_attention, issue 20
item 3): equal, in values and gradients, to the float32 einsum reference `causal_attention`
for full causal, sliding-window, key/value-buffer (a segment in the middle of a sequence),
persistent-token and padded layouts; grouped-query attention (GQA, arXiv 2305.13245) equal
to multi-head attention with each key/value head repeated; the Attention module run in
segments with its buffer equal to the full-sequence run; a GQA transformer equal to the
multi-head one whose key/value projections repeat its heads, and it trains."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nested_jax.model.layers import Attention, normal
from nested_jax.ops import attention as attn_ops
from tests.helpers import tiny_model_config

TOL = 1e-5


def _randn(*shape, seed=0):
    """Random inputs from numpy (jax.random would compile a threefry per shape)."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _qkv(t, s, h=4, g=4, k=8, b=2):
    return _randn(b, t, h, k, seed=0), _randn(b, s, g, k, seed=1), _randn(b, s, g, k, seed=2)


def _values_and_grads(fs, q, k, v):
    """For each f in fs: f(q, k, v) and the gradient of <f, a fixed random cotangent> wrt
    q, k, v (call it under jit: eager dispatch costs more than the tiny shapes)."""
    ct = _randn(*q.shape, seed=9)
    outs = []
    for f in fs:
        out, vjp = jax.vjp(f, q, k, v)
        outs.append((out, vjp(ct)))
    return outs


def _assert_close(a, b, tol=TOL):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.shape == y.shape
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=tol, rtol=tol)


def _repeat(x_BxSxGxK, h):
    return jnp.repeat(x_BxSxGxK, h // x_BxSxGxK.shape[2], axis=2)


# layout: (T queries, first query position, buffer slots or None, window, prefix, padded)
LAYOUTS = {
    "full_causal": (8, 0, None, 0, 0, False),
    "sliding_window": (8, 0, None, 3, 0, False),
    "buffer_mid_sequence": (4, 6, 16, 0, 0, False),
    "buffer_mid_window": (4, 6, 16, 3, 0, False),
    "persistent": (8, 0, None, 0, 2, False),
    "persistent_buffer_window": (4, 6, 16, 3, 2, False),
    "padded": (8, 0, None, 0, 0, True),
}


@pytest.mark.parametrize("g", [4, 2], ids=["mha", "gqa"])
@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_dot_attention_equals_reference(name, g):
    """Values and q/k/v gradients equal the reference (GQA: with K/V heads repeated)."""
    t, p0, slots, window, n_prefix, padded = LAYOUTS[name]

    q, k, v = _qkv(t, n_prefix + (slots or t), g=g)

    @jax.jit  # the whole case in one program: one compile
    def run(q, k, v):
        q_pos = p0 + jnp.arange(t)
        k_pos = jnp.arange(slots) if slots else None
        valid = (jnp.arange(t) % 3 != 0) if padded else None  # query 0 sees no key at all
        mask = attn_ops.attention_mask(q_pos, k_pos if slots else q_pos, window, valid)
        mask = jnp.concatenate([jnp.ones((t, n_prefix), bool), mask], axis=1)
        new = functools.partial(
            attn_ops.dot_attention, q_pos_T=q_pos, k_pos_S=k_pos, window=window,
            n_prefix=n_prefix, k_valid_S=valid, kv_len=p0 + t if slots else None,
            implementation="xla")
        ref = lambda q, k, v: attn_ops.causal_attention(  # noqa: E731
            q, _repeat(k, 4), _repeat(v, 4), mask)
        return _values_and_grads((new, ref), q, k, v)

    (out, grads), (out_ref, grads_ref) = run(q, k, v)
    assert np.isfinite(np.asarray(out)).all() and all(
        np.isfinite(np.asarray(x)).all() for x in grads)
    _assert_close((out, grads), (out_ref, grads_ref))
    if padded:  # a query with no visible key gets zeros (jax alone would average the values)
        assert float(jnp.abs(out[:, 0]).max()) == 0.0


def test_auto_is_xla_on_cpu_and_bf16_matches():
    """On a CPU "auto" is XLA; bf16 inputs keep a float32 softmax (within bf16 rounding)."""
    assert attn_ops.resolve_implementation("auto", jnp.bfloat16, 64, 256, 256, False) == "xla"
    assert not attn_ops.cudnn_applies(jnp.float32, 64, 256, 256, False)  # cuDNN: no float32
    assert attn_ops.cudnn_applies(jnp.bfloat16, 64, 256, 256, True)
    assert not attn_ops.cudnn_applies(jnp.bfloat16, 64, 1, 256, True)  # bias needs even T
    q, k, v = _qkv(8, 8, g=2)
    out = attn_ops.dot_attention(*(x.astype(jnp.bfloat16) for x in (q, k, v)))
    mask = attn_ops.attention_mask(jnp.arange(8), jnp.arange(8))
    ref = attn_ops.causal_attention(q, _repeat(k, 4), _repeat(v, 4), mask)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref), atol=3e-2)


def _old_attention(m: Attention, x_BxTxD, pos_T, kv=None):
    """The Attention module as it computed before dot_attention: float32 reference softmax
    over [persistent, keys] with a [T, S] mask, K/V heads repeated to the query heads."""
    b, t, _ = x_BxTxD.shape
    h, g, hd = m.n_heads, m.n_kv_heads, m.head_dim
    q = attn_ops.rope(m.wq(x_BxTxD).reshape(b, t, h, hd), pos_T, m.rope_base)
    k = attn_ops.rope(m.wk(x_BxTxD).reshape(b, t, g, hd), pos_T, m.rope_base)
    v = m.wv(x_BxTxD).reshape(b, t, g, hd)
    if kv is None:
        keys, values, k_pos = k, v, pos_T
    else:
        keys = jax.lax.dynamic_update_slice(kv["k"], k, (0, pos_T[0], 0, 0))
        values = jax.lax.dynamic_update_slice(kv["v"], v, (0, pos_T[0], 0, 0))
        k_pos = jnp.arange(keys.shape[1])
    mask = attn_ops.attention_mask(pos_T, k_pos, m.window)
    if m.n_persistent:
        keys = jnp.concatenate([jnp.broadcast_to(m.persistent_k[...][None],
                                                 (b,) + m.persistent_k.shape), keys], 1)
        values = jnp.concatenate([jnp.broadcast_to(m.persistent_v[...][None],
                                                   (b,) + m.persistent_v.shape), values], 1)
        mask = jnp.concatenate([jnp.ones((t, m.n_persistent), bool), mask], axis=1)
    out = attn_ops.causal_attention(q, _repeat(keys, h), _repeat(values, h), mask)
    return m.wo(out.reshape(b, t, h * hd))


MODULES = [  # (n_kv_heads, window, persistent, buffer offset or None)
    (0, 0, 0, None), (2, 3, 0, None), (1, 0, 2, None), (2, 0, 0, 5), (2, 3, 2, 5)]


@pytest.mark.parametrize("n_kv,window,persistent,offset", MODULES)
def test_module_equals_old_path_values_and_param_grads(n_kv, window, persistent, offset):
    d, t = 16, 6
    m = Attention(d, 4, 8, out_std=0.1, window=window, n_persistent=persistent,
                  n_kv_heads=n_kv, rngs=nnx.Rngs(0))
    x = _randn(2, t, d, seed=1)
    p0 = offset or 0
    pos = p0 + jnp.arange(t, dtype=jnp.int32)
    kv = None
    if offset is not None:  # earlier slots already filled, later ones empty
        kv = m.init_kv(2, 16)
        kv = jax.tree.map(lambda z: _randn(*z.shape, seed=2).at[:, p0:].set(0.0), kv)
    graphdef, params = nnx.split(m)
    ct = _randn(2, t, d, seed=3)

    @jax.jit
    def values_and_param_grads(params):
        outs = []
        for f in (lambda mod, *a: mod(*a)[0], _old_attention):
            out, vjp = jax.vjp(lambda p: f(nnx.merge(graphdef, p), x, pos, kv), params)
            outs.append((out, vjp(ct)))
        return outs

    _assert_close(*values_and_param_grads(params))


def test_default_kv_heads_keep_the_initial_parameters():
    """n_kv_heads = 0 (= n_heads) draws exactly the parameters the module drew before GQA."""
    d, h, hd = 16, 4, 4
    m = Attention(d, h, hd, out_std=0.1, n_persistent=2, rngs=nnx.Rngs(0))
    rngs = nnx.Rngs(0)  # the draw order before GQA: wq, wk, wv, wo, persistent k, v
    want = [normal(rngs.params(), (d, h * hd), d**-0.5) for _ in range(3)]
    want += [normal(rngs.params(), (h * hd, d), 0.1)]
    want += [normal(rngs.params(), (2, h, hd), 1.0) for _ in range(2)]
    got = [m.wq.kernel[...], m.wk.kernel[...], m.wv.kernel[...], m.wo.kernel[...],
           m.persistent_k[...], m.persistent_v[...]]
    for a, b in zip(got, want):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert m.init_kv(1, 5)["k"].shape == (1, 5, h, hd)


@pytest.mark.parametrize("window,persistent,seg", [(0, 0, 4), (3, 2, 4), (3, 0, 1)])
def test_gqa_segments_with_buffer_equal_full_sequence(window, persistent, seg):
    """n_kv_heads=2 < n_heads=4: segments of `seg` tokens through the key/value buffer (as
    the online scan and the decoder run) give the full-sequence output."""
    d, t = 16, 12
    m = Attention(d, 4, 8, out_std=0.1, window=window, n_persistent=persistent, n_kv_heads=2,
                  rngs=nnx.Rngs(0))
    x = _randn(2, t, d, seed=1)
    full, _ = m(x, jnp.arange(t, dtype=jnp.int32))
    kv = m.init_kv(2, t)
    assert kv["k"].shape == (2, t, 2, 8)

    @jax.jit
    def step(kv, x_seg, pos):
        y, kv = m(x_seg, pos, kv)
        return y, kv

    ys = []
    for i in range(0, t, seg):
        y, kv = step(kv, x[:, i:i + seg], i + jnp.arange(seg, dtype=jnp.int32))
        ys.append(y)
    _assert_close(jnp.concatenate(ys, axis=1), full)


def test_gqa_transformer_equals_repeated_heads_and_trains():
    """A transformer with 2 key/value heads of 4 computes what the 4-head model computes when
    its key/value projections repeat the 2 heads; one train step keeps the loss finite."""
    from nested_jax.model.lm import abstract_model, init_params
    from nested_jax.model.loss import lm_loss

    cfg = tiny_model_config(n_kv_heads=2)
    fn, params = init_params(cfg, seed=0)
    attn = params["blocks"]["attn"]
    assert attn["wk"]["kernel"].shape == (cfg.n_layers, cfg.d_model, 2 * 8)
    fn4 = abstract_model(tiny_model_config(n_kv_heads=0))

    def repeat_heads(w_LxDxGK):  # [L, D, G·K] → [L, D, H·K], head h = kv head h // 2
        l, d, gk = w_LxDxGK.shape
        return _repeat(w_LxDxGK.reshape(l, d, 2, gk // 2), 4).reshape(l, d, 2 * gk)

    params4 = jax.tree.map(lambda x: x, params)
    params4["blocks"]["attn"] = {**attn, "wk": {"kernel": repeat_heads(attn["wk"]["kernel"])},
                                 "wv": {"kernel": repeat_heads(attn["wv"]["kernel"])}}
    tokens = jax.random.randint(jax.random.key(0), (2, 9), 0, cfg.vocab_size)
    logits = jax.jit(lambda p4, p: (fn4.bind(p4)(tokens), fn.bind(p)(tokens)))
    _assert_close(*logits(params4, params))

    @jax.jit
    def sgd_step(p):
        loss, grads = jax.value_and_grad(lambda p: lm_loss(fn, p, tokens))(p)
        new = jax.tree.map(lambda p, g: p - 0.1 * g, p, grads)
        return loss, lm_loss(fn, new, tokens)

    loss, loss2 = sgd_step(params)
    assert np.isfinite(float(loss)) and np.isfinite(float(loss2)) and float(loss2) < float(loss)


def test_config_checks_name_the_fix():
    from nested_jax.configs.default import get_config
    from nested_jax.train.validate import ConfigError, finalize_config

    c = get_config()
    c.model.n_kv_heads = 3  # does not divide n_heads = 8
    with pytest.raises(ConfigError, match="n_kv_heads=3 does not divide.*Fix:"):
        finalize_config(c, 32000)
    c = get_config()
    c.model.update(variant="hope_attention", attention_impl="cudnn")
    with pytest.raises(ConfigError, match="attention_impl='cudnn'.*Fix:"):
        finalize_config(c, 32000)
    c = get_config()
    c.model.attention_impl = "flash"
    with pytest.raises(ConfigError, match="attention_impl"):
        finalize_config(c, 32000)
    c = get_config()
    c.model.n_kv_heads = 2
    finalize_config(c, 32000)
