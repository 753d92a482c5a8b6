"""Model variants: causality, CMS cadence, teach signal, schedule, memorisation,
Muon on a model with conv kernels."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nested_jax.model.variants import online_names

from nested_jax.model.lm import init_params
from nested_jax.model.online import (OnlineConfigError, check_online_config, live_levels, memorize,
                                     online_forward, teach_signals)
from nested_jax.ops.losses import token_cross_entropy
from nested_jax.ops.teach import teach_scale_at
from nested_jax.train import optim, step as step_lib
from tests.helpers import OffsetFn
from tests.tiny import load_preset, tiny_config

ONLINE_VARIANTS = online_names()

VARIANTS = ("transformer", "titans", "hope", "hope_attention", "hope_hybrid")
T = 32


def tiny(variant, **online):
    return tiny_config(
        variant, preset="default", vocab_size=64, d_model=16, n_layers=2, n_heads=2,
        titans=dict(chunk_size=4), selfmod=dict(chunk_size=4, chunk_size_mem=8),
        online={"segment_len": 8, **online},
        cms=dict(names=("fast", "mid", "slow"), periods=(8, 16, 64),
                 optimizers=("precond", "momentum", "precond"), lrs=(1e-2, 1e-2, 1e-2)))


@functools.cache
def _scan(variant):
    """tiny(variant), its parameters and one jitted online scan (teach scale traced: one
    compile serves every test and scale). Returns (config, fn, params, run) with
    run(params, tokens, teach_scale) -> (loss, aux) of `online_forward` at step 0."""
    c = tiny(variant)
    fn, params = init_params(c.model, 0)
    run = jax.jit(lambda p, toks, scale: online_forward(fn, p, toks, step=0, teach_scale=scale))
    return c, fn, params, run


def _scheduled_scale(c):
    """The teach scale `online_forward` uses at step 0 when none is given."""
    o = c.model.online
    return teach_scale_at(0, o.teach_scale, o.teach_warmup_steps, o.teach_decay_start,
                          o.teach_decay_duration)


def _tokens(seed=0, b=2):
    return jax.random.randint(jax.random.key(seed), (b, T + 1), 0, 64)


def _ce(fn, params, toks, x_off):
    """Per-token CE [B, T] through the path training uses for this variant, with `x_off`
    added to the embeddings (tests.helpers.OffsetFn)."""
    fn = OffsetFn(fn, x_off)
    if fn.cfg.variant in ONLINE_VARIANTS:
        return online_forward(fn, params, toks, step=0)[1]["ce"]
    model = fn.bind(params)
    return token_cross_entropy(model.logits(model.run_blocks(model.embed(toks[:, :-1]))[0]),
                               toks[:, 1:])


# The Titans-memory variants (titans, hope_hybrid: ~14 s each) run with the slow set; the
# default run keeps transformer, hope and hope_attention (suite time budget).
@pytest.mark.parametrize("variant", [pytest.param(v, marks=pytest.mark.slow)
                                     if v in ("titans", "hope_hybrid") else v for v in VARIANTS])
def test_causality_via_gradients(variant):
    c = tiny(variant)
    fn, params = init_params(c.model, 0)
    toks = _tokens()
    x_off = jnp.zeros((2, T, c.model.d_model))
    # One compiled gradient for every position t (t is a traced argument).
    grad_at = jax.jit(jax.grad(
        lambda o, t: jnp.take(_ce(fn, params, toks, o), t, axis=1).sum()))
    for t in (3, 12, T - 2):  # inside the first segment, a later one, the end
        g = np.abs(np.asarray(grad_at(x_off, t))).max(axis=(0, 2))
        assert g[t + 1:].max() == 0.0, f"{variant}: output {t} depends on later inputs"
        assert g[: t + 1].max() > 0.0


@pytest.mark.parametrize("variant", ONLINE_VARIANTS)
def test_causality_through_stop_gradient_writes(variant):
    """CMS writes carry no gradient, so check them by changing the future tokens."""
    c, _, params, run = _scan(variant)
    toks = _tokens()
    t = 13  # second segment; targets up to position 14 are inputs <= 14
    changed = toks.at[:, t + 2:].set((toks[:, t + 2:] + 7) % 64)
    ce0 = run(params, toks, _scheduled_scale(c))[1]["ce"]
    ce1 = run(params, changed, _scheduled_scale(c))[1]["ce"]
    np.testing.assert_allclose(np.asarray(ce0[:, : t + 1]), np.asarray(ce1[:, : t + 1]), atol=1e-5)
    assert np.abs(np.asarray(ce0[:, t + 2:] - ce1[:, t + 2:])).max() > 1e-3


@pytest.mark.parametrize("variant", ONLINE_VARIANTS)
def test_cms_cadence_counts_updates(variant):
    c, _, params, run = _scan(variant)
    _, aux = run(params, _tokens(), _scheduled_scale(c))
    for layer in range(c.model.n_layers):
        for name, period in zip(c.model.cms.names, c.model.cms.periods):
            got = float(aux["cms_updates"][name][layer])
            assert got == T // period, (name, period, got)


@pytest.mark.parametrize("variant", ("hope_attention", "hope"))
def test_teach_signal_equals_autodiff_gradient_wrt_block_outputs(variant):
    c = tiny(variant)
    fn, params = init_params(c.model, 0)
    toks = _tokens()
    last = c.model.cms.names[-1]
    model = fn.bind(params)
    s = c.model.online.segment_len
    carry0 = model.init_carry(2, T)  # the online scan's fresh state
    pos = jnp.arange(s)
    sg = teach_signals(model, carry0, toks[:, :s], toks[:, 1:s + 1], jnp.ones((2, s)),
                       pos.astype(jnp.int32), live_levels(c.model.cms), with_teach=True)
    teach = np.asarray(sg.teach[last])  # segment 0: [L, B, S, D]

    # Independent reference: a Python loop over layers on segment 0 with a fresh state,
    # differentiating the segment's summed CE wrt each block's output.
    graphdef, stacked = nnx.split(model.blocks)

    def seg_loss(outs_perturb):
        x = model.embed(toks[:, :s])
        for layer in range(c.model.n_layers):
            blk = nnx.merge(graphdef, jax.tree.map(lambda a: a[layer], stacked))
            x, _, _ = blk(x, pos, jax.tree.map(lambda a: a[layer], carry0))
            x = x + outs_perturb[layer]
        logits = model.logits(model.final_norm(x))
        return token_cross_entropy(logits, toks[:, 1:s + 1]).sum()

    ref = jax.grad(seg_loss)(jnp.zeros((c.model.n_layers, 2, s, c.model.d_model)))
    np.testing.assert_allclose(teach, np.asarray(ref), rtol=1e-4, atol=1e-6)


def test_teach_schedule_boundaries():
    f = lambda step: float(teach_scale_at(step, 0.1, 10, 100, 20))  # noqa: E731
    assert f(0) == pytest.approx(0.01)  # (0+1)/10 of warm-up
    assert f(9) == pytest.approx(0.1)  # warm-up complete
    assert f(98) == pytest.approx(0.1)  # step+1 = 99 <= decay_start
    assert f(99) == pytest.approx(0.1)  # step+1 = 100, decay not started
    assert f(109) == pytest.approx(0.05)  # halfway through the decay
    assert f(119) == pytest.approx(0.0) and f(500) == 0.0
    assert float(teach_scale_at(3, 0.2, 0, 0, 0)) == pytest.approx(0.2)


@pytest.mark.parametrize("variant", ("hope", "hope_hybrid"))
def test_teach_scale_zero_leaves_cms_fast_state_unchanged(variant):
    _, _, params, run = _scan(variant)
    _, aux = run(params, _tokens(), 0.0)
    for leaf in jax.tree.leaves(aux["fast"]["carry"]["cms"]):
        assert np.all(np.asarray(leaf) == 0.0)
    _, aux1 = run(params, _tokens(), 1.0)
    assert any(np.abs(np.asarray(x)).max() > 0 for x in jax.tree.leaves(aux1["fast"]["carry"]["cms"]))


def test_memorising_a_prompt_lowers_its_loss():
    c = tiny("hope_attention")
    fn, params = init_params(c.model, 0)
    prompt = _tokens(seed=3, b=1)
    base = float(online_forward(fn, params, prompt, step=0, update=False)[0])
    fast, counts = memorize(fn, params, prompt, steps=2, teach_scale=1.0)
    assert counts["fast"] == 2 * c.model.n_layers * (T // 8)  # 2 passes, period 8
    after = float(online_forward(fn, params, prompt, step=0, update=False, fast=fast)[0])
    assert after < base - 1e-3, (base, after)


def test_segment_length_must_divide_periods_and_sequence():
    c = tiny("hope_attention")
    c.model.cms.periods = (8, 12, 64)
    with pytest.raises(OnlineConfigError, match="period 12 tokens.*multiple of"):
        check_online_config(c.model, T)
    c = tiny("hope_attention", segment_len=5)
    with pytest.raises(OnlineConfigError, match="divide the sequence length 32"):
        check_online_config(c.model, T)


def test_muon_with_conv_kernels_builds_and_steps():
    c = tiny("titans")  # has causal conv kernels, which Muon must leave to AdamW
    c.optim.name, c.optim.warmup_steps = "muon", 1
    fn, params = init_params(c.model, 0)
    tx = optim.build_optimizer(c.optim, 10)
    state = step_lib.init_train_state(params, tx)
    step = jax.jit(functools.partial(step_lib.train_step, fn=fn, tx=tx,
                                     lr_schedule=optim.schedule(c.optim, 10)))
    before = jax.tree.map(np.asarray, state["params"])
    for _ in range(2):
        state, m = step(state, {"tokens": _tokens()})
        assert np.isfinite(float(m["loss"]))
    conv = before["blocks"]["titans"]["conv_q"]["kernel"]
    assert np.abs(np.asarray(state["params"]["blocks"]["titans"]["conv_q"]["kernel"]) - conv).max() > 0
    assert np.abs(np.asarray(state["params"]["blocks"]["attn"]["wq"]["kernel"])
                  - before["blocks"]["attn"]["wq"]["kernel"]).max() > 0


def test_memory_branches_stay_finite_on_long_sequences_with_default_gates():
    """Default θ/η/α and value normalisation keep the inner loops stable (regression:
    un-normalised values with θ_max = 1 made the MLP memory diverge within ~60 tokens)."""
    from nested_jax.model.selfmod import SelfModTitans
    from nested_jax.model.titans import TitansMemory

    c = tiny("titans")
    c.model.d_model, c.model.n_heads = 32, 2
    x = 3.0 * jax.random.normal(jax.random.key(0), (1, 1024, 32))
    for cls in (TitansMemory, SelfModTitans):
        branch = cls(c.model, out_std=0.02, rngs=nnx.Rngs(0))
        y, _ = jax.jit(lambda x, b=branch: b(x))(x)
        assert np.all(np.isfinite(np.asarray(y))), cls.__name__


@pytest.mark.parametrize("memory", ("linear", "mlp"))
def test_model_unroll_chunks_unrolls_the_titans_memory(memory):
    """model.unroll_chunks reaches the Titans memory's chunk scan: at training's value (the
    presets' 16; the tests' configs loop, tests/tiny.py) the compiled memory has no chunk loop
    left and reads the same as the loop. The unrolled backward equals the token loop in
    tests/test_memory_ops.py; the self-modifying memory compiles unrolled, forward and
    backward, in tests/test_variant_losses.py (hope)."""
    from nested_jax.model.titans import TitansMemory

    training = load_preset().model.unroll_chunks
    x = np.random.default_rng(0).normal(size=(2, 16, 16)).astype(np.float32)  # 4 chunks of 4
    out, loops = {}, {}
    for unroll in (1, training):
        c = tiny("titans")
        c.model.unroll_chunks, c.model.titans.memory = unroll, memory
        graph, params = nnx.split(TitansMemory(c.model, out_std=0.02, rngs=nnx.Rngs(0)))
        f = jax.jit(lambda p, x, g=graph: nnx.merge(g, p)(x)[0]).lower(params, x).compile()
        loops[unroll] = f.as_text().count(" while(")
        out[unroll] = f(params, x)
    assert loops[training] < loops[1], loops
    np.testing.assert_allclose(out[training], out[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", ("hope_attention",
                                     pytest.param("hope_hybrid", marks=pytest.mark.slow)))
def test_inner_gradients_without_clipping_match_the_per_level_path(variant):
    """teach_clip = 0 takes Jᵀδ from the segment's vjp wrt the fast deltas; a huge clip takes
    the per-level vjp of the clipped δ̃. Both must write the same fast state."""
    fast = {}
    for clip in (0.0, 1e9):
        c = tiny(variant, teach_clip=clip)
        c.model.cms.optimizers = ("momentum",) * 3  # linear in the gradient: a sharp check
        fn, params = init_params(c.model, 0)
        fast[clip] = online_forward(fn, params, _tokens(), step=0, teach_scale=0.5)[1]["fast"]
    a, b = fast[0.0]["carry"]["cms"], fast[1e9]["carry"]["cms"]
    assert max(np.abs(np.asarray(x)).max() for x in jax.tree.leaves(a)) > 0
    chex.assert_trees_all_close(a, b, rtol=2e-4, atol=1e-7)


# "block" (~11 s) with the slow set: suite time budget ("segment" is the default mode)
@pytest.mark.parametrize("mode", ("segment", pytest.param("block", marks=pytest.mark.slow)))
def test_remat_changes_nothing_but_memory(mode):
    """model.remat on an online variant checkpoints whole segments or each block
    (online.remat): the loss, the outer gradient of every leaf and the per-token CE equal
    the run without it."""
    toks = _tokens()
    out = {}
    for remat in (False, True):
        c = tiny("hope_attention", remat=mode)
        c.model.remat = remat
        fn, params = init_params(c.model, 0)

        def loss(p, fn=fn):
            loss_, aux = online_forward(fn, p, toks, step=0)
            return loss_, aux

        (l, aux), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
        out[remat] = (l, g, aux["ce"])
    chex.assert_trees_all_close(out[False], out[True], rtol=1e-5, atol=1e-6)
    assert np.abs(np.asarray(jax.tree.leaves(out[True][1])[0])).max() > 0


def test_segment_unroll_changes_nothing_but_the_program():
    """model.online.unroll_segments: two online segments as a loop or unrolled give the
    same loss, outer gradient of every leaf and per-token CE (the pilot unrolls its 16:
    configs/pilot.py)."""
    toks = _tokens()[:, :17]
    out, loops = {}, {}
    for limit in (1, 2):
        c = tiny("hope_attention", unroll_segments=limit)
        fn, params = init_params(c.model, 0)

        def loss(p, fn=fn):
            loss_, aux = online_forward(fn, p, toks, step=0)
            return loss_, aux["ce"]

        f = jax.jit(jax.value_and_grad(loss, has_aux=True))
        loops[limit] = {e.params["unroll"] for e in jax.make_jaxpr(loss)(params).jaxpr.eqns
                        if e.primitive.name == "scan" and e.params["length"] == 2}
        (l, ce), g = f(params)
        out[limit] = (l, g, ce)
    chex.assert_trees_all_close(out[1], out[2], rtol=1e-5, atol=1e-6)
    assert loops == {1: {1}, 2: {2}}  # the segment scan: looped, then every segment unrolled
    assert np.abs(np.asarray(jax.tree.leaves(out[2][1])[0])).max() > 0


@pytest.mark.parametrize("variant,unrolled", [("hope_attention", True), ("hope", False),
                                              ("hope_hybrid", False)])
def test_pilot_unrolls_its_segments_except_around_xla_chunk_scans(variant, unrolled):
    """configs/pilot.py unrolls its 16 segments; on this CPU hope's and hope_hybrid's chunk
    scans are XLA's, whose compile unrolled segments would multiply: those stay a loop.
    Built for a (compile-only) H100, where their scans are kernels, every variant unrolls."""
    from benchmarks import gpu_aot
    from nested_jax.configs import pilot
    from nested_jax.model.online import segment_unroll

    c = pilot.get_config()
    c.model.variant = variant
    n_seg = c.train.seq_len // c.model.online.segment_len
    assert n_seg == 16 and c.model.online.unroll_segments == 16
    assert segment_unroll(c.model, n_seg) == (n_seg if unrolled else 1)
    if gpu_aot.plugin_name() is not None:  # the gpu-aot extra
        with jax.default_device(gpu_aot.gpu_devices("h100")[0]):
            assert segment_unroll(c.model, n_seg) == n_seg
