"""Data parallelism and FSDP on 2 simulated CPU devices (conftest): a sharded step is the
single-device step, for the plain Transformer and for HOPE's online algorithm (per-row
fast state, CMS writes from the teach signal), and checkpoints move between device counts."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from nested_jax.checkpoint import Checkpointer
from nested_jax.model.lm import abstract_model, build_model
from nested_jax.model.loss import streams
from nested_jax.model.online import init_fast, strip_kv
from nested_jax.train import distributed, mesh as mesh_lib, optim, parallel
from nested_jax.train import sharding as sharding_lib
from nested_jax.train import step as step_lib
from nested_jax.train.validate import check_values
from tests.tiny import tiny_config as _tiny_config

B, T, STEPS = 4, 32, 3


def tiny_config(variant="transformer", **mesh):
    return _tiny_config(
        variant, preset="default", vocab_size=64, d_model=32, n_layers=1, n_heads=2,
        selfmod=dict(chunk_size=4, chunk_size_mem=8), online=dict(segment_len=8, teach_scale=1.0),
        cms=dict(names=("fast", "slow"), periods=(8, 16),  # fast: 4 writes, slow: 2
                 optimizers=("momentum", "momentum"), lrs=(1e-2, 1e-2)),  # see below
        train=dict(batch_size=B, seq_len=T, steps=10),
        optim=dict(lr=1e-3, warmup_steps=1),
        mesh=dict(fsdp_min_size=0, **mesh))


def _parts(c):
    tx = optim.build_optimizer(c.optim, c.train.steps)
    lr = optim.schedule(c.optim, c.train.steps)
    fn = abstract_model(c.model)

    def init():
        model = build_model(c.model, c.seed)
        params = nnx.to_pure_dict(nnx.split(model)[1])
        fast = None
        if streams(c.model):
            fast = strip_kv(init_fast(model, c.model, B, T))
        return step_lib.init_train_state(params, tx, fast)

    return fn, tx, lr, init


def _tokens(n=STEPS):
    return [np.asarray(jax.random.randint(jax.random.key(10 + i), (B, T + 1), 0, 64), np.int32)
            for i in range(n)]


def run_single(c, batches):
    """Reference: the plain jitted step on one device."""
    fn, tx, lr, init = _parts(c)
    dev = jax.devices()[0]
    state = jax.device_put(jax.jit(init)(), dev)
    step = jax.jit(functools.partial(step_lib.train_step, fn=fn, tx=tx, lr_schedule=lr))
    losses = []
    for b in batches:
        state, m = step(state, {"tokens": jax.device_put(b, dev)})
        losses.append(float(m["loss"]))
    return state, losses


def run_mesh(c, batches):
    """The training loop's path: sharded init, jit_train_step over all devices."""
    fn, tx, lr, init = _parts(c)
    mesh = mesh_lib.make_mesh(c.mesh)
    shardings = parallel.state_shardings(c, mesh, jax.eval_shape(init))
    state = jax.jit(init, out_shardings=shardings)()
    step = parallel.jit_train_step(c, mesh, shardings, fn=fn, tx=tx, lr_schedule=lr)
    losses = []
    for b in batches:
        state, m = step(state, {"tokens": mesh_lib.global_batch(b, mesh)})
        losses.append(float(m["loss"]))
    return state, losses, shardings, mesh, m


# Sharding changes only the order of float32 sums (batch mean, pmean): measured max
# differences after 3 steps are 1e-7 (params, losses) and 1.5e-6 on fast-state values ~4.
# The tiny config uses "momentum" CMS levels: the "precond" inner optimizer's first step is
# ±31.6·lr whatever |g| (sign-like), so noise-level gradient entries flip and its fast
# state only agrees to ~2% (outer losses still to 5e-7).
assert_trees_close = functools.partial(chex.assert_trees_all_close, rtol=2e-5, atol=2e-6)


@pytest.fixture(scope="module")
def transformer_runs():
    c = tiny_config()
    return run_single(c, _tokens()), run_mesh(c, _tokens())


@pytest.mark.parametrize("variant,reset", [
    ("transformer", "per_sequence"),
    ("hope_attention", "never"),  # streaming: per-row fast state sharded with the batch
    pytest.param("hope", "per_sequence", marks=pytest.mark.slow),  # ~3 min of compiling on 2 cores
])
def test_data_parallel_steps_equal_single_device(variant, reset, request):
    assert jax.device_count() == 2
    c = tiny_config(variant)
    c.model.online.reset = reset
    if variant == "transformer":
        (ref, ref_losses), (got, losses, shardings, _, metrics) = request.getfixturevalue(
            "transformer_runs")
    else:
        batches = _tokens()
        ref, ref_losses = run_single(c, batches)
        got, losses, shardings, _, metrics = run_mesh(c, batches)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    assert_trees_close(got["params"], ref["params"])
    assert_trees_close(got["opt_state"], ref["opt_state"])
    assert int(got["step"]) == STEPS
    if "fast" in ref:  # the online state: CMS deltas written from the teach signal, per row
        cms = got["fast"]["carry"]["cms"]["fast"]["w1"]  # [L, B, D, F]
        assert shardings["fast"]["carry"]["cms"]["fast"]["w1"].spec[:2] == (None, ("data", "fsdp"))
        assert float(jnp.abs(cms).max()) > 0, "CMS level never written"
        assert_trees_close(got["fast"], ref["fast"])
    if variant != "transformer":  # every CMS level fired on every row (fast 4×, slow 2×)
        assert float(metrics["cms/0/fast/updates"]) == 4.0
        assert float(metrics["cms/0/slow/updates"]) == 2.0


def test_fsdp_equals_replicated_and_shards_state(transformer_runs):
    batches = _tokens()
    rep, rep_losses, *_ = transformer_runs[1]
    for mode in ("shard_map", "gspmd"):
        c = tiny_config(data=1, fsdp=2, mode=mode)
        got, losses, shardings, mesh, _ = run_mesh(c, batches)
        assert mesh.shape == {"data": 1, "fsdp": 2}
        np.testing.assert_allclose(losses, rep_losses, rtol=1e-5)
        assert_trees_close(got["params"], rep["params"])
        # stored sharded: the embedding [V=64, D=32] splits its vocab rows, stacked block
        # kernels [L, D, F] a non-layer dim; norms stay replicated
        emb = got["params"]["embed"]["embedding"]
        assert emb.sharding.spec == P("fsdp", None)
        assert emb.addressable_shards[0].data.shape == (32, 32)
        wq = got["params"]["blocks"]["attn"]["wq"]["kernel"]
        assert wq.sharding.spec[0] is None and "fsdp" in tuple(wq.sharding.spec)
        assert got["params"]["final_norm"]["scale"].sharding.spec == P()
        mu = [x for x in jax.tree.leaves(got["opt_state"]) if x.shape == emb.shape]
        assert mu and all(x.sharding.spec == P("fsdp", None) for x in mu)


def test_fsdp_rule_table():
    spec = sharding_lib.fsdp_spec
    assert spec("embed/embedding", (64, 32), 2) == P("fsdp", None)
    assert spec("blocks/mlp/up/kernel", (4, 32, 96), 2) == P(None, None, "fsdp")
    assert spec("blocks/mlp/up/kernel", (8, 3, 5), 2) == P()  # only the layer axis divides
    assert spec("final_norm/scale", (32,), 2) == P()
    assert spec("embed/embedding", (64, 32), 1) == P()
    assert spec("embed/embedding", (64, 32), 2, min_size=10_000) == P()
    assert spec("opt/0/mu/blocks/w", (2, 6, 9), 3) == P(None, None, "fsdp")


def test_checkpoint_moves_between_device_counts(tmp_path):
    """Save sharded on 2 devices (FSDP) → restore on 1; save on 1 → restore FSDP on 2."""
    c2 = tiny_config("hope_attention", data=1, fsdp=2)
    c2.model.online.reset = "never"
    fn, tx, lr, init = _parts(c2)
    abstract = jax.eval_shape(init)
    mesh2 = mesh_lib.make_mesh(c2.mesh)
    sh2 = parallel.state_shardings(c2, mesh2, abstract)
    state2 = jax.jit(init, out_shardings=sh2)()
    state2 = jax.tree.map(lambda x: x + 1 if jnp.issubdtype(x.dtype, jnp.floating) else x, state2)
    assert state2["params"]["embed"]["embedding"].sharding.spec == P("fsdp", None)

    def save(path, s):
        ck = Checkpointer(str(path), async_save=False)
        ck.save(1, params=s["params"], opt={"opt_state": s["opt_state"], "step": s["step"]},
                fast=s["fast"], meta={"config": "{}"})
        ck.close()

    def restore(path, shardings):
        tgt = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                           abstract, shardings)
        got = Checkpointer(str(path), read_only=True).restore(
            1, params=tgt["params"], opt={"opt_state": tgt["opt_state"], "step": tgt["step"]},
            fast=tgt["fast"])
        return {"params": got["params"], "opt_state": got["opt"]["opt_state"],
                "step": got["opt"]["step"], "fast": got["fast"]}

    save(tmp_path / "two", state2)
    mesh1 = mesh_lib.make_mesh(tiny_config().mesh, devices=jax.devices()[:1])
    sh1 = parallel.state_shardings(tiny_config("hope_attention"), mesh1, abstract)
    one = restore(tmp_path / "two", sh1)
    assert one["params"]["embed"]["embedding"].sharding.device_set == {jax.devices()[0]}
    assert_trees_close(one, state2, rtol=0, atol=0)

    save(tmp_path / "one", one)
    back = restore(tmp_path / "one", sh2)
    assert back["params"]["embed"]["embedding"].sharding.spec == P("fsdp", None)
    assert back["fast"]["carry"]["cms"]["fast"]["w1"].sharding.spec[:2] == (None, ("data", "fsdp"))
    assert_trees_close(back, state2, rtol=0, atol=0)


def test_mesh_and_multihost_settings(monkeypatch):
    c = tiny_config()
    assert mesh_lib.mesh_shape(c.mesh, 8) == (8, 1)
    c.mesh.fsdp = 4
    assert mesh_lib.mesh_shape(c.mesh, 8) == (2, 4)
    c.mesh.data, c.mesh.fsdp = 2, -1
    assert mesh_lib.mesh_shape(c.mesh, 8) == (2, 4)
    c.mesh.data, c.mesh.fsdp = 3, 1
    with pytest.raises(ValueError, match="must use all 8 devices"):
        mesh_lib.mesh_shape(c.mesh, 8)
    c.mesh.mode = "pmap"
    with pytest.raises(ValueError, match="mesh.mode='pmap'"):
        check_values(c)

    for k in distributed.ENV.values():
        monkeypatch.delenv(k, raising=False)
    assert distributed.settings() is None
    assert distributed.settings("auto") == {"coordinator": "auto", "num_processes": None,
                                            "process_id": None}  # SLURM etc. fill them in
    assert distributed.settings("h:1", 2, 1) == {"coordinator": "h:1", "num_processes": 2,
                                                  "process_id": 1}
    monkeypatch.setenv("NJ_COORDINATOR", "h:2")
    monkeypatch.setenv("NJ_NUM_PROCESSES", "4")
    monkeypatch.setenv("NJ_PROCESS_ID", "3")
    assert distributed.settings()["process_id"] == 3
    assert distributed.settings(process_id=0)["process_id"] == 0  # flags win over env
    with pytest.raises(ValueError, match="must lie in"):
        distributed.settings(process_id=4)
    monkeypatch.delenv("NJ_PROCESS_ID")
    with pytest.raises(ValueError, match="missing --process_id"):
        distributed.settings()
    monkeypatch.setenv("NJ_COORDINATOR", "nohostport")
    with pytest.raises(ValueError, match="host:port"):
        distributed.settings(process_id=0)
