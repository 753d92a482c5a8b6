"""M3 (Multi-scale Momentum Muon), the Nested Learning paper's outer optimizer (NL Alg. 1), as
an Optax GradientTransformation that follows the PyTorch reproduction (kmccleary3301/
nested_learning, `optim/m3.py`).

Per M3 parameter θ with gradient g, at step t = 1, 2, ...; no bias corrections, and the
accumulators are sums, not moving averages:

    g   ← g + wd·θ                        coupled L2, as the reproduction (decoupled optional)
    M1  ← M1 + β1·g                        fast momentum, every step
    V   ← V  + β2·g²                       second moment
    S   ← S  + g                           gradients since the last slow update
    O1  = NS(M1)
    Δθ  = −lr · (O1 + α·O2) / (√V + ε)      ε outside the square root
    if t mod C == 0:  M2 ← M2 + β3·S;  S ← 0;  O2 = NS(M2)     (C = slow_chunk; O2 starts at 0)

The slow update comes after Δθ, so a new O2 is used from step t+1 on (NL Alg. 1,
where the slow memory is refreshed at the start of each chunk of C steps).
`slow_first=True` refreshes it before Δθ instead, so step t already uses it. That is the order
in the copy of the reproduction's optim/m3.py we found; its documentation describes the other.

NS(X), per matrix: X ← X / (‖X‖_F + ε), then ns_steps times X ← a·X + b·(XXᵀ)X + c·(XXᵀ)²X.
The default (a, b, c) = (3/2, −1/2, 0) is the reproduction's cubic X ← ½·X·(3I − XᵀX).
Pass MUON_NS_COEFFS for optax.contrib.muon's quintic. The matrix is chosen by
`optax.contrib.MuonDimensionNumbers` (reduction axes → rows, output axes → columns), and the
remaining axes are batch axes. The default is the last two axes, so stacked [L, din, dout] layer
params are L separate matrices.

Which params are orthogonalised: in `scale_by_m3`, leaves whose dims entry is None skip NS
(O = M) and get the same accumulate-and-divide update. In `m3`, those leaves go to AdamW, as
in the reproduction, which splits params by its Muon-candidate rule and sends the rest
(embeddings, norms, biases) to torch AdamW with the same lr.

Consequences of the sums and of the Frobenius normalisation in NS (worth knowing when tuning):
β1 and β3 cancel in NS(M1) and NS(M2) except through ε. β2 only scales every M3 step by
1/√β2. √V grows like √t, so the step decays like an AdaGrad step. The step is
O/(√V+ε), an O(1/√min(m, n)) matrix divided by the accumulated gradient size. It scales like
1/|g|, so lr is not comparable with AdamW's.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax.contrib import MuonDimensionNumbers
from optax.transforms import MaskedNode

CUBIC_NS_COEFFS = (1.5, -0.5, 0.0)  # ½·X·(3I − XᵀX), the reproduction's iteration
MUON_NS_COEFFS = (3.4445, -4.775, 2.0315)  # optax.contrib.muon's quintic


class ScaleByM3State(NamedTuple):
    count: jax.Array  # int32 step t (number of updates done)
    fast_mu: optax.Updates  # M1
    slow_mu: optax.Updates  # M2
    slow_acc: optax.Updates  # S, gradients since the last slow update
    nu: optax.Updates  # V
    slow_ortho: optax.Updates  # O2 = NS(M2), cached between slow updates


def newton_schulz(x_BxMxN: jax.Array, steps: int, eps: float,
                  coeffs=CUBIC_NS_COEFFS) -> jax.Array:
    """Batched NS(X) of [B, M, N] matrices (each Frobenius-normalised on its own).
    f(Xᵀ) = f(X)ᵀ, so the Gram matrix is taken on the smaller side."""
    a, b, c = coeffs
    transpose = x_BxMxN.shape[-2] > x_BxMxN.shape[-1]
    x = jnp.swapaxes(x_BxMxN, -1, -2) if transpose else x_BxMxN
    x = x / (jnp.sqrt(jnp.sum(x * x, axis=(-2, -1), keepdims=True)) + eps)
    for _ in range(steps):
        gram = x @ jnp.swapaxes(x, -1, -2)
        poly = b * gram + c * (gram @ gram) if c else b * gram
        x = a * x + poly @ x
    return jnp.swapaxes(x, -1, -2) if transpose else x


def _axes(ndim: int, axis) -> tuple[int, ...]:
    return tuple(a % ndim for a in ((axis,) if isinstance(axis, int) else axis))


def orthogonalize(x: jax.Array, dim: MuonDimensionNumbers | None, steps: int, eps: float,
                  coeffs=CUBIC_NS_COEFFS) -> jax.Array:
    """NS over the axes `dim` names (other axes are batch); identity when dim is None."""
    if dim is None:
        return x
    rows, cols = _axes(x.ndim, dim.reduction_axis), _axes(x.ndim, dim.output_axis)
    batch = tuple(a for a in range(x.ndim) if a not in rows + cols)
    perm = batch + rows + cols
    shape = tuple(x.shape[a] for a in perm)
    m, n = math.prod(x.shape[a] for a in rows), math.prod(x.shape[a] for a in cols)
    o = newton_schulz(x.transpose(perm).reshape(-1, m, n), steps, eps, coeffs)
    inverse = tuple(sorted(range(x.ndim), key=lambda i: perm[i]))
    return o.reshape(shape).transpose(inverse)


def _default_dim(x) -> MuonDimensionNumbers | None:
    return MuonDimensionNumbers(x.ndim - 2, x.ndim - 1) if x.ndim >= 2 else None


def resolve_dims(dims, tree) -> Any:
    """Per-leaf MuonDimensionNumbers | None for `tree`: dims is None (default: last two axes of
    every ≥2-D leaf), a pytree, or a callable of the tree. Leaves that an optax.partition masked
    out (MaskedNode) stay MaskedNode, so the result lines up with the masked updates."""
    if dims is None:
        return jax.tree.map(_default_dim, tree)
    d = dims(tree) if callable(dims) else dims
    return jax.tree.map(lambda x, dd: x if isinstance(x, MaskedNode) else dd, tree, d,
                        is_leaf=lambda x: isinstance(x, MaskedNode))


def scale_by_m3(beta1: float = 0.9, beta2: float = 0.999, beta3: float = 0.9,
                alpha: float = 1.0, ns_steps: int = 3, slow_chunk: int = 100,
                eps: float = 1e-8, dims=None, *, ns_coeffs=CUBIC_NS_COEFFS,
                slow_first: bool = False) -> optax.GradientTransformation:
    """The M3 direction (O1 + α·O2)/(√V + ε), as in the module docstring, without lr and
    weight decay. `dims` is a pytree or callable of MuonDimensionNumbers | None (None: no NS
    for that leaf); by default every ≥2-D leaf is orthogonalised over its last two axes.
    slow_chunk ≤ 0 never updates the slow momentum."""

    def ortho(tree, d):
        return jax.tree.map(lambda x, dd: orthogonalize(x, dd, ns_steps, eps, ns_coeffs), tree, d)

    def init_fn(params):
        zeros = lambda: optax.tree.zeros_like(params)  # noqa: E731
        return ScaleByM3State(jnp.zeros((), jnp.int32), zeros(), zeros(), zeros(), zeros(),
                              zeros())

    def update_fn(updates, state, params=None):
        del params
        d = resolve_dims(dims, updates)
        count = optax.safe_increment(state.count)
        m1 = jax.tree.map(lambda m, g: m + beta1 * g, state.fast_mu, updates)
        nu = jax.tree.map(lambda v, g: v + beta2 * g * g, state.nu, updates)
        acc = jax.tree.map(lambda s, g: s + g, state.slow_acc, updates)

        def slow(carry):
            m2, s, _ = carry
            m2 = jax.tree.map(lambda m, x: m + beta3 * x, m2, s)
            return m2, optax.tree.zeros_like(s), ortho(m2, d)

        carry = (state.slow_mu, acc, state.slow_ortho)
        if slow_chunk > 0:
            m2, acc, o2 = jax.lax.cond(count % slow_chunk == 0, slow, lambda c: c, carry)
        else:
            m2, acc, o2 = carry
        o1 = ortho(m1, d)
        o2_used = o2 if slow_first else state.slow_ortho
        out = jax.tree.map(lambda a, b, v: (a + alpha * b) / (jnp.sqrt(v) + eps), o1, o2_used, nu)
        return out, ScaleByM3State(count, m1, m2, acc, nu, o2)

    return optax.GradientTransformation(init_fn, update_fn)


def m3(learning_rate: optax.ScalarOrSchedule, beta1: float = 0.9, beta2: float = 0.999,
       beta3: float = 0.9, alpha: float = 1.0, ns_steps: int = 3, slow_chunk: int = 100,
       eps: float = 1e-8, weight_decay: float = 0.0, *, dims=None,
       ns_coeffs=CUBIC_NS_COEFFS, slow_first: bool = False,
       decoupled_weight_decay: bool = False, adam_b1: float = 0.9, adam_b2: float = 0.999,
       adam_eps: float = 1e-8, adam_weight_decay: float | None = None,
       adam_weight_decay_mask: Any | Callable | None = None,
       adam_learning_rate: optax.ScalarOrSchedule | None = None,
       ) -> optax.GradientTransformation:
    """M3 for the leaves `dims` marks (see scale_by_m3; default: every ≥2-D leaf) and AdamW
    for the rest (dims entry None), each scaled by the learning rate (a schedule is allowed).

    Weight decay on M3 leaves: coupled L2, g ← g + wd·θ before the moments, as the reproduction
    does. With decoupled_weight_decay=True it is θ ← θ − lr·(u + wd·θ) instead. AdamW leaves get
    optax.adamw's decoupled decay (adam_weight_decay, default = weight_decay), masked by
    adam_weight_decay_mask. The reproduction decays all of them.
    """
    adam_wd = weight_decay if adam_weight_decay is None else adam_weight_decay
    wd = [optax.add_decayed_weights(weight_decay)] if weight_decay else []
    m3_tx = optax.chain(
        *([] if decoupled_weight_decay else wd),
        scale_by_m3(beta1, beta2, beta3, alpha, ns_steps, slow_chunk, eps, dims,
                    ns_coeffs=ns_coeffs, slow_first=slow_first),
        *(wd if decoupled_weight_decay else []),
        optax.scale_by_learning_rate(learning_rate),
    )
    adam_tx = optax.adamw(learning_rate if adam_learning_rate is None else adam_learning_rate,
                          b1=adam_b1, b2=adam_b2, eps=adam_eps, weight_decay=adam_wd,
                          mask=adam_weight_decay_mask)

    def labels(params):
        d = resolve_dims(dims, params)
        return jax.tree.map(lambda _, dd: "adamw" if dd is None else "m3", params, d)

    return optax.partition({"m3": m3_tx, "adamw": adam_tx}, labels)
