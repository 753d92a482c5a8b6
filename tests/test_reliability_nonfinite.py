"""Non-finite guard: a NaN loss/gradient skips the update inside the jitted step,
is counted (`nonfinite_skipped`), its batch is saved, and K in a row stop training with the
last good checkpoint intact.

NaNs are forced by monkeypatching `nested_jax.train.step.loss_and_grads` (the gradient
function the jitted step and its shard_map form both call) to multiply the loss and every
gradient by NaN at chosen 1-based steps.
"""

import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nested_jax.checkpoint.io import inspect_step, step_dirs
from nested_jax.data import loader
from nested_jax.train import step as step_lib
from nested_jax.train.loop import train_and_evaluate
from nested_jax.train.metrics import NonFiniteError
from tests.test_reliability_resume import records, tiny_config


def force_nan_at(monkeypatch, steps):
    orig = step_lib.loss_and_grads

    def patched(params, tokens_BxT1, step, fast=None, *, fn, accum=1):
        (loss, aux), grads = orig(params, tokens_BxT1, step, fast, fn=fn, accum=accum)
        f = jnp.where(jnp.isin(step + 1, jnp.asarray(steps, jnp.int32)), jnp.nan, 1.0)
        return (loss * f, aux), jax.tree.map(lambda g: g * f, grads)

    monkeypatch.setattr(step_lib, "loss_and_grads", patched)


def test_skip_keeps_params_optimizer_and_fast_state_and_advances_the_step():
    old = {"params": {"w": jnp.ones((2, 3))}, "opt_state": {"mu": jnp.zeros((2, 3))},
           "fast": {"m": jnp.full((2,), 5.0)}, "step": jnp.asarray(7, jnp.int32)}
    new = {"params": {"w": jnp.full((2, 3), 2.0)}, "opt_state": {"mu": jnp.ones((2, 3))},
           "fast": {"m": jnp.zeros((2,))}, "step": jnp.asarray(8, jnp.int32)}
    fn = jax.jit(step_lib.skip_nonfinite)
    for loss, gnorm, bad in ((1.0, 1.0, 0.0), (jnp.nan, 1.0, 1.0), (1.0, jnp.inf, 1.0)):
        out, m = fn(old, new, {"loss": jnp.asarray(loss), "grad_norm": jnp.asarray(gnorm)})
        want = old if bad else new
        for k in ("params", "opt_state", "fast"):
            chex.assert_trees_all_equal(out[k], want[k])
        assert int(out["step"]) == 8 and float(m["nonfinite"]) == bad
    bad_params = dict(new, params={"w": jnp.full((2, 3), jnp.nan)})  # finite grads, NaN update
    out, m = fn(old, bad_params, {"loss": jnp.asarray(1.0), "grad_norm": jnp.asarray(1.0)})
    assert float(m["nonfinite"]) == 1.0 and np.isfinite(np.asarray(out["params"]["w"])).all()


def test_nan_steps_are_skipped_counted_and_k_in_a_row_abort(tmp_path, monkeypatch):
    wd = str(tmp_path / "run")
    force_nan_at(monkeypatch, (3, 6, 7, 8))
    cfg = tiny_config(**{"train.steps": 12, "checkpoint.every_steps": 4,
                         "eval.every_steps": 100, "train.max_nonfinite_in_a_row": 3})
    with pytest.raises(NonFiniteError, match=r"stopped at step 8: 3 steps in a row") as e:
        train_and_evaluate(cfg, wd)
    assert "nonfinite_batch_step8.npy" in str(e.value) and "max_nonfinite_in_a_row" in str(e.value)

    # The last good checkpoint (4) is intact; the bad state (step 8) was never saved.
    found = step_dirs(os.path.join(wd, "checkpoints"))
    assert found["steps"] == [4] and not found["tmp"], found
    assert inspect_step(os.path.join(wd, "checkpoints", "4")).ok
    # Offending batches are saved: they are the batches the data iterator gave those steps.
    it = loader.make_train_iterator(cfg.data, seq_len=cfg.train.seq_len,
                                    batch_size=cfg.train.batch_size, seed=cfg.seed)
    batches = [next(it)["tokens"] for _ in range(8)]
    for s in (3, 6, 7, 8):
        np.testing.assert_array_equal(np.load(os.path.join(wd, f"nonfinite_batch_step{s}.npy")),
                                      batches[s - 1])
    recs = [r for r in records(wd) if "loss" in r]
    assert [r["nonfinite_skipped"] for r in recs] == [0, 0, 1, 1, 1, 2, 3, 4]
    assert [s for s, r in enumerate(recs, 1) if not np.isfinite(r["loss"])] == [3, 6, 7, 8]
    assert all(np.isfinite(r["loss"]) for r in recs if r["step"] in (4, 5))

    # Rerun with a larger K (a resumable change): resumes from 4, skips 6-8 again, finishes,
    # and the cumulative count carries over through the checkpoint metadata.
    cfg = tiny_config(**{"train.steps": 12, "checkpoint.every_steps": 4,
                         "eval.every_steps": 100, "train.max_nonfinite_in_a_row": 5})
    summary = train_and_evaluate(cfg, wd)
    assert summary["start_step"] == 4 and summary["final_step"] == 12
    recs = [r for r in records(wd) if "loss" in r]
    assert [r["step"] for r in recs] == list(range(1, 13))
    assert [r["nonfinite_skipped"] for r in recs] == [0, 0, 1, 1, 1, 2, 3, 4, 4, 4, 4, 4]
    assert np.isfinite(recs[-1]["loss"]) and np.isfinite(summary["eval_loss"])
    with open(os.path.join(wd, "checkpoints", "12", "meta", "metadata")) as f:
        meta = json.load(f)
    assert meta["nonfinite_skipped"] == 4 and meta["nonfinite_in_a_row"] == 0
