"""HOPE's self-modifying Titans with its two chunk scans as Pallas kernels
(nested_jax/ops/selfmod_fused.py on nested_jax/ops/kernel_scan.py, `model.selfmod.kernel =
"pallas"`; issue 20 item 2).

On the CPU the kernels run in Pallas's interpreter, so these tests check the kernels' own
math (the forward kernels, and the backward kernels that differentiate each chunk step from
its saved start state) against XLA's chunk scans in ops/selfmod.py, which share none of the
kernels' code: values of every output and state, and gradients of every input.
The per-token training losses of a whole hope model on the kernel path equal the ones
recorded from commit cc62fd2 (slow: the interpreter is slow). The H100 compile of the
kernels (gpu-aot extra) checks that Triton accepts them: one kernel each way."""

import functools
import glob

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nested_jax.ops import kernel_scan, selfmod as sm, selfmod_fused as sf
from nested_jax.train.validate import ConfigError, check_values
from tests.tiny import tiny_config


def _inputs(B=1, nh=2, T=32, D=8, hidden=8, seed=0):
    keys = jax.random.split(jax.random.PRNGKey(seed), nh + 3)
    per_head = [sm.init_selfmod_params(k, D, hidden) for k in keys[:nh]]
    p0 = jax.tree.map(lambda *a: jnp.stack(a), *per_head)
    # per-sequence states that differ from the heads' initial ones (as after a segment)
    leaves, tree = jax.tree.flatten(p0)
    noise = jax.random.split(keys[nh], len(leaves))
    mems = jax.tree.unflatten(tree, [
        jnp.broadcast_to(a[None], (B,) + a.shape) + 0.05 * jax.random.normal(k, (B,) + a.shape)
        for a, k in zip(leaves, noise)])
    moms = {n: {"A": jnp.zeros_like(m["A"]), "B": jnp.zeros_like(m["B"])}
            for n, m in mems.items()}
    x = 0.5 * jax.random.normal(keys[nh + 1], (B, nh, T, D))
    q = jax.random.normal(keys[nh + 2], (B, nh, T, D))
    return mems, moms, x, q


def _xla(kw, mems, moms, x, q):
    one = lambda m, s, xx, qq: sm.selfmod_titans(m, xx, qq, mom0=s, **kw)  # noqa: E731
    return jax.vmap(jax.vmap(one))(mems, moms, x, q)


def _fused(kw, mems, moms, x, q):
    return sf.selfmod_heads(mems, moms, x, q, **kw)


SWITCHES = {"paper": dict(v_norm=False, retention=True, mem_read="dual"),
            "v_norm, no retention, boundary reads": dict(v_norm=True, retention=False,
                                                         mem_read="boundary")}


# the paper's switches in the default run, the others (another 10 s) with the slow set
@pytest.mark.parametrize("switches", [pytest.param(s, marks=() if s == "paper" else pytest.mark.slow)
                                      for s in SWITCHES])
def test_kernel_equals_the_xla_chunk_scan_values_and_gradients(switches):
    """Four chunks of 8 for the projection memories and two of 16 for M_mem per call (the
    state crosses chunk boundaries inside both kernels): outputs y, every memory's end state and momentum, and
    the gradients of a loss that reads all of them wrt every state leaf, x and q."""
    kw = dict(chunk_size=8, chunk_size_mem=16, eta_scale=0.3, **SWITCHES[switches])
    mems, moms, x, q = _inputs()
    w = jax.random.normal(jax.random.PRNGKey(9), x.shape)

    def loss(f, mems, x, q):  # reads every output: y, each memory and momentum
        y, (m, s) = f(kw, mems, moms, x, q)
        return (jnp.sum(y * w) + sum(jnp.sum(jnp.sin(a)) for a in jax.tree.leaves(m))
                + sum(jnp.sum(a * a) for a in jax.tree.leaves(s))), (y, m, s)

    def run(f):  # one compile per path: outputs and gradients together
        grad = jax.value_and_grad(functools.partial(loss, f), argnums=(0, 1, 2), has_aux=True)
        (_, out), g = jax.jit(grad)(mems, x, q)
        return out, g

    (yx, mx, sx), gx = run(_xla)
    (yf, mf, sf_), gf = run(_fused)
    np.testing.assert_allclose(yf, yx, rtol=1e-5, atol=1e-6)
    for name in mx:
        for key in mx[name]:
            np.testing.assert_allclose(mf[name][key], mx[name][key], rtol=1e-5, atol=1e-6,
                                       err_msg=f"memory {name}.{key}")
        for key in sx[name]:
            np.testing.assert_allclose(sf_[name][key], sx[name][key], rtol=1e-5, atol=1e-7,
                                       err_msg=f"momentum {name}.{key}")
    assert float(jnp.abs(mx["k"]["A"] - mems["k"]["A"]).max()) > 1e-3  # the memories moved
    # undifferentiated (inference), the forward kernels keep no chunk-start states
    y_read, (m_read, _) = jax.jit(functools.partial(_fused, kw))(mems, moms, x, q)
    np.testing.assert_allclose(y_read, yx, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m_read["mem"]["A"], mx["mem"]["A"], rtol=1e-5, atol=1e-6)
    for (path, want), got in zip(jax.tree_util.tree_leaves_with_path(gx), jax.tree.leaves(gf)):
        scale = float(jnp.abs(want).max())
        assert scale > 0, path
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * scale,
                                   err_msg=jax.tree_util.keystr(path))


@pytest.mark.slow
def test_hope_on_the_kernel_trains_as_recorded():
    """Per-token training CE of the smoke hope model on the kernel path, at init and after
    two clipped gradient steps (forward, teach signals, CMS updates and the outer gradient
    through the kernels), equals the losses recorded from commit cc62fd2."""
    from tests.fixtures import make_variant_losses as ref

    fixture = np.load(ref.__file__.replace("make_variant_losses.py", "variant_losses.npz"))
    got = ref.losses("hope", **{"selfmod.kernel": "pallas"})
    for key in ("ce0", "ce2"):
        np.testing.assert_allclose(got[key], fixture[f"hope/{key}"], rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("fields,needle", [
    ({"selfmod.momentum": 0.5}, "momentum=0.5"),
    ({"selfmod.inner_v": False}, "inner_v=False"),
    ({"selfmod.dgd": False}, "dgd=False"),
    ({"selfmod.chunk_size": 4, "selfmod.hidden_mult": 3}, "memory hidden"),
])
def test_kernel_rejects_what_it_does_not_implement(fields, needle):
    c = tiny_config("hope", **{"selfmod.kernel": "pallas", **fields})
    with pytest.raises(ConfigError, match="kernel='pallas'") as err:
        check_values(c)
    assert needle in str(err.value) and "kernel=xla" in str(err.value)
    check_values(tiny_config("hope", **{"selfmod.kernel": "xla", **fields}))  # XLA runs them


def test_kernel_choice_is_checked():
    with pytest.raises(ConfigError, match="model.selfmod.kernel"):
        check_values(tiny_config("hope", **{"selfmod.kernel": "triton"}))


needs_plugin = pytest.mark.skipif(
    __import__("benchmarks.gpu_aot", fromlist=["x"]).plugin_name() is None,
    reason="gpu-aot extra not installed (EXTRAS=dev,gpu-aot)")


@pytest.mark.slow  # ~30 s of Triton and ptxas
@needs_plugin
def test_kernels_compile_for_the_h100(tmp_path):
    """The pilot's per-layer shapes (6 sequences × 8 heads, head 64, segment 128, chunks of
    8 and 32) compile for an H100 without a GPU: one Triton kernel per scan each way."""
    from benchmarks import gpu_aot

    dev = gpu_aot.gpu_devices("h100")[0]
    sh = jax.sharding.SingleDeviceSharding(dev)
    mems, moms, x, q = jax.eval_shape(lambda: _inputs(B=6, nh=8, T=128, D=64, hidden=64))
    args = [jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), t)
            for t in (mems, x, q)]
    kw = dict(chunk_size=8, chunk_size_mem=32, eta_scale=0.1, v_norm=True)

    def loss(mems, x, q):
        y, (m, s) = sf.selfmod_heads(mems, moms, x, q, **kw)
        return jnp.sum(y) + sum(jnp.sum(a) for a in jax.tree.leaves((m, s)))

    with jax.default_device(dev):
        lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(*args).lower()
    gpu_aot.compile_for_gpu(lowered, str(tmp_path))
    thunks = open(glob.glob(str(tmp_path / "*thunk_sequence.txt"))[0]).read()
    for name in ("selfmod_projections", "selfmod_mem"):
        for way in ("fwd", "bwd"):
            assert thunks.count(f"kernel={name}_{way},") == 1, (name, way)


def test_auto_takes_xla_on_the_cpu():
    """The default ("auto") builds XLA's chunk scans unless the model is built for a GPU: the
    CPU program (and every recorded loss) is the one it was."""
    from nested_jax.configs import default

    s = default.get_config().model.selfmod
    assert s.kernel == "auto"
    sizes = dict(head_dim=64, hidden=64, chunk_size=8, chunk_size_mem=32, momentum=0.0,
                 dgd=True, frozen=(), adaptive_q=False)
    assert not sf.use_kernels("auto", **sizes)
    assert sf.use_kernels("pallas", **sizes) and not sf.use_kernels("xla", **sizes)


@needs_plugin
def test_auto_takes_the_kernels_for_a_gpu_where_they_apply():
    from benchmarks import gpu_aot

    ok = dict(head_dim=64, hidden=64, chunk_size=8, chunk_size_mem=32, momentum=0.0,
              dgd=True, frozen=(), adaptive_q=False)
    with jax.default_device(gpu_aot.gpu_devices("h100")[0]):
        assert kernel_scan.target_platform() == "gpu"
        assert sf.use_kernels("auto", **ok)
        for change in (dict(head_dim=128, hidden=128), dict(head_dim=48, hidden=48),
                       dict(momentum=0.9), dict(frozen=("k",)), dict(chunk_size_mem=24),
                       dict(chunk_size_mem=64), dict(chunk_size=32)):
            assert not sf.use_kernels("auto", **{**ok, **change}), change


def test_layers_unroll_when_the_chunk_scans_are_kernels():
    """With its chunk scans as kernels a hope block is small, so the online scan unrolls the
    layer stack as it does for blocks without a scan (the pilot's 12 layers: 97k → 41k
    device ops on the H100 compile); with XLA's scans it keeps model.unroll_layers."""
    from nested_jax.model.online import layer_unroll

    m = tiny_config("hope", **{"selfmod.kernel": "pallas"}).model
    assert layer_unroll(m) == max(m.unroll_layers, m.online.unroll_layers)
    m.selfmod.kernel = "xla"
    assert layer_unroll(m) is None


def test_gspmd_runs_xla_scans():
    """A Pallas kernel has no SPMD partitioning rule, so under mesh.mode="gspmd" the
    finalized config takes XLA's scans ("auto" → "xla"); a forced "pallas" stays."""
    from nested_jax.train.validate import finalize_config

    c = tiny_config("hope", **{"mesh.mode": "gspmd", "vocab_size": 0})
    finalize_config(c, 256)
    assert c.model.selfmod.kernel == "xla"
    c = tiny_config("hope", **{"mesh.mode": "gspmd", "vocab_size": 0, "selfmod.kernel": "pallas"})
    finalize_config(c, 256)
    assert c.model.selfmod.kernel == "pallas"
