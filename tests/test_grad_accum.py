"""Gradient accumulation (train.grad_accum): the rows of a step run in equal slices one after
another and the update is the same as in one pass — loss, gradients, metrics and the streaming
fast state — on one device and through the 2-device shard_map step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nested_jax.model.lm import init_params
from nested_jax.model.online import init_fast, strip_kv
from nested_jax.train import mesh as mesh_lib
from nested_jax.train import parallel
from nested_jax.train import step as step_lib
from tests.tiny_checkpoint import tiny_config


def _setup(variant, streaming):
    c = tiny_config(variant, seq_len=32)
    c.model.online.reset = "never" if streaming else "per_sequence"
    fn, params = init_params(c.model, 0)
    toks = jax.random.randint(jax.random.key(1), (4, 33), 0, c.model.vocab_size)
    fast = None
    if streaming:  # a streaming state that is not fresh: one pass over other text first
        fast = strip_kv(init_fast(fn.bind(params), c.model, 4, 32))
        other = jax.random.randint(jax.random.key(2), (4, 33), 0, c.model.vocab_size)
        fast = step_lib.loss_and_grads(params, other, 0, fast, fn=fn)[0][1][1]
    return c, fn, params, toks, fast


def _close(a, b, rtol, atol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.mark.parametrize("variant,streaming", [("transformer", False), ("hope_attention", True)])
def test_accumulated_step_equals_one_pass(variant, streaming):
    c, fn, params, toks, fast = _setup(variant, streaming)
    run = jax.jit(lambda p, t, f, k: step_lib.loss_and_grads(p, t, 3, f, fn=fn, accum=k),
                  static_argnums=3)
    (l1, (m1, f1)), g1 = run(params, toks, fast, 1)
    (l2, (m2, f2)), g2 = run(params, toks, fast, 2)
    np.testing.assert_allclose(float(l2), float(l1), rtol=1e-6)
    _close(g2, g1, rtol=2e-4, atol=1e-7)
    _close(m2, m1, rtol=1e-6, atol=1e-7)
    if streaming:  # every row's fast state comes back in its place
        assert jax.tree.structure(f2) == jax.tree.structure(f1)
        _close(f2, f1, rtol=1e-5, atol=1e-6)
        assert float(jnp.abs(g1["blocks"]["cms"]["levels"]["fast"]["w1"]).sum()) > 0


def test_accumulation_inside_the_two_device_shard_map_step():
    c, fn, params, toks, _ = _setup("transformer", False)
    c.mesh.data, c.mesh.fsdp = 2, 1
    c.train.batch_size = toks.shape[0]
    mesh = mesh_lib.make_mesh(c.mesh)
    tx = optax.sgd(0.1)
    out = {}
    for k in (1, 2):
        c.train.grad_accum = k
        parallel.check_config(c, mesh)
        grad_fn = parallel.shard_map_grad_fn(mesh, fn, accum=k)
        state = step_lib.init_train_state(params, tx)
        step = jax.jit(lambda s, b, g=grad_fn: step_lib.train_step(
            s, b, fn=fn, tx=tx, lr_schedule=lambda _: 0.1, grad_fn=g))
        out[k] = step(state, {"tokens": toks})
    np.testing.assert_allclose(float(out[2][1]["loss"]), float(out[1][1]["loss"]), rtol=1e-6)
    _close(out[2][0]["params"], out[1][0]["params"], rtol=1e-5, atol=1e-7)
    c.train.grad_accum = 4  # 2 rows per device cannot split into 4
    with pytest.raises(ValueError, match="grad_accum=4 must divide the 2 rows per device"):
        parallel.check_config(c, mesh)
