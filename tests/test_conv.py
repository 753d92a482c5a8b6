"""The causal depthwise convolution (nested_jax/ops/conv.py): values against a NumPy
transcription of the window sum, and the written-out derivative of `fused_causal_conv` (what
a GPU build takes) against autodiff of the plain sum."""

import jax
import jax.numpy as jnp
import numpy as np

from nested_jax.ops import conv


def test_fused_conv_values_and_gradients():
    B, T, C, W = 2, 12, 5, 4
    kf, kk, kd = jax.random.split(jax.random.PRNGKey(0), 3)
    full = jax.random.normal(kf, (B, T + W - 1, C))
    ker = jax.random.normal(kk, (W, C))
    dy = jax.random.normal(kd, (B, T, C))
    f, k = np.asarray(full, np.float64), np.asarray(ker, np.float64)
    want = np.zeros((B, T, C))
    for t in range(T):  # output t reads inputs t … t + W − 1 of `full` (the last is token t)
        for i in range(W):
            want[:, t] += f[:, t + i] * k[i]
    for fn in (conv.causal_conv, conv.fused_causal_conv):
        np.testing.assert_allclose(fn(full, ker), want, rtol=1e-5, atol=1e-5)
    _, vjp_ref = jax.vjp(conv._conv, full, ker)
    _, vjp = jax.vjp(conv.fused_causal_conv, full, ker)
    for got, ref in zip(vjp(dy), vjp_ref(dy)):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(vjp(dy)[0][:, : W - 1]).max()) > 0  # the carried inputs get gradients
