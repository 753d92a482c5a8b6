"""M3 outer optimizer: the JAX update equals an independent float64 NumPy transcription of
the reproduction's optim/m3.py (cubic Newton–Schulz, sums without bias correction, coupled
L2, slow momentum every C steps); it minimises a least-squares loss; build_optimizer("m3")
trains a tiny LM."""


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax.contrib import MuonDimensionNumbers as Dims

from configs.default import get_config
from nested_jax.train import optim
from nested_jax.train.m3 import m3, scale_by_m3
from tests.helpers import losses_on_fixed_batch, tiny_model_config

B1, B2, B3, ALPHA, STEPS, C, EPS = 0.9, 0.999, 0.8, 0.7, 3, 3, 1e-8
N_STEPS = 2 * C + 1  # slow momentum fires after steps 3 and 6


# ---- NumPy float64 reference (torch-style per-matrix loop, XᵀX form of the cubic) ----

def np_ns(x, steps=STEPS, eps=EPS):
    x = x / (np.linalg.norm(x) + eps)
    eye = np.eye(x.shape[1])
    for _ in range(steps):
        x = 0.5 * x @ (3.0 * eye - x.T @ x)
    return x


def np_orth(x, axes):
    """axes None: no NS; (r, c): NS of every x[..., r, ..., c, ...] slice over the others."""
    if axes is None:
        return x
    r, c = axes
    rest = [a for a in range(x.ndim) if a not in (r, c)]
    moved = np.moveaxis(x, rest + [r, c], list(range(x.ndim)))
    flat = moved.reshape(-1, x.shape[r], x.shape[c])
    out = np.stack([np_ns(m) for m in flat]).reshape(moved.shape)
    return np.moveaxis(out, list(range(x.ndim)), rest + [r, c])


class NpM3:
    """One parameter's M3 state and step, transcribed from the reproduction."""

    def __init__(self, shape, axes, slow_first):
        self.axes, self.slow_first, self.t = axes, slow_first, 0
        self.m1, self.m2, self.v, self.s, self.o2 = (np.zeros(shape) for _ in range(5))

    def direction(self, g):
        self.t += 1
        self.m1 = self.m1 + B1 * g
        self.v = self.v + B2 * g * g
        self.s = self.s + g
        o2_old = self.o2
        if self.t % C == 0:
            self.m2 = self.m2 + B3 * self.s
            self.s = np.zeros_like(self.s)
            self.o2 = np_orth(self.m2, self.axes)
        o2 = self.o2 if self.slow_first else o2_old
        return (np_orth(self.m1, self.axes) + ALPHA * o2) / (np.sqrt(self.v) + EPS)


class NpAdamW:
    def __init__(self, shape, b1, b2, eps):
        self.b1, self.b2, self.eps, self.t = b1, b2, eps, 0
        self.m, self.v = np.zeros(shape), np.zeros(shape)

    def direction(self, g):
        self.t += 1
        self.m = self.b1 * self.m + (1 - self.b1) * g
        self.v = self.b2 * self.v + (1 - self.b2) * g * g
        m_hat, v_hat = self.m / (1 - self.b1 ** self.t), self.v / (1 - self.b2 ** self.t)
        return m_hat / (np.sqrt(v_hat) + self.eps)


def _random_tree(key, shapes):
    keys = jax.random.split(key, len(shapes))
    return {k: jax.random.normal(kk, s) for kk, (k, s) in zip(keys, shapes.items())}


@pytest.mark.parametrize("slow_first", [False, True])
def test_scale_by_m3_matches_numpy(slow_first):
    shapes = {"tall": (5, 3), "wide": (3, 6), "stacked": (2, 4, 3), "vec": (4,)}
    axes = {"tall": (0, 1), "wide": (0, 1), "stacked": (1, 2), "vec": None}  # the default rule
    tx = scale_by_m3(B1, B2, B3, ALPHA, STEPS, C, EPS, slow_first=slow_first)
    state = tx.init(_random_tree(jax.random.key(0), shapes))
    update = jax.jit(tx.update)
    ref = {k: NpM3(s, axes[k], slow_first) for k, s in shapes.items()}
    for t in range(1, N_STEPS + 1):
        grads = _random_tree(jax.random.key(t), shapes)
        out, state = update(grads, state)
        for k in shapes:
            want = ref[k].direction(np.asarray(grads[k], np.float64))
            np.testing.assert_allclose(out[k], want, rtol=2e-4, atol=1e-5, err_msg=f"{k} step {t}")
        fired = np.abs(np.asarray(state.slow_ortho["stacked"])).max() > 0
        assert fired == (t >= C) and int(state.count) == t
        assert np.abs(np.asarray(state.slow_acc["wide"])).max() == 0 or t % C


@pytest.mark.parametrize("decoupled", [False, True])
def test_m3_chain_matches_numpy(decoupled):
    """m3(): M3 (+ weight decay, lr schedule) on the dims leaves, AdamW on the None leaves,
    including a matrix over non-trailing axes (batch axis in the middle)."""
    shapes = {"w": (4, 6), "stacked": (2, 5, 3), "mid": (3, 2, 4), "emb": (6, 4), "vec": (5,)}
    dims = {"w": Dims(0, 1), "stacked": Dims(1, 2), "mid": Dims(0, 2), "emb": None, "vec": None}
    axes = {"w": (0, 1), "stacked": (1, 2), "mid": (0, 2)}
    wd, lr = 0.05, optax.linear_schedule(1e-2, 5e-3, N_STEPS)
    adam_mask = {k: k != "vec" for k in shapes}
    tx = m3(lr, B1, B2, B3, ALPHA, STEPS, C, EPS, wd, dims=dims,
            decoupled_weight_decay=decoupled, adam_b1=0.8, adam_b2=0.99, adam_eps=1e-6,
            adam_weight_decay_mask=adam_mask)
    params = _random_tree(jax.random.key(100), shapes)
    state = tx.init(params)
    update = jax.jit(tx.update)
    np_params = {k: np.asarray(v, np.float64) for k, v in params.items()}
    ref = {k: NpM3(s, axes[k], False) if k in axes else NpAdamW(s, 0.8, 0.99, 1e-6)
           for k, s in shapes.items()}
    for t in range(1, N_STEPS + 1):
        grads = _random_tree(jax.random.key(t), shapes)
        upd, state = update(grads, state, params)
        params = optax.apply_updates(params, upd)
        lr_t = float(lr(t - 1))
        for k in shapes:
            g, p = np.asarray(grads[k], np.float64), np_params[k]
            if k in axes and not decoupled:
                step = ref[k].direction(g + wd * p)
            else:
                step = ref[k].direction(g) + (wd * p if adam_mask[k] else 0.0)
            np_params[k] = p - lr_t * step
            np.testing.assert_allclose(params[k], np_params[k], rtol=1e-4, atol=1e-5,
                                       err_msg=f"{k} step {t}")


def test_m3_minimises_least_squares():
    kx, kw, kn = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (64, 8))
    y = x @ jax.random.normal(kw, (8, 4)) + 1.0 + 0.01 * jax.random.normal(kn, (64, 4))
    params = {"w": jnp.zeros((8, 4)), "b": jnp.zeros((4,))}  # w: M3 (NS), b: AdamW

    def loss_fn(p):
        return jnp.mean((x @ p["w"] + p["b"][None, :] - y) ** 2)

    tx = m3(0.05, slow_chunk=10)

    @jax.jit
    def run(p):
        def body(carry, _):
            p, s = carry
            loss, g = jax.value_and_grad(loss_fn)(p)
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), loss
        (p, _), losses = jax.lax.scan(body, (p, tx.init(p)), None, length=200)
        return losses, loss_fn(p)

    losses, final = run(params)
    assert np.all(np.isfinite(np.asarray(losses)))
    # ~10x lower after 200 steps (the undamped sums M1, M2 then make it hover, not converge)
    assert float(final) < 0.25 * float(losses[0]), (float(losses[0]), float(final))


def test_build_optimizer_m3_trains_tiny_model():
    cfg = tiny_model_config()
    o = get_config().optim
    o.name, o.lr, o.warmup_steps, o.schedule, o.m3_slow_chunk = "m3", 1e-3, 1, "constant", 2
    losses, _ = losses_on_fixed_batch(cfg, o, steps=6)
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    with pytest.raises(ValueError, match="'m3'"):
        o.name = "sgd"
        optim.build_optimizer(o, 20)
