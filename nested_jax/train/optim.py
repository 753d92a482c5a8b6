"""Outer optimizers and learning-rate schedules (Optax)."""

from __future__ import annotations

import jax
import ml_collections
import optax

OPTIMIZERS = ("adamw", "muon", "m3")  # optim.name
SCHEDULES = ("cosine", "constant")  # optim.schedule


def schedule(o, total_steps: int) -> optax.Schedule:
    warmup = max(1, min(o.warmup_steps, total_steps))  # optax needs ≥ 1 warm-up step
    if o.schedule == "constant":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, o.lr, warmup), optax.constant_schedule(o.lr)],
            [warmup],
        )
    if o.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=o.lr, warmup_steps=warmup,
            decay_steps=max(total_steps, warmup + 1), end_value=o.lr * o.min_lr_ratio,
        )
    raise ValueError(f"optim.schedule={o.schedule!r}; choose 'cosine' or 'constant'.")


# Leaves that never decay: norm scales and biases, which the layer scan stacks into 2-D
# [layers, d] arrays, so ndim alone cannot tell them from matrices.
NO_DECAY_NAMES = frozenset({"scale", "bias", "b", "gate_bias", "ln_scale", "ln_bias"})


def decay_mask(params):
    """Weight decay only on matrices (ndim >= 2), not norms, biases or scalars.

    The embedding is 2-D and decays too, as in most LM recipes.
    """
    def decays(path, p) -> bool:
        return p.ndim >= 2 and _path_names(path)[-1] not in NO_DECAY_NAMES

    return jax.tree_util.tree_map_with_path(decays, params)


def _path_names(path) -> list[str]:
    return [str(getattr(k, "key", getattr(k, "idx", k))) for k in path]


def muon_eligible(path, leaf) -> bool:
    """Muon only for linear maps: Dense kernels and CMS level matrices. Embeddings, norms,
    biases, gate biases, conv kernels and memories' initial states go to AdamW (the
    reproduction crashed when Muon met conv weights)."""
    names = _path_names(path)
    if leaf.ndim < 2 or any("conv" in n for n in names) or "embed" in names:
        return False
    return names[-1] == "kernel" or ("cms" in names and names[-1] in ("w1", "w2"))


def muon_dims(params):
    """Per-leaf MuonDimensionNumbers (last two axes = the matrix; leading axes, e.g. the
    stacked layer axis, are batch axes), None for AdamW leaves."""
    from optax.contrib import MuonDimensionNumbers

    return jax.tree_util.tree_map_with_path(
        lambda p, x: MuonDimensionNumbers(x.ndim - 2, x.ndim - 1) if muon_eligible(p, x) else None,
        params)


def param_path(path) -> str:
    """A parameter's dotted path ("blocks.attn.wq.kernel") from a jax key path."""
    return ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def frozen_labels(params, patterns) -> dict:
    """"frozen" / "trained" per leaf: frozen when its dotted path matches a pattern (fnmatch)."""
    import fnmatch

    return jax.tree_util.tree_map_with_path(
        lambda p, _: "frozen" if any(fnmatch.fnmatchcase(param_path(p), pat) for pat in patterns)
        else "trained", params)


def check_freeze(params, patterns) -> None:
    """Every model.freeze pattern must match at least one parameter (a typo would silently
    train everything)."""
    import fnmatch

    paths = [param_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    for pat in patterns:
        if not any(fnmatch.fnmatchcase(x, pat) for x in paths):
            tops = sorted({".".join(x.split(".")[:2]) for x in paths})
            raise ValueError(f"model.freeze pattern {pat!r} matches no parameter; parameter "
                             f"paths start with {', '.join(tops)} (e.g. 'blocks.attn.*').")


def build_optimizer(o, total_steps: int, freeze=()) -> optax.GradientTransformation:
    """The outer optimizer of config `o` (optim.*); `freeze`: patterns of parameters it leaves
    bitwise unchanged (model.freeze: no update, no weight decay; clipping sees the rest)."""
    tx = _build_optimizer(o, total_steps)
    if freeze:
        patterns = tuple(freeze)
        tx = optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()},
                                   lambda params: frozen_labels(params, patterns))
    return tx


def _build_optimizer(o, total_steps: int) -> optax.GradientTransformation:
    lr = schedule(o, total_steps)
    if o.name == "adamw":
        tx = optax.adamw(lr, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                         mask=decay_mask)
    elif o.name == "muon":
        from optax.contrib import muon

        adam_lr = lr
        if o.adam_lr > 0:  # its own schedule: the same shape at the AdamW peak lr
            adam_o = ml_collections.ConfigDict(o.to_dict())
            adam_o.lr = o.adam_lr
            adam_lr = schedule(adam_o, total_steps)
        tx = muon(lr, beta=o.momentum, weight_decay=o.weight_decay, adam_b1=o.b1, adam_b2=o.b2,
                  adam_weight_decay=o.weight_decay, adam_learning_rate=adam_lr,
                  muon_weight_dimension_numbers=muon_dims)
    elif o.name == "m3":
        from nested_jax.train.m3 import m3

        # M3 on the Muon-eligible matrices, AdamW (decay_mask) on the rest, one lr.
        tx = m3(lr, beta1=o.b1, beta2=o.b2, beta3=o.m3_beta3, alpha=o.m3_alpha,
                ns_steps=o.m3_ns_steps, slow_chunk=o.m3_slow_chunk, eps=o.eps,
                weight_decay=o.weight_decay, dims=muon_dims, adam_b1=o.b1, adam_b2=o.b2,
                adam_eps=o.eps, adam_weight_decay_mask=decay_mask)
    else:
        raise ValueError(f"optim.name={o.name!r} is unknown; choose 'adamw', 'muon' or 'm3'.")
    if o.grad_clip and o.grad_clip > 0:
        tx = optax.chain(optax.clip_by_global_norm(o.grad_clip), tx)
    return tx
