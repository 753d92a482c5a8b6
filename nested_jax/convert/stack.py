"""Ad-hoc level stacking (NL §7.3; docs/pretrained.md): a transformer workdir → HOPE-Attention
whose CMS levels are initialised from the transformer's MLPs.

Per layer, the transformer block x + Attn(n₁(x)) → x + MLP(n₂(x)) becomes the HOPE-Attention
block x + Attn(n₁(x)) → CMS chain, with K SwiGLU levels (`model.cms.mlp = "swiglu"`), each
x ↦ x + (silu(n(x)W1) ⊙ n(x)W3)W2, applied fast → slow. The mapping:
  * attention, its norm, the embedding, the final norm and the head: copied;
  * every level: norm scale ← n₂'s scale, W1 ← gate, W3 ← up (the pre-trained MLP's input
    side, so every level starts from the pre-trained features);
  * W2 ← down for ONE level (`mlp_level`, default the slowest, applied last), W2 = 0 for
    the others: their output is 0, so they are the identity and the chain computes exactly
    x + MLP(n₂(x)), the source block.
The stacked model's meta weights therefore equal the source's function. With every level's
inner learning rate 0 the fast deltas stay 0 and the model IS the frozen pre-trained one
(the paper's defining property of the construction); with a nonzero rate the levels learn
in context from the teach signal, the zero-W2 levels first through W2 (its gradient
(silu(n(x)W1) ⊙ n(x)W3)ᵀδ is the pre-trained features times the teach signal).
"""

from __future__ import annotations

import datetime
import math
import os

import jax
import numpy as np

import nested_jax
from nested_jax.convert.workdir import ConvertError, fresh_output, preset_text, write_workdir
from nested_jax.model.variants import registry

# Variants a transformer's MLPs stack into (export-hf writes them back as Llama layers).
STACKABLE = tuple(n for n, v in registry().items() if v.hf_export == "stacked")
DEFAULT_NAMES = ("fast", "mid", "slow", "ultra")


def level_names(k: int) -> tuple[str, ...]:
    return DEFAULT_NAMES[:k] if k <= len(DEFAULT_NAMES) else tuple(f"level{i}" for i in range(k))


def stack_params(src: dict, names: tuple, mlp_level: str) -> dict:
    """The HOPE-Attention params from transformer params `src` (module docstring)."""
    b = src["blocks"]
    levels = {}
    for n in names:
        down = np.asarray(b["mlp"]["down"]["kernel"])
        levels[n] = {"scale": np.asarray(b["mlp_norm"]["scale"]),
                     "w1": np.asarray(b["mlp"]["gate"]["kernel"]),
                     "w3": np.asarray(b["mlp"]["up"]["kernel"]),
                     "w2": down if n == mlp_level else np.zeros_like(down)}
    blocks = {"attn": b["attn"], "attn_norm": b["attn_norm"], "cms": {"levels": levels}}
    out = {k: v for k, v in src.items() if k != "blocks"}
    out["blocks"] = blocks
    return jax.tree.map(lambda a: jax.device_put(np.asarray(a, np.float32)), out)


def as_transformer(params: dict, names: tuple) -> tuple[dict, int, str]:
    """A HOPE-Attention model's meta weights (the function it computes at inner learning rate
    0) as transformer params: (params, layers per block, how). The inverse of `stack_params`.

    A block x + Attn(n₁(x)) → x + MLP_fast(n(x)) → … → x + MLP_slow(n(x)) is a chain of
    residual SwiGLU MLPs after one attention. When at most one level has W2 ≠ 0 the others are
    identities and the block is one transformer layer with that level's MLP ("collapsed":
    export(stack(x)) is x). Otherwise each level becomes a layer of its own: the first keeps
    the block's attention, the others get attention with every projection 0 (it adds exactly
    0 to the residual stream), so the exported L·K-layer transformer computes the same
    function ("expanded")."""
    b = params["blocks"]
    levels = b["cms"]["levels"]
    live = [n for n in names if np.any(np.asarray(levels[n]["w2"]) != 0)]

    def mlp(n):
        lv = levels[n]
        return {"mlp_norm": {"scale": np.asarray(lv["scale"])},
                "mlp": {"gate": {"kernel": np.asarray(lv["w1"])},
                        "up": {"kernel": np.asarray(lv["w3"])},
                        "down": {"kernel": np.asarray(lv["w2"])}}}

    attn = {"attn": jax.tree.map(np.asarray, b["attn"]),
            "attn_norm": {"scale": np.asarray(b["attn_norm"]["scale"])}}
    out = {k: v for k, v in params.items() if k != "blocks"}
    if len(live) <= 1:
        out["blocks"] = {**attn, **mlp(live[0] if live else names[-1])}
        return out, 1, "collapsed"
    zero_attn = jax.tree.map(np.zeros_like, attn)
    zero_attn["attn_norm"]["scale"] = np.ones_like(attn["attn_norm"]["scale"])
    layers = [{**(attn if k == 0 else zero_attn), **mlp(n)} for k, n in enumerate(names)]
    # [K][L, ...] → [L·K, ...] in the order block 0 level 0, block 0 level 1, …
    out["blocks"] = jax.tree.map(
        lambda *xs: np.stack(xs, 1).reshape((-1,) + xs[0].shape[1:]), *layers)
    return out, len(names), "expanded"


def stack(checkpoint: str, output: str | os.PathLike, *, variant: str = "hope_attention",
          periods: tuple[int, ...] = (128, 512), lr: float = 1e-2, step: int | None = None,
          mlp_level: str | None = None, segment_len: int = 0, seq_len: int = 0) -> dict:
    """Convert the transformer at `checkpoint` into `variant` (module docstring) in the new
    workdir `output` (training length `seq_len`, default the source's); returns a summary."""
    from nested_jax.eval.errors import EvalError
    from nested_jax.eval.restore import load
    from nested_jax.model.blocks import ffn_width
    from nested_jax.model.lm import abstract_model
    from nested_jax.train.validate import ConfigError, check_values

    out = fresh_output(output)
    if variant not in STACKABLE:
        raise ConvertError(f"--variant {variant!r} cannot be stacked", fix=f"use one of {STACKABLE}.")
    if not periods or any(p <= 0 for p in periods):
        raise ConvertError(f"--periods {periods}: give one positive period (tokens) per level")
    try:
        src = load(checkpoint, step)
    except EvalError as e:
        raise ConvertError(str(e)) from None
    if src.cfg.model.variant != "transformer":
        raise ConvertError(f"{checkpoint} holds a {src.cfg.model.variant!r} model; stacking "
                           "turns a transformer's MLPs into CMS levels",
                           fix="pass a transformer workdir (trained here or from import-hf).")
    names = level_names(len(periods))
    mlp_level = mlp_level or names[-1]
    if mlp_level not in names:
        raise ConvertError(f"--mlp-level {mlp_level!r} is not a level", fix=f"one of {names}.")
    cfg = src.cfg
    cfg.unlock()
    m = cfg.model
    seg = segment_len or math.gcd(*periods)
    settings = {
        "model.variant": variant, "model.cms.names": names, "model.cms.periods": tuple(periods),
        "model.cms.optimizers": ("gd",) * len(names), "model.cms.lrs": (float(lr),) * len(names),
        "model.cms.mlp": "swiglu", "model.cms.hidden": ffn_width(m.d_model, m.d_ff),
        "model.online.segment_len": seg,
    }
    for k, v in settings.items():
        node = cfg
        *groups, key = k.split(".")
        for g in groups:
            node = node[g]
        node[key] = v
    cfg.train.init_from = str(out)
    if seq_len:  # the training length the periods are checked against (every level read)
        cfg.train.seq_len = seq_len
    try:
        check_values(cfg)
        from nested_jax.model.online import OnlineConfigError, check_online_config

        check_online_config(cfg.model, cfg.train.seq_len, training=True)
    except (ConfigError, OnlineConfigError) as e:
        raise ConvertError(f"the stacked configuration is not valid: {e}") from None

    params = stack_params(jax.tree.map(np.asarray, src.params), names, mlp_level)
    want = abstract_model(cfg.model).params()
    got_shapes = {jax.tree_util.keystr(p): a.shape
                  for p, a in jax.tree_util.tree_flatten_with_path(params)[0]}
    want_shapes = {jax.tree_util.keystr(p): tuple(a.shape)
                   for p, a in jax.tree_util.tree_flatten_with_path(want)[0]}
    bad = sorted(set(got_shapes.items()) ^ set(want_shapes.items()))
    if bad:
        raise ConvertError(f"internal: stacked params do not match the {variant} model ({bad[:3]})")

    src_meta = src.meta
    provenance = {
        "kind": "stack", "source": src.directory, "source_step": src.step,
        "source_variant": "transformer", "source_provenance": src_meta.get("provenance"),
        "tokenizer_sha256": src.tokenizer.sha256, "variant": variant, "levels": list(names),
        "periods": list(periods), "inner_lr": lr, "mlp_level": mlp_level,
        "mapping": "each level: scale <- mlp_norm.scale, w1 <- mlp.gate, w3 <- mlp.up; "
                   f"w2 <- mlp.down for {mlp_level!r}, 0 for the others (identity); attention, "
                   "embedding, norms and head copied (NL §7.3 ad-hoc level stacking)",
        "made": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "package_version": nested_jax.__version__,
    }
    settings.update({k: v for k, v in _model_settings(m).items() if k not in settings})
    settings.update({"data.tokenizer": cfg.data.tokenizer, "train.seq_len": cfg.train.seq_len})
    write_workdir(out, params=params, config=cfg, tokenizer_sha256=src.tokenizer.sha256,
                  provenance=provenance,
                  preset=preset_text(f"{src.directory} step {src.step}", "stack", settings,
                                     str(out)))
    return {"output": str(out), "variant": variant, "levels": list(names),
            "periods": list(periods), "mlp_level": mlp_level, "segment_len": seg,
            "source": src.directory, "source_step": src.step}


def _model_settings(m) -> dict:
    """The source's model fields that shape the network (so config.py rebuilds it)."""
    keys = ("vocab_size", "d_model", "n_layers", "n_heads", "head_dim", "n_kv_heads", "d_ff",
            "rope_base", "rope_scaling", "rope_factor", "rope_low_freq_factor",
            "rope_high_freq_factor", "rope_original_max_len", "attention_bias",
            "tie_embeddings", "norm_eps", "attention_window")
    return {f"model.{k}": m[k] for k in keys}
