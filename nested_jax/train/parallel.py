"""Data parallelism (shard_map) and FSDP for the train step (docs/architecture.md, "One
training step").

mesh.mode = "shard_map" (default). The gradient is computed by `jax.shard_map` over the
mesh: every device runs the unchanged single-device computation on its rows of the batch
(and its rows of the per-sequence fast state), then ONE `pmean` over ("data", "fsdp")
turns the local gradients of the local mean loss into the gradient of the global mean
loss (equal rows per device). The optimizer update runs outside shard_map, under the same
jit, on FSDP-sharded parameters and optimizer state: GSPMD partitions it, and global-norm
clipping and Muon still see whole tensors. With mesh.fsdp > 1 the parameters are gathered
once per step into the shard_map (whole weights on every device during forward/backward,
optimizer state and stored weights sharded).

check_vma=False, on purpose. HOPE's online algorithm differentiates *inside* the model:
the teach signal's `jax.vjp`, the CMS levels' inner gradients and the self-modifying
memories' inner `jax.grad`, all on per-sequence state that starts from replicated zeros or
parameters. Under check_vma=True those inner transposes meet implicit `pvary` casts: the
teach-signal vjp rejects its cotangent ("expected float32[]{V:(data,fsdp)}"), and an inner
gradient of a replicated state would come back psum'd over devices (other rows' teach
signals) — the PyTorch reproduction's DDP failure (online updates off, replicas drifting)
in another form. With check_vma=False each device runs exactly the
single-device program on its rows, and the explicit pmean below is the only cross-device
reduction: the pmap idiom, correct for this mode. (Do not swap in "differentiate the
pmean'd loss": that idiom is for check_vma=True and gives device-local gradients here.)
tests/test_distributed.py checks DP == single device for transformer, hope_attention, hope.

mesh.mode = "gspmd": plain jax.jit with the same in/out shardings; XLA partitions the whole
step. With FSDP it gathers each layer's weights inside the layer scan (seen in the compiled
HLO) instead of all weights up front: the mode for models whose whole weights and gradients
do not fit one device.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from nested_jax.model.lm import build_model
from nested_jax.model.online import init_fast, strip_kv
from nested_jax.train import mesh as mesh_lib
from nested_jax.train import sharding as sharding_lib
from nested_jax.train import step as step_lib

MODES = ("shard_map", "gspmd")  # mesh.mode


def abstract_fast(model_cfg, batch: int, seq_len: int):
    """Abstract streaming fast state (what the train state holds) for `batch` rows."""
    return jax.eval_shape(
        lambda: strip_kv(init_fast(build_model(model_cfg, 0), model_cfg, batch, seq_len)))


def state_shardings(config, mesh, abstract_state: dict):
    """NamedShardings of the train state (table in nested_jax.train.sharding)."""
    specs = sharding_lib.state_specs(abstract_state, mesh, min_size=config.mesh.fsdp_min_size)
    return sharding_lib.named(specs, mesh)


def _pmean_floats(tree, axes):
    return jax.tree.map(
        lambda x: jax.lax.pmean(x, axes) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def shard_map_grad_fn(mesh, fn, fast_specs=None, accum: int = 1):
    """`step.loss_and_grads` as a shard_map over the mesh (see the module docstring); each
    device accumulates over `accum` slices of its rows (train.grad_accum)."""
    axes = mesh_lib.BATCH_AXES

    def grad_fn(params, tokens_BxT1, step, fast=None):
        has_fast = fast is not None

        def body(params, tokens, step, fast):
            (loss, (metrics, new_fast)), grads = step_lib.loss_and_grads(
                params, tokens, step, fast, fn=fn, accum=accum)
            grads = _pmean_floats(grads, axes)  # the one cross-device reduction
            return (jax.lax.pmean(loss, axes), _pmean_floats(metrics, axes),
                    new_fast if has_fast else None, grads)

        f_spec = fast_specs if has_fast else P()
        loss, metrics, new_fast, grads = jax.shard_map(
            body, mesh=mesh, in_specs=(P(), P(axes), P(), f_spec),
            out_specs=(P(), P(), f_spec, P()), check_vma=False,
        )(params, tokens_BxT1, step, fast)
        return (loss, (metrics, new_fast)), grads

    return grad_fn


def jit_train_step(config, mesh, shardings, *, fn, tx, lr_schedule):
    """The train step jitted once with state/batch shardings and state donation."""
    kw = {}
    if config.mesh.mode == "shard_map":  # else "gspmd" (MODES)
        fast_specs = None
        if "fast" in shardings:
            fast_specs = jax.tree.map(lambda s: s.spec, shardings["fast"])
        kw["grad_fn"] = shard_map_grad_fn(mesh, fn, fast_specs, config.train.grad_accum)
    step_fn = functools.partial(step_lib.train_step, fn=fn, tx=tx, lr_schedule=lr_schedule,
                                accum=config.train.grad_accum, **kw)
    return jax.jit(step_fn,
                   in_shardings=(shardings, {"tokens": mesh_lib.batch_sharding(mesh)}),
                   out_shardings=(shardings, mesh_lib.replicated(mesh)),
                   donate_argnums=(0,))


def check_config(config, mesh) -> None:
    """Before any work: batch rows that split evenly over devices and processes."""
    b, n, p = config.train.batch_size, mesh.size, jax.process_count()
    if b % n or b % p:
        raise ValueError(
            f"train.batch_size={b} must be divisible by the number of devices ({n}) and "
            f"of processes ({p}); change --config.train.batch_size.")
    if (b // n) % config.train.grad_accum:
        raise ValueError(
            f"train.grad_accum={config.train.grad_accum} must divide the {b // n} rows per "
            "device; change --config.train.grad_accum or --config.train.batch_size.")
