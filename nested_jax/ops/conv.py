"""Causal depthwise 1-D convolution over time (Titans §4.4: q, k, v pass one of width 4)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from nested_jax.ops.platform import target_platform


def causal_conv(full_BxLxC, ker_WxC):
    """y[:, t] = Σ_i full[:, t + i] · ker[i] for t < L − W + 1: the window of W inputs ending
    at each output position (`full` = the W − 1 previous inputs, then the segment).

    Built for a GPU it takes `fused_causal_conv`'s derivative (fewer kernels); elsewhere the
    sum's own autodiff, whose rounding every recorded CPU loss was made with (the Titans
    memory amplifies any re-association: tests/test_variant_losses.py)."""
    if target_platform() == "gpu":
        return fused_causal_conv(full_BxLxC, ker_WxC)
    return _conv(full_BxLxC, ker_WxC)


def _conv(full, ker):
    t = full.shape[1] - ker.shape[0] + 1
    return sum(full[:, i:i + t, :] * ker[i][None, None, :] for i in range(ker.shape[0]))


@jax.custom_vjp
def fused_causal_conv(full_BxLxC, ker_WxC):
    """`causal_conv` with its derivative written out: one reduction for the kernel's gradient
    (autodiff of the sum makes one per tap, and XLA:GPU a kernel each) and one fusion for
    the input's. Same values; the backward's sums in another order."""
    return _conv(full_BxLxC, ker_WxC)


def _fwd(full, ker):
    return fused_causal_conv(full, ker), (full, ker)


def _bwd(res, dy):
    full, ker = res
    w, t = ker.shape[0], dy.shape[1]
    windows = jnp.stack([full[:, i:i + t, :] for i in range(w)])  # [W, B, T, C]
    dker = jnp.sum(windows * dy[None], axis=(1, 2))
    dfull = sum(jnp.pad(dy * ker[i][None, None, :], ((0, 0), (i, w - 1 - i), (0, 0)))
                for i in range(w))
    return dfull, dker.astype(ker.dtype)


fused_causal_conv.defvjp(_fwd, _bwd)
