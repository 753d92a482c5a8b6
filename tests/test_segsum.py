"""The one segment sum (nested_jax/ops/segsum.py) against a NumPy loop of its definition."""

import jax
import numpy as np

from nested_jax.ops.segsum import segsum


def test_segsum_is_the_sum_between_positions_and_keeps_minus_inf():
    x = np.random.RandomState(0).randn(3, 6).astype(np.float32)
    x[1, 2] = -np.inf  # a gate of exactly 0
    got = np.asarray(segsum(x))
    want = np.full((3, 6, 6), -np.inf, np.float32)
    for n in range(3):
        for t in range(6):
            for i in range(t + 1):
                want[n, t, i] = x[n, i + 1:t + 1].sum() if t > i else 0.0
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert not np.isnan(got).any()
    # finite gradients through exp(segsum) even with a -inf entry
    g = jax.grad(lambda v: jax.numpy.exp(segsum(v)).sum())(np.where(np.isinf(x), -30.0, x))
    assert np.isfinite(np.asarray(g)).all()
