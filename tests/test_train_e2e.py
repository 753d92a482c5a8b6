"""End to end on the vendored novels: a tiny Transformer++ learns, checkpoints, resumes."""

import json
import os

import numpy as np

from nested_jax.train.loop import train_and_evaluate
from tests.tiny import tiny_config


def _cfg(steps):
    return tiny_config(
        d_model=64, n_layers=2, n_heads=4,
        train=dict(steps=steps, batch_size=16, seq_len=64, log_every=5),
        optim=dict(warmup_steps=10), checkpoint=dict(every_steps=50),
        eval=dict(every_steps=50, num_batches=2, batch_size=16),
        logging=dict(progress_bar=False))


def test_tiny_model_learns_real_text_and_resumes(tmp_path):
    wd = str(tmp_path / "run")
    s1 = train_and_evaluate(_cfg(100), wd)
    ln_v = np.log(s1["vocab_size"])
    recs = [json.loads(l) for l in open(os.path.join(wd, "metrics.jsonl"))]
    evals = [r["eval_loss"] for r in recs if "eval_loss" in r]
    assert abs(evals[0] - ln_v) < 0.1 * ln_v, "initial held-out loss should be about ln V"
    assert evals[-1] < 0.8 * ln_v, f"held-out loss {evals[-1]:.3f} did not fall below 0.8 ln V"
    assert all("tokens_per_sec" in r for r in recs if "loss" in r)
    assert os.path.exists(os.path.join(wd, "loss_curve.png"))
    assert max(int(d) for d in os.listdir(os.path.join(wd, "checkpoints")) if d.isdigit()) == 100

    # Same command, longer run: resumes from step 100 instead of restarting.
    s2 = train_and_evaluate(_cfg(110), wd)
    assert s2["start_step"] == 100 and s2["final_step"] == 110
    recs = [json.loads(l) for l in open(os.path.join(wd, "metrics.jsonl"))]
    steps = [r["step"] for r in recs if "loss" in r]
    assert steps == sorted(steps) and steps[-1] == 110 and steps.count(100) == 1
