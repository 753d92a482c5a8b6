"""The fused head: CE + its gradient at the head input, with a cheap custom backward."""

import jax
import jax.numpy as jnp
import numpy as np

from nested_jax.ops.losses import ce_and_hidden_grad, token_cross_entropy


def test_ce_and_hidden_grad_matches_autodiff():
    kh, kw, kt, kc = jax.random.split(jax.random.key(0), 4)
    h = jax.random.normal(kh, (2, 5, 8))
    w = jax.random.normal(kw, (11, 8)) * 0.3
    tgt = jax.random.randint(kt, (2, 5), 0, 11)
    ref_ce = token_cross_entropy(jnp.einsum("bsd,vd->bsv", h, w), tgt)
    ce, g = ce_and_hidden_grad(h, w, tgt)
    np.testing.assert_allclose(ce, ref_ce, rtol=1e-5, atol=1e-6)
    g_ref = jax.grad(lambda h: token_cross_entropy(jnp.einsum("bsd,vd->bsv", h, w), tgt).sum())(h)
    np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-6)
    # Outer gradients with a non-uniform cotangent (per-token weights) wrt h and w.
    c = jax.random.uniform(kc, (2, 5))
    f_ref = lambda h, w: (token_cross_entropy(jnp.einsum("bsd,vd->bsv", h, w), tgt) * c).sum()
    f = lambda h, w: (ce_and_hidden_grad(h, w, tgt)[0] * c).sum()
    for a, b in zip(jax.grad(f, (0, 1))(h, w), jax.grad(f_ref, (0, 1))(h, w)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
