"""Checkpoint save and resume-open cost at a preset's size (CPU or GPU host).

    python -m benchmarks.checkpoint_save --preset pilot --output benchmarks/out/ckpt_save

Builds the preset's parameters and optimizer state (random init), then saves them like
training does (`nested_jax.checkpoint.Checkpointer`, async) N times and times: the `save()`
call (what the training loop waits for), the time until the step is committed (`wait()`), the
time until every background job of the save is done (`close()`, incl. the sha256 record), and
opening the directory for a resume (crash recovery + integrity check of the newest step).
Table on stdout, results.json in --output.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time

import jax
import numpy as np

from benchmarks import common
from nested_jax.checkpoint import Checkpointer
from nested_jax.model.lm import init_params
from nested_jax.train import optim, step as step_lib

PRESETS = {"pilot": "pilot", "smoke": "smoke", "mid": "mid_stage2"}


def build_state(preset: str):
    import importlib

    c = importlib.import_module(f"configs.{PRESETS[preset]}").get_config()
    c.model.vocab_size = 32000 if c.data.tokenizer.endswith("32k") else 2048
    _, params = init_params(c.model, 0)
    tx = optim.build_optimizer(c.optim, c.train.steps)
    state = step_lib.init_train_state(params, tx)
    return c, state


def main(argv=None) -> dict:
    ap = common.parser(__doc__, "checkpoint_save")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="pilot")
    ap.add_argument("--saves", type=int, default=3)
    ap.add_argument("--dir", default="", help="where to write (default: a temporary folder)")
    ap.add_argument("--output", default="benchmarks/out/ckpt_save")
    a = ap.parse_args(argv)
    c, state = build_state(a.preset)
    n_bytes = sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(state))
    root = a.dir or tempfile.mkdtemp(prefix="nj_ckpt_bench_")
    d = os.path.join(root, "checkpoints")
    shutil.rmtree(d, ignore_errors=True)
    rows = []
    ck = Checkpointer(d, max_to_keep=2, async_save=True)
    for i in range(a.saves):
        t0 = time.perf_counter()
        ck.save(i + 1, params=state["params"], opt=state["opt_state"],
                meta={"config": c.to_json_best_effort(), "step": i + 1})
        t_call = time.perf_counter() - t0
        ck.wait()
        t_commit = time.perf_counter() - t0
        rows.append({"save": i + 1, "call_s": t_call, "commit_s": t_commit})
    t0 = time.perf_counter()
    ck.close()
    close_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    Checkpointer(d, max_to_keep=2).close()
    open_s = time.perf_counter() - t0
    out = {"preset": a.preset, "state_bytes": n_bytes, "saves": rows,
           "call_s_median": statistics.median(r["call_s"] for r in rows),
           "commit_s_median": statistics.median(r["commit_s"] for r in rows),
           "close_s": close_s, "resume_open_s": open_s, "device": common.device_info(),
           "load_average": os.getloadavg()}
    print(f"{a.preset}: state {n_bytes / 2**20:,.0f} MiB (params + optimizer), "
          f"{a.saves} async saves")
    print(common.format_table(rows, [("save", "save", ""), ("call_s", "save() s", ".2f"),
                                     ("commit_s", "committed s", ".2f")]))
    print(f"close (background jobs of the last save) {close_s:.2f} s; "
          f"open for resume (recovery + integrity check) {open_s:.2f} s; "
          f"load average {out['load_average'][0]:.2f}")
    common.write_json(out, os.path.join(a.output, "results.json"))
    if not a.dir:
        shutil.rmtree(root, ignore_errors=True)
    return out


if __name__ == "__main__":
    common.run_script(main, "checkpoint_save")
