"""Transformer++: causality, initial loss ≈ ln V, a train step lowers the loss."""


import jax
import jax.numpy as jnp
import numpy as np
import ml_collections
import pytest

from nested_jax.model.lm import init_params
from nested_jax.model.loss import lm_loss
from nested_jax.ops.losses import token_cross_entropy
from tests.helpers import losses_on_fixed_batch, tiny_model_config


@pytest.mark.parametrize("window,remat,tied", [(0, False, True), (3, True, False)])
def test_causality_via_gradients(window, remat, tied):
    cfg = tiny_model_config(attention_window=window, remat=remat, tie_embeddings=tied)
    fn, params = init_params(cfg, seed=0)
    t = 12
    x = jax.random.normal(jax.random.key(1), (1, t, cfg.d_model))

    def out_at(x_emb, pos):
        model = fn.bind(params)
        return jnp.take(model.logits(model.run_blocks(x_emb)[0])[0], pos, axis=0).sum()

    grad_at = jax.jit(jax.grad(out_at))  # pos is traced: one compile for all positions
    for pos in (0, 5, t - 2):
        g = grad_at(x, pos)[0]  # [T, D]
        future = np.abs(np.asarray(g[pos + 1:])).max() if pos + 1 < t else 0.0
        present = np.abs(np.asarray(g[: pos + 1])).max()
        assert future == 0.0, f"output at {pos} depends on future inputs"
        assert present > 0.0
        reach = (window - 1) * cfg.n_layers  # receptive field of stacked windows
        if window and pos - reach > 0:
            assert np.abs(np.asarray(g[: pos - reach])).max() == 0.0, "window leaks"


def test_initial_loss_close_to_ln_vocab():
    cfg = tiny_model_config(vocab_size=512, d_model=64)
    fn, params = init_params(cfg, seed=0)
    tokens = jax.random.randint(jax.random.key(0), (4, 33), 0, cfg.vocab_size)
    loss = float(lm_loss(fn, params, tokens))
    assert abs(loss - np.log(cfg.vocab_size)) < 0.05 * np.log(cfg.vocab_size)


def test_train_step_lowers_loss_on_fixed_batch():
    cfg = tiny_model_config()
    o = ml_collections.ConfigDict(dict(name="adamw", lr=3e-3, warmup_steps=1, schedule="constant",
                                       min_lr_ratio=0.1, b1=0.9, b2=0.95, eps=1e-8,
                                       weight_decay=0.0, grad_clip=1.0))
    losses, state = losses_on_fixed_batch(cfg, o, steps=15)
    assert losses[-1] < losses[0] - 0.5, losses
    assert int(state["step"]) == 15


def test_bf16_compute_keeps_fp32_params_and_matches_loss():
    """bf16 compute on trained fp32 parameters: per-token losses far from ln V (so the forward
    matters) and within bf16 rounding of the fp32 forward."""
    cfg32 = tiny_model_config()
    cfg16 = tiny_model_config(dtype="bfloat16")
    o = ml_collections.ConfigDict(dict(name="adamw", lr=3e-3, warmup_steps=1, schedule="constant",
                                       min_lr_ratio=0.1, b1=0.9, b2=0.95, eps=1e-8,
                                       weight_decay=0.0, grad_clip=1.0))
    _, state = losses_on_fixed_batch(cfg32, o, steps=15)
    fn32, _ = init_params(cfg32, seed=0)
    fn16, p16 = init_params(cfg16, seed=0)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(p16))
    tokens = jax.random.randint(jax.random.key(3), (4, 17), 0, cfg32.vocab_size)  # trained batch
    ce = {}
    for name, fn in (("32", fn32), ("16", fn16)):
        logits = fn.bind(state["params"])(tokens[:, :-1])
        ce[name] = np.asarray(token_cross_entropy(logits, tokens[:, 1:]))
    assert ce["32"].mean() < np.log(cfg32.vocab_size) - 0.5, ce["32"].mean()
    assert np.abs(ce["32"] - ce["16"]).max() < 0.1
    assert abs(ce["32"].mean() - ce["16"].mean()) < 0.02


def test_decay_mask_spares_stacked_norms_and_biases():
    """The layer scan stacks norm scales into [L, d]: they must still not decay."""
    from nested_jax.train import optim
    from tests.tiny import tiny_model

    names, stacked = {}, 0
    for variant in ("transformer", "titans", "hope_hybrid"):
        c = tiny_model(variant, vocab_size=64, d_model=32, n_layers=2)
        _, params = init_params(c, seed=0)
        mask = optim.decay_mask(params)
        for (path, leaf), (_, d) in zip(jax.tree_util.tree_leaves_with_path(params),
                                        jax.tree_util.tree_leaves_with_path(mask)):
            names.setdefault(str(path[-1].key), set()).add(bool(d))
            if leaf.ndim >= 2 and str(path[-1].key) == "scale":
                assert leaf.shape[0] == 2  # the stacked case this test is about
                stacked += 1
    assert stacked > 0
    assert names["scale"] == {False} and names["gate_bias"] == {False}
    assert names["ln_scale"] == {False} and names["ln_bias"] == {False}
    assert names["kernel"] == {True} and names["embedding"] == {True}


def test_muon_with_its_own_adam_lr_trains():
    """optim.adam_lr > 0 gives the AdamW part its own schedule (it used to crash)."""
    from configs.default import get_config

    o = get_config().optim
    o.name, o.lr, o.adam_lr, o.warmup_steps, o.schedule = "muon", 2e-2, 3e-3, 1, "constant"
    losses, _ = losses_on_fixed_batch(tiny_model_config(), o, steps=10)
    assert losses[-1] < losses[0] - 0.5, losses
