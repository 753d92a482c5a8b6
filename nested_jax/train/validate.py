"""Config checks with messages that name the problem and the fix."""

from __future__ import annotations

import json


class ConfigError(ValueError):
    """An impossible or inconsistent configuration."""


def finalize_config(config, tokenizer_vocab: int) -> None:
    """Fill derived fields and reject impossible combinations (before any JAX work)."""
    m = config.model
    if m.vocab_size == 0:
        m.vocab_size = tokenizer_vocab
    elif m.vocab_size != tokenizer_vocab:
        raise ConfigError(
            f"model.vocab_size={m.vocab_size} but tokenizer {config.data.tokenizer!r} has "
            f"{tokenizer_vocab} pieces. Fix: --config.model.vocab_size=0 (take it from the "
            "tokenizer) or choose the matching --config.data.tokenizer."
        )
    if m.d_model % m.n_heads:
        raise ConfigError(
            f"model.n_heads={m.n_heads} does not divide model.d_model={m.d_model}; "
            "pick n_heads among the divisors of d_model."
        )
    head_dim = m.head_dim or m.d_model // m.n_heads
    if head_dim % 2:
        raise ConfigError(f"head dim {head_dim} must be even for RoPE; change model.n_heads or model.head_dim.")
    from nested_jax.model.blocks import BLOCKS, ONLINE_VARIANTS
    from nested_jax.model.online import OnlineConfigError, check_online_config

    if m.variant not in BLOCKS:
        raise ConfigError(f"model.variant={m.variant!r} is unknown; choose one of {sorted(BLOCKS)}.")
    if m.variant in ONLINE_VARIANTS:
        try:
            check_online_config(m, config.train.seq_len)
        except OnlineConfigError as e:
            raise ConfigError(str(e)) from None
    t = config.train
    for name in ("steps", "batch_size", "seq_len", "log_every"):
        if getattr(t, name) <= 0 and not (name == "steps" and t.steps == 0):
            raise ConfigError(f"train.{name}={getattr(t, name)} must be positive.")
    for name, v in (("checkpoint.every_steps", config.checkpoint.every_steps),
                    ("eval.every_steps", config.eval.every_steps)):
        if v <= 0:
            raise ConfigError(f"{name}={v} must be positive.")


# Fields that may change between a run and its resumption (length, cadence, logging).
RESUMABLE_CHANGES = ("train.steps", "train.log_every", "checkpoint.", "eval.", "logging.")


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def check_resume_config(meta: dict, config, tokenizer_sha256: str) -> None:
    """Refuse to resume a checkpoint written by another tokenizer or model/optim config."""
    if meta.get("tokenizer_sha256") and meta["tokenizer_sha256"] != tokenizer_sha256:
        raise ConfigError(
            "the checkpoint in this workdir was trained with a different tokenizer "
            f"(sha256 {meta['tokenizer_sha256'][:12]}…, now {tokenizer_sha256[:12]}…). "
            "Fix: use the original --config.data.tokenizer or a new --workdir."
        )
    old = _flatten(json.loads(meta["config"]))
    new = _flatten(json.loads(config.to_json_best_effort()))
    diffs = [k for k in sorted(set(old) | set(new))
             if old.get(k) != new.get(k) and not k.startswith(RESUMABLE_CHANGES)
             and k != "train.steps"]
    if diffs:
        shown = ", ".join(f"{k}: {old.get(k)!r} → {new.get(k)!r}" for k in diffs[:6])
        raise ConfigError(
            f"the workdir's checkpoint was written with a different config ({shown}). "
            "Fix: rerun with the original settings to resume, or pick a new --workdir."
        )
