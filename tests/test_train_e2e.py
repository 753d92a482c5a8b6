"""End to end on the vendored novels: a tiny Transformer++ learns, checkpoints, resumes."""

import json
import os

import numpy as np

from configs import smoke
from nested_jax.train.loop import train_and_evaluate


def _cfg(steps):
    c = smoke.get_config()
    c.model.d_model, c.model.n_layers, c.model.n_heads = 64, 2, 4
    c.train.steps, c.train.batch_size, c.train.seq_len, c.train.log_every = steps, 16, 64, 5
    c.optim.warmup_steps = 10
    c.checkpoint.every_steps = 50
    c.eval.every_steps, c.eval.num_batches, c.eval.batch_size = 50, 2, 16
    c.logging.progress_bar = False
    return c


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
