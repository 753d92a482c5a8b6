"""Config checks with messages that name the problem and the fix.

    check_values(config)        every field's value: choices, ranges, chunk/segment fits
    finalize_config(config, V)  the above + vocab from the tokenizer + online constraints
    preflight(config)           what the CLI runs before training: the above, tokenizer,
                                data and devices (DataError / ConfigError, never a JAX trace);
                                each check once per launch (the CLI then passes
                                train_and_evaluate validated=True)
    check_resume_config(meta, config, tokenizer_sha256)
"""

from __future__ import annotations

import math

import difflib
import json

from nested_jax.cli import UserError


class ConfigError(UserError, ValueError):
    """An impossible or inconsistent configuration."""


class DataError(ConfigError):
    """Missing or unusable data or tokenizer."""


def choices() -> dict[str, tuple]:
    """Allowed values of the string (and enumerated) fields, by dotted name. A list that the
    module reading the field defines is taken from there, so each list exists once;
    model.variant is checked against the variant registry. The model modules are imported
    on use, as in check_values, so importing this module loads no JAX."""
    from nested_jax.model import blocks, cms, lm, online, titans
    from nested_jax.ops import attention, kernel_scan, selfmod
    from nested_jax.train import optim, parallel

    return {
        "model.dtype": tuple(lm.DTYPES),
        "model.attention_impl": attention.IMPLEMENTATIONS,
        "model.rope_scaling": attention.ROPE_SCALINGS,
        "model.cms.mlp": cms.CMS_MLPS,
        "model.titans.mode": blocks.TITANS_MODES,
        "model.titans.memory": titans.MEMORIES,
        "model.titans.depth": titans.DEPTHS,
        "model.selfmod.mem_read": selfmod.MEM_READS,
        "model.selfmod.kernel": kernel_scan.KERNELS,
        "model.titans.kernel": kernel_scan.KERNELS,
        "model.online.reset": online.RESETS,
        "model.online.remat": online.REMATS,
        "optim.name": optim.OPTIMIZERS,
        "optim.schedule": optim.SCHEDULES,
        "mesh.mode": parallel.MODES,
    }


# Numeric fields: (field, low, high or None, low allowed?, high allowed?).
RANGES = (
    ("model.d_model", 1, None, True, True), ("model.n_layers", 1, None, True, True),
    ("model.n_heads", 1, None, True, True), ("model.head_dim", 0, None, True, True),
    ("model.n_kv_heads", 0, None, True, True),
    ("model.d_ff", 0, None, True, True), ("model.attention_window", 0, None, True, True),
    ("model.rope_base", 0, None, False, True), ("model.rope_factor", 0, None, False, True),
    ("model.rope_original_max_len", 1, None, True, True),
    ("model.init_std", 0, None, False, True), ("model.norm_eps", 0, None, False, True),
    ("optim.lr", 0, None, False, True), ("optim.warmup_steps", 0, None, True, True),
    ("optim.min_lr_ratio", 0, 1, True, True), ("optim.b1", 0, 1, True, False),
    ("optim.b2", 0, 1, True, False), ("optim.eps", 0, None, False, True),
    ("optim.weight_decay", 0, None, True, True), ("optim.grad_clip", 0, None, True, True),
    ("optim.momentum", 0, 1, True, False), ("optim.adam_lr", 0, None, True, True),
    ("train.steps", 0, None, True, True), ("train.batch_size", 1, None, True, True),
    ("train.grad_accum", 1, None, True, True),
    ("train.seq_len", 1, None, True, True), ("train.log_every", 1, None, True, True),
    ("train.max_nonfinite_in_a_row", 0, None, True, True),
    ("checkpoint.every_steps", 1, None, True, True),
    ("checkpoint.max_to_keep", 1, None, True, True),
    ("eval.every_steps", 1, None, True, True), ("eval.num_batches", 1, None, True, True),
    ("eval.batch_size", 1, None, True, True), ("mesh.fsdp_min_size", 0, None, True, True),
)


def _get(config, dotted: str):
    node = config
    for part in dotted.split("."):
        if part not in node:
            return None
        node = node[part]
    return node


def _choice(dotted: str, value, choices) -> None:
    if value not in choices:
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{dotted}={value!r} is not valid{hint}; choose one of "
                          f"{', '.join(map(repr, choices))}. Fix: --config.{dotted}="
                          f"{close[0] if close else choices[0]} (or another of them).")


def _divides(what: str, length: int, length_name: str, chunk: int, chunk_name: str,
             remat_group: int = 0, remat_name: str = "") -> None:
    """The model runs min(chunk, length) tokens per chunk; it must divide the length."""
    c = min(chunk, length)
    if chunk < 1 or length % c:
        from nested_jax.ops.scan import nearest_divisor

        near = nearest_divisor(length, chunk)
        raise ConfigError(
            f"{chunk_name}={chunk} does not divide the {length}-token {length_name} that the "
            f"{what} scans in chunks. Fix: --config.{chunk_name}={near} (any divisor of {length}).")
    if remat_group > 0 and (length // c) % remat_group:
        raise ConfigError(
            f"{remat_name}={remat_group} must divide the number of chunks {length // c} "
            f"({length} tokens / {c}). Fix: pick a divisor, or 0 to turn grouped remat off.")


def _kind(v) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "str"
    if isinstance(v, (tuple, list)):
        return "tuple"
    return ""


def check_kinds(config) -> None:
    """Every value has the kind of the documented default (nested_jax/configs/default.py):
    numbers where numbers are expected (an int is a valid float), tuples of numbers where
    tuples are, and every float finite (`--config.optim.lr=nan` would only fail steps later)."""
    from nested_jax.configs.default import get_config

    want = _flatten(get_config().to_dict())
    for key, v in _flatten(config.to_dict()).items():
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{key}={v!r} is not a finite number. Fix: set --config.{key} to "
                              "a finite value.")
        if key not in want or want[key] is None:
            continue
        d = want[key]
        kd, kv = _kind(d), _kind(v)
        if not (kd == kv or (kd == "float" and kv == "int") or kd == ""):
            raise ConfigError(f"{key}={v!r} is a {kv or type(v).__name__}, but it takes a {kd} "
                              f"(default {d!r}). Fix: e.g. --config.{key}={_literal(d)}.")
        if kd == "tuple" and kv == "tuple" and d:
            inner = {_kind(x) for x in d}
            for x in v:
                kx = _kind(x)
                if not (kx in inner or ("float" in inner and kx == "int")):
                    raise ConfigError(f"{key}={v!r} holds {x!r}, but its entries are "
                                      f"{'/'.join(sorted(inner))}s (default {d!r}). Fix: e.g. "
                                      f"--config.{key}={_literal(d)}.")


def _literal(v) -> str:
    if isinstance(v, tuple):
        return "(" + ",".join(_literal(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    return repr(v) if isinstance(v, str) else str(v)


def check_values(config) -> None:
    """Reject unknown choices, out-of-range numbers and chunk sizes that cannot tile the
    sequence (or online segment) before any model code runs."""
    from nested_jax.model.variants import registry

    m = config.model
    _choice("model.variant", m.variant, tuple(registry()))
    variant = registry()[m.variant]
    check_kinds(config)
    for dotted, allowed in choices().items():
        v = _get(config, dotted)
        if v is not None:
            _choice(dotted, v, allowed)
    for dotted, lo, hi, lo_ok, hi_ok in RANGES:
        v = _get(config, dotted)
        if v is None or isinstance(v, bool):
            continue
        if (v < lo if lo_ok else v <= lo) or (hi is not None and (v > hi if hi_ok else v >= hi)):
            span = (("[" if lo_ok else "(") + f"{lo}, {hi}" + ("]" if hi_ok else ")")
                    if hi is not None else (f">= {lo}" if lo_ok else f"> {lo}"))
            raise ConfigError(f"{dotted}={v!r} is out of range (must be {span}). "
                              f"Fix: set --config.{dotted} within it.")
    t = config.train
    length, length_name = ((m.online.segment_len, "online segment (model.online.segment_len)")
                           if variant.online else (t.seq_len, "training sequence (train.seq_len)"))
    if variant.online and (length <= 0 or t.seq_len % length):
        return  # finalize_config reports the segment / sequence mismatch
    for tiling in variant.active_tilings(m):  # the chunks the variant's forward scans in
        remat = tiling.remat_field
        _divides(tiling.what, length, length_name, tiling.size(m), "model." + tiling.field,
                 _get(config, "model." + remat) if remat else 0,
                 "model." + remat if remat else "")
        if tiling.scope:  # the following chunks tile one chunk of this one
            length, length_name = (min(tiling.size(m), length),
                                   f"{tiling.what} chunk (model.{tiling.field})")
    if variant.reads("selfmod") and m.selfmod.eta_scale < 0:
        raise ConfigError(f"model.selfmod.eta_scale={m.selfmod.eta_scale} must be >= 0. Fix: "
                          "--config.model.selfmod.eta_scale=0.1 (the default).")
    if variant.reads("selfmod") and m.selfmod.kernel == "pallas":
        _check_fused_selfmod(m)
    if variant.reads("titans") and m.titans.kernel == "pallas":
        _check_fused_titans(m)


def _check_fused_selfmod(m) -> None:
    """model.selfmod.kernel="pallas" implements the paper's default switches, on power-of-two
    tiles (Triton's rule)."""
    from nested_jax.ops import selfmod_fused

    bad, odd = selfmod_fused.model_problems(m)
    if bad:
        raise ConfigError(f"model.selfmod.kernel='pallas' does not implement model.selfmod."
                          f"{', '.join(bad)}. Fix: --config.model.selfmod.kernel=xla (same "
                          "model, XLA's chunk scan) or the default switches.")
    if odd:
        raise ConfigError(f"model.selfmod.kernel='pallas' needs powers of two: {', '.join(odd)}."
                          " Fix: --config.model.selfmod.kernel=xla, or power-of-two sizes.")


def _check_fused_titans(m) -> None:
    """model.titans.kernel="pallas" runs the 2-layer MLP memory on power-of-two tiles."""
    from nested_jax.ops import titans_fused

    bad = titans_fused.model_problems(m)
    if bad:
        raise ConfigError(f"model.titans.kernel='pallas' cannot run {', '.join(bad)}. Fix: "
                          "--config.model.titans.kernel=xla (same model, XLA's chunk scan), or "
                          "a 2-layer MLP memory with power-of-two sizes and chunks of 16 or more.")


def finalize_config(config, tokenizer_vocab: int) -> None:
    """Check every value, fill derived fields and reject impossible combinations (before
    any JAX work)."""
    check_values(config)
    _fill_and_check(config, tokenizer_vocab)


def _fill_and_check(config, tokenizer_vocab: int) -> None:
    """finalize_config after check_values has passed: model.vocab_size from the tokenizer,
    then the checks that span several fields."""
    m = config.model
    if m.vocab_size == 0:
        m.vocab_size = tokenizer_vocab
    elif m.vocab_size != tokenizer_vocab:
        raise ConfigError(
            f"model.vocab_size={m.vocab_size} but tokenizer {config.data.tokenizer!r} has "
            f"{tokenizer_vocab} pieces. Fix: --config.model.vocab_size=0 (take it from the "
            "tokenizer) or choose the matching --config.data.tokenizer."
        )
    if not m.head_dim and m.d_model % m.n_heads:
        raise ConfigError(
            f"model.n_heads={m.n_heads} does not divide model.d_model={m.d_model}; "
            "Fix: pick --config.model.n_heads among the divisors of d_model."
        )
    n_kv = m.n_kv_heads
    if n_kv and m.n_heads % n_kv:
        raise ConfigError(
            f"model.n_kv_heads={n_kv} does not divide model.n_heads={m.n_heads}: grouped-query "
            "attention shares each key/value head among n_heads / n_kv_heads query heads. "
            "Fix: pick --config.model.n_kv_heads among the divisors of n_heads (0 = n_heads)."
        )
    if config.mesh.mode == "gspmd":
        # A Pallas kernel has no SPMD partitioning rule: under GSPMD XLA would run it
        # replicated on every device, so "auto" takes XLA's scans there (same math).
        for group in (m.selfmod, m.titans):
            if group.kernel == "auto":
                group.kernel = "xla"
    head_dim = m.head_dim or m.d_model // m.n_heads
    if head_dim % 2:
        raise ConfigError(f"head dim {head_dim} must be even for RoPE. Fix: change "
                          "--config.model.n_heads or --config.model.head_dim.")
    if m.rope_scaling == "llama3" and not 0 < m.rope_low_freq_factor < m.rope_high_freq_factor:
        raise ConfigError(
            f"model.rope_low_freq_factor={m.rope_low_freq_factor} and model.rope_high_freq_factor="
            f"{m.rope_high_freq_factor}: llama3 RoPE scaling needs 0 < low < high (Llama 3.1 "
            "uses 1 and 4). Fix: set them so.")
    from nested_jax.model.online import OnlineConfigError, check_online_config
    from nested_jax.model.variants import get as get_variant

    online = get_variant(m.variant).online
    if m.attention_impl == "cudnn" and online:
        raise ConfigError(
            f"model.attention_impl='cudnn' cannot train variant {m.variant!r}: its online step "
            "differentiates through the teach signal's inner vjp, and jax's cuDNN attention "
            "has no derivative of its forward rule. Fix: --config.model.attention_impl=auto "
            "(XLA attention for this variant).")

    if online:
        try:
            check_online_config(m, config.train.seq_len, training=True)
        except OnlineConfigError as e:
            raise ConfigError(str(e)) from None


# Fields that may change between a run and its resumption (length, cadence, logging, how a
# step is split over devices and microbatches, compile-time unrolling, the chunk scans'
# kernels: same math).
RESUMABLE_CHANGES = ("train.steps", "train.log_every", "checkpoint.", "eval.", "logging.",
                     "train.max_nonfinite_in_a_row", "train.compile_cache", "optim.lr", "mesh.",
                     "train.grad_accum",
                     "model.unroll_", "model.online.unroll_", "model.selfmod.kernel",
                     "model.titans.kernel")


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
    keys = sorted(set(old) | set(new))
    diffs = [k for k in keys if k in old and k in new and old[k] != new[k]
             and not k.startswith(RESUMABLE_CHANGES)]
    added = [k for k in keys if k not in old]
    gone = [k for k in keys if k not in new]
    if added or gone:  # the code gained or lost config fields since the checkpoint was written
        import sys

        print("[nested_jax] warning: resuming a checkpoint written by an older config schema: "
              + (f"new fields take their current values ({', '.join(added[:8])})" if added
                 else "") + ("; " if added and gone else "")
              + (f"fields no longer known are ignored ({', '.join(gone[:8])})" if gone else "")
              + ".", file=sys.stderr, flush=True)
    if diffs:
        shown = ", ".join(f"{k}: {old.get(k)!r} → {new.get(k)!r}" for k in diffs[:6])
        raise ConfigError(
            f"the workdir's checkpoint was written with a different config ({shown}). "
            "Fix: rerun with the original settings to resume, or pick a new --workdir."
        )


def preflight(config) -> None:
    """What the training CLI checks before it writes anything: config values, tokenizer,
    data (prepared and cached on first use) and devices. Raises ConfigError / DataError
    whose message names the fix, instead of a traceback from inside JAX or Grain. Each
    check runs once: the values before the tokenizer is loaded (a bad value is reported
    first), the rest of finalize_config after; train_and_evaluate(..., validated=True)
    then skips them."""
    check_values(config)
    from nested_jax.data import loader

    try:
        tok = loader.tokenizer_for(config.data)
    except (ValueError, OSError) as e:
        raise DataError(f"cannot load data.tokenizer={config.data.tokenizer!r}: {e}") from None
    _fill_and_check(config, tok.vocab_size)
    data_cfg = config.data.copy_and_resolve_references()
    data_cfg.num_workers = 0  # build the iterator only to check it; start no worker processes
    t = config.train
    try:
        loader.make_train_iterator(data_cfg, seq_len=t.seq_len, batch_size=t.batch_size,
                                   seed=config.seed)
        loader.make_eval_batches(data_cfg, seq_len=t.seq_len, batch_size=config.eval.batch_size,
                                 num_batches=config.eval.num_batches)
    except (ValueError, OSError, KeyError) as e:
        raise DataError(f"data.dataset={config.data.dataset!r} cannot feed training: "
                        f"{type(e).__name__ + ': ' if isinstance(e, KeyError) else ''}{e}") from None
    from nested_jax.train import mesh as mesh_lib

    try:
        mesh = mesh_lib.make_mesh(config.mesh)
    except ValueError as e:
        raise ConfigError(f"{e} Fix: --config.mesh.data / --config.mesh.fsdp.") from None
    if t.batch_size % mesh.size:
        raise ConfigError(
            f"train.batch_size={t.batch_size} must be divisible by the number of devices "
            f"({mesh.size}). Fix: change --config.train.batch_size to a multiple of it.")
    if (t.batch_size // mesh.size) % t.grad_accum:
        raise ConfigError(
            f"train.grad_accum={t.grad_accum} must divide the {t.batch_size // mesh.size} rows "
            f"each of the {mesh.size} devices gets (train.batch_size={t.batch_size}). Fix: "
            "change --config.train.grad_accum or --config.train.batch_size.")
