"""Hugging Face Llama-family checkpoints ↔ our Transformer++ (`model.variant="transformer"`).

The mapping (HF names per layer i, our leaves stacked on a leading layer axis; HF's Linear
weights are [out, in], our Dense kernels [in, out], so every matrix is transposed):

    model.embed_tokens.weight                     embed.embedding            [V, D]
    model.layers.i.input_layernorm.weight         blocks.attn_norm.scale     [L, D]
    model.layers.i.self_attn.{q,k,v}_proj.weight  blocks.attn.w{q,k,v}.kernel [L, D, H·K]
    model.layers.i.self_attn.{q,k,v}_proj.bias    blocks.attn.w{q,k,v}.bias  [L, H·K] (Qwen2)
    model.layers.i.self_attn.o_proj.weight        blocks.attn.wo.kernel      [L, H·K, D]
    model.layers.i.post_attention_layernorm.weight blocks.mlp_norm.scale     [L, D]
    model.layers.i.mlp.{gate,up,down}_proj.weight blocks.mlp.{gate,up,down}.kernel
    model.norm.weight                             final_norm.scale           [D]
    lm_head.weight                                head.kernel                [D, V] (untied)

The math is the same as transformers' LlamaForCausalLM / Qwen2ForCausalLM: pre-norm RMSNorm
(weight · x/√(mean x² + ε)), RoPE in the rotate-half convention on q and k (Llama 3.1's
"llama3" frequency scaling, `nested_jax.ops.attention.rope_frequencies`), grouped-query
softmax attention scaled by 1/√K, SwiGLU MLP down(silu(gate x) ⊙ up x), final RMSNorm and
the head (tied to the embedding when tie_word_embeddings). Anything in config.json that
would change this math and that we do not implement is refused by name (`UnsupportedModel`).
"""

from __future__ import annotations

import jax
import numpy as np

SUPPORTED = ("llama", "qwen2", "mistral")
# config.json fields that must have exactly these values (or be absent) for the math above.
REQUIRED = {
    "hidden_act": ("silu",),
    "mlp_bias": (False,),
    "pretraining_tp": (1,),
    "partial_rotary_factor": (1, 1.0),
    "use_sliding_window": (False,),
    "sliding_window": (None,),
}


class UnsupportedModel(ValueError):
    """A config.json this converter cannot express faithfully."""


def _rope(hf: dict) -> tuple[float, dict]:
    """(rope_theta, rope scaling dict or {}) from transformers 4.x (rope_theta, rope_scaling)
    or 5.x (rope_parameters) config fields."""
    params = dict(hf.get("rope_parameters") or {})
    scaling = dict(hf.get("rope_scaling") or {})
    theta = hf.get("rope_theta", params.get("rope_theta", 10000.0))
    spec = {**params, **scaling}
    kind = spec.get("rope_type", spec.get("type", "default"))
    if kind == "default":
        return float(theta), {}
    if kind != "llama3":
        raise UnsupportedModel(
            f"rope scaling type {kind!r} is not supported (only Llama 3.1's 'llama3' and none); "
            "importing it would silently change the model's positions.")
    return float(theta), {"factor": float(spec["factor"]),
                          "low_freq_factor": float(spec["low_freq_factor"]),
                          "high_freq_factor": float(spec["high_freq_factor"]),
                          "original_max_len": int(spec["original_max_position_embeddings"])}


def model_overrides(hf: dict) -> dict:
    """Our model config fields (`config.model.<key>`) for an HF config.json dict."""
    kind = hf.get("model_type")
    if kind not in SUPPORTED:
        raise UnsupportedModel(f"model_type {kind!r} is not supported; supported: "
                               f"{', '.join(SUPPORTED)} (Llama 2/3/3.x, Qwen2/2.5, TinyLlama, "
                               "SmolLM, Mistral without a sliding window).")
    for field, ok in REQUIRED.items():
        if field in hf and hf[field] not in ok:
            raise UnsupportedModel(f"config.json has {field}={hf[field]!r}; this converter "
                                   f"implements only {ok[0]!r} (the model's math would differ).")
    bias = bool(hf.get("attention_bias", False))
    if kind in ("llama", "mistral") and bias:
        raise UnsupportedModel("config.json has attention_bias=true for a Llama: biases on all "
                               "four attention projections (o included) are not implemented.")
    d, h = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    theta, scaling = _rope(hf)
    out = {
        "variant": "transformer",
        "vocab_size": int(hf["vocab_size"]),
        "d_model": d,
        "n_layers": int(hf["num_hidden_layers"]),
        "n_heads": h,
        "n_kv_heads": int(hf.get("num_key_value_heads") or h),
        "head_dim": int(hf.get("head_dim") or d // h),
        "d_ff": int(hf["intermediate_size"]),
        "norm_eps": float(hf.get("rms_norm_eps", 1e-6)),
        "rope_base": theta,
        "tie_embeddings": bool(hf.get("tie_word_embeddings", kind == "qwen2")),
        "attention_bias": kind == "qwen2" or bias,
        "attention_window": 0,
    }
    if scaling:
        out.update(rope_scaling="llama3", rope_factor=scaling["factor"],
                   rope_low_freq_factor=scaling["low_freq_factor"],
                   rope_high_freq_factor=scaling["high_freq_factor"],
                   rope_original_max_len=scaling["original_max_len"])
    return out


def hf_config(model_cfg, *, bos_id, eos_id, max_len: int) -> dict:
    """The config.json of an export: the inverse of `model_overrides` (Llama, or Qwen2 when
    the model has q/k/v biases)."""
    from nested_jax.model.blocks import ffn_width

    m = model_cfg
    kind = "qwen2" if m.attention_bias else "llama"
    arch = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[kind]
    cfg = {
        "architectures": [arch], "model_type": kind, "vocab_size": m.vocab_size,
        "hidden_size": m.d_model, "num_hidden_layers": m.n_layers,
        "num_attention_heads": m.n_heads, "num_key_value_heads": m.n_kv_heads or m.n_heads,
        "head_dim": m.head_dim or m.d_model // m.n_heads, "intermediate_size": ffn_width(m.d_model, m.d_ff),
        "rms_norm_eps": m.norm_eps, "rope_theta": m.rope_base, "hidden_act": "silu",
        "tie_word_embeddings": bool(m.tie_embeddings), "max_position_embeddings": max_len,
        "torch_dtype": "float32", "bos_token_id": bos_id, "eos_token_id": eos_id,
        "attention_dropout": 0.0, "initializer_range": m.init_std, "use_cache": True,
    }
    if kind == "llama":
        cfg.update(attention_bias=False, mlp_bias=False, pretraining_tp=1)
    else:
        cfg.update(use_sliding_window=False, sliding_window=None, max_window_layers=m.n_layers)
    if m.rope_scaling == "llama3":
        cfg["rope_scaling"] = {"rope_type": "llama3", "factor": m.rope_factor,
                               "low_freq_factor": m.rope_low_freq_factor,
                               "high_freq_factor": m.rope_high_freq_factor,
                               "original_max_position_embeddings": m.rope_original_max_len}
    return cfg


# (our leaf path, HF name template, transpose?) for per-layer tensors; {i} is the layer.
LAYER_MAP = (
    (("blocks", "attn_norm", "scale"), "model.layers.{i}.input_layernorm.weight", False),
    (("blocks", "attn", "wq", "kernel"), "model.layers.{i}.self_attn.q_proj.weight", True),
    (("blocks", "attn", "wk", "kernel"), "model.layers.{i}.self_attn.k_proj.weight", True),
    (("blocks", "attn", "wv", "kernel"), "model.layers.{i}.self_attn.v_proj.weight", True),
    (("blocks", "attn", "wq", "bias"), "model.layers.{i}.self_attn.q_proj.bias", False),
    (("blocks", "attn", "wk", "bias"), "model.layers.{i}.self_attn.k_proj.bias", False),
    (("blocks", "attn", "wv", "bias"), "model.layers.{i}.self_attn.v_proj.bias", False),
    (("blocks", "attn", "wo", "kernel"), "model.layers.{i}.self_attn.o_proj.weight", True),
    (("blocks", "mlp_norm", "scale"), "model.layers.{i}.post_attention_layernorm.weight", False),
    (("blocks", "mlp", "gate", "kernel"), "model.layers.{i}.mlp.gate_proj.weight", True),
    (("blocks", "mlp", "up", "kernel"), "model.layers.{i}.mlp.up_proj.weight", True),
    (("blocks", "mlp", "down", "kernel"), "model.layers.{i}.mlp.down_proj.weight", True),
)
GLOBAL_MAP = (
    (("embed", "embedding"), "model.embed_tokens.weight", False),
    (("final_norm", "scale"), "model.norm.weight", False),
    (("head", "kernel"), "lm_head.weight", True),
)


def leaf_sources(path: tuple, n_layers: int) -> tuple[list[str], bool]:
    """The HF tensor names that make our leaf at `path` (one per layer for block leaves, in
    layer order) and whether each is transposed."""
    for ours, name, tr in LAYER_MAP:
        if ours == path:
            return [name.format(i=i) for i in range(n_layers)], tr
    for ours, name, tr in GLOBAL_MAP:
        if ours == path:
            return [name], tr
    raise UnsupportedModel(f"our parameter {'.'.join(path)} has no Hugging Face counterpart "
                           "(only the transformer variant converts).")


def leaf_value(get, path: tuple, n_layers: int, dtype=np.float32) -> np.ndarray:
    """Our leaf at `path` built from HF tensors read one at a time by `get(name)` (cast to
    `dtype` layer by layer into one preallocated array: no second copy of the leaf)."""
    names, tr = leaf_sources(path, n_layers)
    if path[0] != "blocks":
        a = np.asarray(get(names[0]))
        return np.array(a.T if tr else a, dtype=dtype)
    out = None
    for i, n in enumerate(names):
        a = np.asarray(get(n))
        a = a.T if tr else a
        if out is None:
            out = np.empty((len(names),) + a.shape, dtype)
        out[i] = a
    return out


def hf_tensors(params: dict, n_layers: int, tied: bool):
    """Yield (HF name, array) for every leaf of our transformer params (export)."""
    flat = {tuple(k.key for k in keys): np.asarray(v)
            for keys, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    for path, value in sorted(flat.items()):
        if path == ("head", "kernel") and tied:
            continue
        names, tr = leaf_sources(path, n_layers)
        if path[0] == "blocks":
            for i, n in enumerate(names):
                yield n, np.ascontiguousarray(value[i].T if tr else value[i])
        else:
            yield names[0], np.ascontiguousarray(value.T if tr else value)
