"""Small shared builders for tests."""

import functools

import jax
import ml_collections

from tests.tiny import tiny_model


def tiny_model_config(**overrides) -> ml_collections.ConfigDict:
    """A tiny Transformer++ (vocabulary 64, width 32, 2 layers, 4 heads): the model part of
    tests/tiny.py's tiny_config, with `overrides` (model fields) set."""
    return tiny_model("transformer", **{"vocab_size": 64, "d_model": 32, "n_layers": 2,
                                        "n_heads": 4, **overrides})


def losses_on_fixed_batch(model_cfg, optim_cfg, steps: int, total_steps: int = 20) -> tuple[list, dict]:
    """Train `steps` jitted steps on one fixed random batch; returns (losses, final state)."""
    from nested_jax.model.lm import init_params
    from nested_jax.train import optim, step as step_lib

    fn, params = init_params(model_cfg, seed=0)
    tx = optim.build_optimizer(optim_cfg, total_steps)
    state = step_lib.init_train_state(params, tx)
    step = jax.jit(functools.partial(step_lib.train_step, fn=fn, tx=tx,
                                     lr_schedule=optim.schedule(optim_cfg, total_steps)))
    tokens = jax.random.randint(jax.random.key(3), (4, 17), 0, model_cfg.vocab_size)
    losses = []
    for _ in range(steps):
        state, m = step(state, {"tokens": tokens})
        losses.append(float(m["loss"]))
        assert float(m["nonfinite"]) == 0.0
    return losses, state



def tensorboard_events(path) -> list:
    """The Event protos of one TensorBoard event file (TFRecord framing: u64 length, u32 crc,
    Event, u32 crc)."""
    import struct

    from tensorboardX.proto import event_pb2

    data, out, i = open(path, "rb").read(), [], 0
    while i < len(data):
        (n,) = struct.unpack("<Q", data[i:i + 8])
        ev = event_pb2.Event()
        ev.ParseFromString(data[i + 12:i + 12 + n])
        out.append(ev)
        i += 12 + n + 4
    return out


def tensorboard_scalars(logdir) -> list[tuple[int, str, float]]:
    """(step, tag, value) of every scalar in the TensorBoard event files of `logdir`, in order."""
    import glob
    import os

    return [(ev.step, v.tag, v.simple_value)
            for path in sorted(glob.glob(os.path.join(str(logdir), "events.out.tfevents.*")))
            for ev in tensorboard_events(path) for v in ev.summary.value]


class OffsetFn:
    """`fn` (a Functional) whose bound model adds off_BxTxD[:, pos] to the embeddings of the
    tokens at absolute positions pos, for any caller (online_forward included): causality
    tests differentiate the loss at position t wrt that offset at every position."""

    def __init__(self, fn, off_BxTxD):
        self.cfg, self._fn, self._off = fn.cfg, fn, off_BxTxD

    def bind(self, params):
        return _OffsetModel(self._fn.bind(params), self._off)


class _OffsetModel:
    def __init__(self, model, off_BxTxD):
        self._model, self._off = model, off_BxTxD

    def __getattr__(self, name):
        return getattr(self._model, name)

    def run_blocks(self, x_BxTxD, pos_T=None, carry=None, probes=None, remat=None,
                   unroll_layers=None):
        import jax.numpy as jnp

        if pos_T is None:
            pos_T = jnp.arange(x_BxTxD.shape[1], dtype=jnp.int32)
        x_BxTxD = x_BxTxD + jnp.take(self._off, pos_T, axis=1).astype(x_BxTxD.dtype)
        return self._model.run_blocks(x_BxTxD, pos_T, carry, probes, remat, unroll_layers)
