"""HOPE and Titans at the model level against the papers: every parameter is meta-learned,
one CMS update is a gradient step on its period's next-token loss (NL §7.1, Eq. 71) taken
by autodiff on a separate path, the teach scale sets the step size, every fast level of
every shipped preset is read, and the ablation switches reach the model."""

import functools
import importlib
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nested_jax.model.variants import online_names

from nested_jax.model.lm import init_params
from nested_jax.model.loss import lm_loss
from nested_jax.model.online import OnlineConfigError, check_online_config, online_forward
from nested_jax.ops.losses import token_cross_entropy
from tests.tiny import tiny_config

ONLINE_VARIANTS = online_names()

REPO = pathlib.Path(__file__).resolve().parents[1]
V = 64


def tiny(variant, *, layers=1, t_seg=8):
    return tiny_config(
        variant, preset="default", vocab_size=V, d_model=16, n_layers=layers, n_heads=2,
        titans=dict(chunk_size=4), selfmod=dict(chunk_size=4, chunk_size_mem=8),
        online=dict(segment_len=t_seg),
        cms=dict(names=("fast", "mid", "slow"), periods=(8, 16, 24), optimizers=("gd",) * 3,
                 lrs=(0.1,) * 3))


def _tokens(b, t, seed=0):
    return jax.random.randint(jax.random.key(seed), (b, t + 1), 0, V)


# titans and hope_hybrid (~11 s each) run with the slow set (suite time budget).
@pytest.mark.parametrize("variant", [pytest.param(v, marks=pytest.mark.slow)
                                     if v in ("titans", "hope_hybrid") else v
                                     for v in ("titans", "hope", "hope_attention", "hope_hybrid")])
def test_every_parameter_gets_an_outer_gradient(variant):
    """The LM loss reaches every leaf (the memories' initial states M_□,0 — M_v included —
    gates, convs, CMS meta weights): none has an all-zero outer gradient."""
    c = tiny(variant)
    fn, params = init_params(c.model, 0)
    g = jax.jit(jax.grad(lambda p: lm_loss(fn, p, _tokens(2, 32), step=0)))(params)
    flat = jax.tree_util.tree_flatten_with_path(g)[0]
    dead = [jax.tree_util.keystr(path) for path, leaf in flat
            if not bool(jnp.any(leaf != 0))]
    assert not dead, f"{variant}: leaves without an outer gradient: {dead}"


def _params_with_cms(params, level_weights):
    """A copy of params whose CMS meta weights are replaced (layer axis 0 of 1 layer)."""
    out = jax.tree.map(lambda a: a, params)
    for n, w in level_weights.items():
        for k, v in w.items():
            out["blocks"]["cms"]["levels"][n][k] = v[None]
    return out


def test_cms_update_is_a_gradient_step_on_the_period_loss():
    """Each level's accumulated update equals −lr·s·∇θ of its period's summed next-token loss
    (NL Eq. 71), by autodiff of the plain full-sequence forward (not the online vjp): a
    1-layer HOPE-Attention (the CMS chain is the block's last op, so a level's weights reach
    token t's loss only through token t), 3 levels, periods 8/16/16 over 16 tokens: the fast
    level updates at 8 and 16, the others once at 16, after the fast level's first update."""
    c = tiny("hope_attention")
    c.model.cms.periods = (8, 16, 16)
    lr, s = 0.5, 0.3
    c.model.cms.lrs = (lr,) * 3
    c.model.online.teach_scale, c.model.online.teach_clip = s, 0.0
    fn, params = init_params(c.model, 3)
    toks = _tokens(1, 16, seed=4)
    _, aux = jax.jit(lambda p: online_forward(fn, p, toks, step=10**6))(params)  # scale = s
    got = jax.tree.map(lambda a: a[0, 0], aux["fast"]["carry"]["cms"])  # layer 0, row 0
    meta = jax.tree.map(lambda a: a[0], params["blocks"]["cms"]["levels"])

    def period_loss(levels, lo, hi):
        logits = fn.bind(_params_with_cms(params, levels))(toks[:, :-1])
        return token_cross_entropy(logits, toks[:, 1:])[0, lo:hi].sum()

    grad = jax.jit(jax.grad(period_loss), static_argnums=(1, 2))
    g0 = grad(meta, 0, 8)  # tokens 0..7 at the meta weights
    step = lambda g: jax.tree.map(lambda a: -lr * s * a, g)  # noqa: E731
    d_fast1 = step(g0["fast"])
    after = {**meta, "fast": jax.tree.map(jnp.add, meta["fast"], d_fast1)}
    g1 = grad(after, 8, 16)  # tokens 8..15 read the fast level's update
    want = {"fast": jax.tree.map(jnp.add, d_fast1, step(g1["fast"])),
            "mid": step(jax.tree.map(jnp.add, g0["mid"], g1["mid"])),
            "slow": step(jax.tree.map(jnp.add, g0["slow"], g1["slow"]))}
    for n in want:
        for k in ("scale", "w1", "w2"):
            w, a = np.asarray(want[n][k]), np.asarray(got[n][k])
            assert np.abs(w).max() > 0, (n, k)
            np.testing.assert_allclose(a, w, rtol=2e-4, atol=2e-4 * np.abs(w).max(),
                                       err_msg=f"level {n}.{k}")


def test_teach_scale_sets_the_cms_step_size():
    """With the default inner optimizer (plain GD) the fast-state update is linear in the
    teach signal: a level's first update starts from a zero fast state, Δ = -η·Σ (s·δ)·(∂y/∂W),
    so teach scale 1.0 vs 0.1 gives exactly 10× (an Adam-like step would give ~1×). Here the
    per-token clip is off (it would cap the larger signal) and the sequence is one segment, so
    the fast state holds exactly that first update (measured over two segments the second
    update, which reads the first, makes it 7.4×; with the default clip 5.7×)."""
    c = tiny_config(  # the default CMS settings (optimizer, lr), a tiny shape
        "hope_attention", preset="default", vocab_size=V, d_model=16, n_layers=1, n_heads=2,
        online=dict(segment_len=8, teach_clip=0.0), cms=dict(periods=(8, 16, 24, 0)))
    assert tuple(c.model.cms.optimizers) == ("gd",) * 4
    fn, params = init_params(c.model, 0)
    toks = _tokens(2, 8)

    @functools.partial(jax.jit, static_argnums=1)
    def delta_norm(p, scale):
        fast = online_forward(fn, p, toks, step=0, teach_scale=scale)[1]["fast"]
        return jnp.sqrt(sum(jnp.sum(a * a) for a in jax.tree.leaves(fast["carry"]["cms"])))

    ratio = float(delta_norm(params, 1.0) / delta_norm(params, 0.1))
    assert ratio == pytest.approx(10.0, rel=1e-5), ratio


def _cms_presets():
    """Presets of CMS variants, and the generic ones (default, smoke) that any variant uses."""
    out = {}
    for path in sorted((REPO / "configs").glob("*.py")):
        if path.stem in ("__init__", "repro"):
            continue
        cfg = importlib.import_module(f"configs.{path.stem}").get_config()
        if cfg.model.variant in ONLINE_VARIANTS or path.stem in ("default", "smoke"):
            out[path.stem] = cfg
    return out


def test_every_shipped_preset_reads_every_fast_level():
    """No preset has a fast level whose updates are never read (docs/memories.md, CMS): with
    per-sequence reset every period > 0 is < the sequence length."""
    presets = _cms_presets()
    assert {"default", "smoke", "pilot", "pilot_smoke", "mid_stage2"} <= set(presets)
    for name, cfg in presets.items():
        m = cfg.model
        check_online_config(m, cfg.train.seq_len, training=True)
        for level, p in zip(m.cms.names, m.cms.periods):
            if p and m.online.reset == "per_sequence":
                reads = cfg.train.seq_len - p  # tokens that read the level's first update
                assert reads > 0, f"{name}: level {level} (period {p}) is never read"


def test_unread_level_is_a_clear_error():
    c = tiny("hope_attention")
    c.model.cms.periods = (8, 16, 32)
    with pytest.raises(OnlineConfigError, match=r"never read.*period < 32.*reset=never.*period 0"):
        check_online_config(c.model, 32, training=True)
    check_online_config(c.model, 32)  # evaluation may run any length
    c.model.online.reset = "never"
    check_online_config(c.model, 32, training=True)  # streams across sequences
    c.model.online.reset = "per_sequence"
    c.model.cms.periods = (8, 16, 0)  # outer-loop-only level
    check_online_config(c.model, 32, training=True)


def test_each_fast_level_is_read_later_in_the_sequence():
    """Setting one level's inner lr to 0 changes the loss of the tokens after its first
    update and of no token before; a period-0 level takes no update at all."""
    c = tiny("hope_attention")
    fn, params = init_params(c.model, 1)
    toks = _tokens(2, 32, seed=5)

    def run(fn_, what="ce"):
        return jax.jit(lambda p: online_forward(fn_, p, toks, step=10**6)[1][what])(params)

    base = np.asarray(run(fn))
    for i, (name, period) in enumerate(zip(c.model.cms.names, c.model.cms.periods)):
        c0 = tiny("hope_attention")
        lrs = list(c0.model.cms.lrs)
        lrs[i] = 0.0
        c0.model.cms.lrs = tuple(lrs)
        fn0, _ = init_params(c0.model, 1)
        off = np.asarray(run(fn0))
        np.testing.assert_array_equal(off[:, :period], base[:, :period])
        assert np.abs(off[:, period:] - base[:, period:]).max() > 1e-6, name
    c0 = tiny("hope_attention")
    c0.model.cms.periods = (8, 16, 0)
    fn0, _ = init_params(c0.model, 1)
    fast = run(fn0, "fast")
    assert float(jnp.abs(fast["carry"]["cms"]["slow"]["w1"]).max()) == 0.0
    assert float(jnp.abs(fast["carry"]["cms"]["mid"]["w1"]).max()) > 0.0


def _block(cfg):
    fn, params = init_params(cfg.model, 0)
    return fn.bind(params).blocks


@pytest.mark.parametrize("field,value,check", [
    ("mem_read", "boundary", lambda b: b.selfmod.switches["mem_read"] == "boundary"),
    ("dgd", False, lambda b: b.selfmod.switches["dgd"] is False),
    ("retention", False, lambda b: b.selfmod.switches["retention"] is False),
    ("inner_k", False, lambda b: b.selfmod.switches["frozen"] == ("k",)),
    ("inner_v", False, lambda b: b.selfmod.switches["frozen"] == ("v",)),
    ("adaptive_q", True, lambda b: "q" in b.selfmod.mems and not hasattr(b.selfmod, "wq")),
    ("momentum", 0.9, lambda b: b.selfmod.momentum == 0.9),
])
def test_selfmod_switches_reach_the_memory(field, value, check):
    """Each NL Table 6 switch in config.model.selfmod is what the module hands to
    `selfmod_titans` (whose math per switch tests/test_selfmod_paper.py checks)."""
    c = tiny("hope")
    c.model.selfmod[field] = value
    assert check(_block(c))
    assert not check(_block(tiny("hope")))


@pytest.mark.parametrize("field,value", [("depth", 3), ("depth", 4), ("v_norm", False),
                                         ("residual_norm", False)])
def test_titans_switches_change_the_model(field, value):
    """Titans memory depth L_M (Titans §5.5) and the paper's q, k-only normalisation
    (v_norm, residual_norm off): the module is built as asked and computes something else."""
    c0 = tiny("titans")
    c1 = tiny("titans")
    c1.model.titans[field] = value
    outs = []
    for c in (c0, c1):
        fn, params = init_params(c.model, 0)
        outs.append(np.asarray(jax.jit(lambda p: fn.bind(p)(_tokens(1, 16)[:, :-1]))(params)))
        mem = fn.bind(params).blocks.titans
        if field == "depth":
            assert len(mem.layers()) == c.model.titans.depth
        if field == "residual_norm":
            assert hasattr(mem, "ln_scale") == c.model.titans.residual_norm
    assert np.abs(outs[0] - outs[1]).max() > 1e-5


def test_titans_mac_is_causal_and_carries_context_through_the_memory():
    """MAC (Titans §4.1): no output depends on a later token; attention is segment-local, so
    a later segment sees an earlier one only through the memory (retrieval + writes)."""
    c = tiny("titans")
    c.model.titans.mode, c.model.titans.mac_segment = "mac", 8
    c.model.titans.persistent_tokens = 2
    fn, params = init_params(c.model, 0)
    model = fn.bind(params)
    x = model.embed(_tokens(2, 16)[:, :-1])
    grad_at = jax.jit(jax.grad(lambda x, t: model.logits(model.run_blocks(x)[0])[:, t].sum()))
    for t in (3, 12, 15):
        g = np.abs(np.asarray(grad_at(x, t))).max(axis=(0, 2))
        assert g[t + 1:].max(initial=0.0) == 0.0, f"output {t} depends on later inputs"
        assert g[: t + 1].min() > 0.0  # every earlier token reaches it (via the memory too)
    # Without memory writes (θ ≈ 0), forgetting (α ≈ 0) and the causal conv's carry (width 1)
    # a later segment is blind to earlier ones.
    c.model.titans.theta_init, c.model.titans.alpha_init, c.model.titans.conv_width = 1e-12, 1e-12, 1
    fn0, p0 = init_params(c.model, 0)
    m0 = fn0.bind(p0)
    g = np.abs(np.asarray(jax.grad(
        lambda x: m0.logits(m0.run_blocks(x)[0])[:, 12].sum())(m0.embed(_tokens(2, 16)[:, :-1]))
    )).max(axis=(0, 2))
    assert g[:8].max() < 1e-6 * g[8:13].max()
