"""Rotary position embeddings and causal (optionally sliding-window) attention.

`dot_attention` is the attention every block runs: `jax.nn.dot_product_attention`, which is
cuDNN flash attention on a GPU where cuDNN applies and XLA elsewhere, with grouped-query
attention (GQA, Ainslie et al. 2023, arXiv 2305.13245: K/V with fewer heads than Q) and
sliding windows, for the attention of the transformer, titans and hope_attention/hybrid
blocks (DESIGN.md §2.5). `causal_attention` is the independent float32 reference (einsum,
boolean mask, softmax) that tests compare it with (tests/test_attention_gpu.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("auto", "xla", "cudnn")


ROPE_SCALINGS = ("none", "llama3")


def rope_frequencies(head_dim: int, base: float = 10000.0, scaling: str = "none",
                     factor: float = 8.0, low_freq_factor: float = 1.0,
                     high_freq_factor: float = 4.0, original_max_len: int = 8192) -> jax.Array:
    """Inverse frequencies [K/2] of RoPE (Su et al. 2021, arXiv 2104.09864): ω_i = base^(-2i/K).

    scaling="llama3" is the context-extension rule of Llama 3.1 (Llama 3 Herd paper,
    arXiv 2407.21783, §3.3.2 / its released rope-scaling code): with L = original_max_len,
    wavelengths λ_i = 2π/ω_i longer than L/low_freq_factor are slowed by `factor`
    (ω_i / factor), those shorter than L/high_freq_factor are kept, and in between
    ω_i ← (1 − s)·ω_i/factor + s·ω_i with s = (L/λ_i − low_freq_factor) /
    (high_freq_factor − low_freq_factor), a linear blend in L/λ_i."""
    if scaling not in ROPE_SCALINGS:
        raise ValueError(f"rope scaling {scaling!r}; choose one of {ROPE_SCALINGS}.")
    inv_freq_K2 = 1.0 / (base ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    if scaling == "none":
        return inv_freq_K2
    wavelen_K2 = 2 * jnp.pi / inv_freq_K2
    low_wavelen, high_wavelen = original_max_len / low_freq_factor, original_max_len / high_freq_factor
    s_K2 = (original_max_len / wavelen_K2 - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended_K2 = (1 - s_K2) * inv_freq_K2 / factor + s_K2 * inv_freq_K2
    out_K2 = jnp.where(wavelen_K2 > low_wavelen, inv_freq_K2 / factor, inv_freq_K2)
    middle_K2 = (wavelen_K2 >= high_wavelen) & (wavelen_K2 <= low_wavelen)
    return jnp.where(middle_K2, blended_K2, out_K2)


def rope(x_BxTxHxK: jax.Array, pos_T: jax.Array, base: float = 10000.0,
         inv_freq_K2: jax.Array | None = None) -> jax.Array:
    """Rotary embedding (rotate-half convention) at absolute positions `pos_T`, with the
    frequencies `inv_freq_K2` (default: `rope_frequencies(K, base)`)."""
    k = x_BxTxHxK.shape[-1]
    if k % 2:
        raise ValueError(f"RoPE needs an even head dim, got {k}.")
    if inv_freq_K2 is None:
        inv_freq_K2 = rope_frequencies(k, base)
    ang_TxK2 = pos_T.astype(jnp.float32)[:, None] * inv_freq_K2[None, :]
    cos = jnp.cos(ang_TxK2)[None, :, None, :]
    sin = jnp.sin(ang_TxK2)[None, :, None, :]
    x = x_BxTxHxK.astype(jnp.float32)
    x1, x2 = x[..., : k // 2], x[..., k // 2 :]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BxTxHxK.dtype)


def attention_mask(q_pos_T: jax.Array, k_pos_S: jax.Array, window: int = 0,
                   k_valid_S: jax.Array | None = None) -> jax.Array:
    """Boolean [T, S] mask: key s visible to query t iff causal (and inside the window)."""
    q = q_pos_T[:, None]
    k = k_pos_S[None, :]
    mask = k <= q
    if window > 0:
        mask = mask & (q - k < window)
    if k_valid_S is not None:
        mask = mask & k_valid_S[None, :]
    return mask


@functools.cache
def cudnn_version() -> int:
    """Version of the cuDNN jax can load (e.g. 91600), or 0 where there is none: no CUDA
    plugin, or a plugin without the cuDNN library (a CPU-only install)."""
    try:  # jax has no public version query; this is the check its cuDNN path runs
        from jax._src.cudnn.fused_attention_stablehlo import check_cudnn_version

        return int(check_cudnn_version())
    except Exception:  # RuntimeError (no plugin), SystemError (plugin, no library), ...
        return 0


def cudnn_applies(dtype, head_dim: int, t: int, s: int, masked: bool) -> bool:
    """Whether cuDNN flash attention takes this call (jax's own checks, `check_layout` and
    `check_is_flash_attention` in jax/_src/cudnn/fused_attention_stablehlo.py): bf16/fp16
    only (not float32), head dim a multiple of 8 and ≤ 128 (256 on Hopper; 128 keeps it
    valid everywhere), and with a mask (a bias to cuDNN) even query and key lengths."""
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return False
    if head_dim % 8 or head_dim > 128:
        return False
    return not (masked and (t % 2 or s % 2))


def resolve_implementation(implementation: str, dtype, head_dim: int, t: int, s: int,
                           masked: bool) -> str:
    """"auto" → "cudnn" when jax runs on a GPU with cuDNN and cuDNN applies, else "xla"
    (always on a CPU). "xla" / "cudnn" are taken as given ("cudnn" raises where it cannot
    run: use it to compile for a GPU ahead of time, benchmarks.gpu_aot)."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation {implementation!r}; choose one of "
                         f"{IMPLEMENTATIONS}.")
    if implementation != "auto":
        return implementation
    if (jax.default_backend() == "gpu" and cudnn_version() > 0
            and cudnn_applies(dtype, head_dim, t, s, masked)):
        return "cudnn"
    return "xla"


def dot_attention(
    q_BxTxHxK: jax.Array,
    k_BxSxGxK: jax.Array,
    v_BxSxGxK: jax.Array,
    *,
    q_pos_T: jax.Array | None = None,
    k_pos_S: jax.Array | None = None,
    window: int = 0,
    n_prefix: int = 0,
    k_valid_S: jax.Array | None = None,
    kv_len: jax.Array | int | None = None,
    implementation: str = "auto",
) -> jax.Array:
    """Softmax attention through `jax.nn.dot_product_attention`; returns [B, T, H, K].

    Query head h reads key/value head h // (H / G) (GQA; G = H is multi-head attention).
    Key s is visible to query t iff it is causal and inside the window (`attention_mask`):
      k_pos_S None   the keys (after the prefix) are the queries' own tokens, in order
                     (S = n_prefix + T): causal by index. Without a prefix or padding this
                     is `is_causal` / `local_window_size`, which cuDNN runs without a mask
                     and skips the blocks above the diagonal (outside the window).
      k_pos_S given  key s sits at absolute position k_pos_S[s], query t at q_pos_T[t] (a
                     key/value buffer): a boolean [T, S] mask (to cuDNN, a bias).
    n_prefix: the first n_prefix keys are seen by every query (persistent tokens, Titans
    §3.3). k_valid_S: keys (after the prefix) that exist; a query with no visible key gets
    zeros (jax would average every value). kv_len: keys at index ≥ n_prefix + kv_len are
    unfilled buffer slots; cuDNN gets it as the key length and stops there (XLA masks them
    by causality anyway, at full cost). Softmax in float32 whatever the input dtype.
    """
    b, t, h, kd = q_BxTxHxK.shape
    s, g = k_BxSxGxK.shape[1], k_BxSxGxK.shape[2]
    if h % g:
        raise ValueError(f"{h} query heads cannot share {g} key/value heads (GQA needs the "
                         "key/value heads to divide the query heads).")
    plain = k_pos_S is None and n_prefix == 0 and k_valid_S is None
    mask_TxS = None
    if k_pos_S is None:
        if s != n_prefix + t:
            raise ValueError(f"self-attention over {t} queries needs {n_prefix} + {t} keys, "
                             f"got {s}; pass k_pos_S for a key/value buffer.")
        if not plain:
            idx_T = jnp.arange(t, dtype=jnp.int32)
            mask_TxS = attention_mask(idx_T, idx_T, window, k_valid_S)
    else:
        mask_TxS = attention_mask(q_pos_T, k_pos_S, window, k_valid_S)
    if mask_TxS is not None and n_prefix:
        mask_TxS = jnp.concatenate([jnp.ones((t, n_prefix), bool), mask_TxS], axis=1)
    impl = resolve_implementation(implementation, q_BxTxHxK.dtype, kd, t, s,
                                  masked=mask_TxS is not None)
    if plain:
        kwargs = {"is_causal": True, "local_window_size": (window - 1, 0) if window > 0 else None}
    else:
        kwargs = {"mask": mask_TxS[None, None]}
        if impl == "cudnn" and kv_len is not None:
            kwargs["key_value_seq_lengths"] = jnp.full((b,), n_prefix + kv_len, jnp.int32)
    out = jax.nn.dot_product_attention(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, implementation=impl,
                                       **kwargs)
    if k_valid_S is not None:  # only padding can leave a query without a visible key
        out = out * mask_TxS.any(-1)[None, :, None, None].astype(out.dtype)
    return out


def causal_attention(
    q_BxTxHxK: jax.Array,
    k_BxSxHxK: jax.Array,
    v_BxSxHxK: jax.Array,
    mask_TxS: jax.Array,
) -> jax.Array:
    """Reference softmax attention in float32 with a boolean [T, S] mask (multi-head: as
    many key/value heads as query heads); returns [B, T, H, K]. Tests check `dot_attention`
    against it."""
    scale = q_BxTxHxK.shape[-1] ** -0.5
    logits_BxHxTxS = jnp.einsum(
        "bthk,bshk->bhts", q_BxTxHxK, k_BxSxHxK, preferred_element_type=jnp.float32
    ) * scale
    logits_BxHxTxS = jnp.where(mask_TxS[None, None], logits_BxHxTxS, -1e30)
    probs = jax.nn.softmax(logits_BxHxTxS, axis=-1)
    # A query with no visible key (only possible with padding) gets zeros, not NaN.
    probs = jnp.where(mask_TxS[None, None].any(-1, keepdims=True), probs, 0.0)
    out = jnp.einsum("bhts,bshk->bthk", probs.astype(v_BxSxHxK.dtype), v_BxSxHxK)
    return out
