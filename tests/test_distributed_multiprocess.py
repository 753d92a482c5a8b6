"""Multi-host path on one machine: two processes (one CPU device each, jax.distributed over
gloo on a free localhost port) run `python -m nested_jax.train ... --coordinator
--num-processes 2 --process-id i`: identical losses on both, one metrics file, one Orbax
checkpoint written together; a single process restores it (params equal to a
single-process run of the same global batches) and resumes training from it."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
from flax import nnx

from nested_jax.checkpoint import Checkpointer, config_from_meta
from nested_jax.model.lm import build_model
from nested_jax.train import mesh as mesh_lib
from nested_jax.train.loop import train_and_evaluate
from tests.tiny import ROLLED, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A tiny Transformer++ on the vendored novels (lr schedule independent of steps), in-process
# and on the command line alike (loops: ROLLED).
OVERRIDES = {
    **ROLLED, "model.d_model": 32, "model.n_layers": 1, "model.n_heads": 2, "train.seq_len": 32,
    "train.batch_size": 4, "train.log_every": 1, "eval.num_batches": 1,
    "eval.batch_size": 4, "eval.every_steps": 3, "checkpoint.every_steps": 3,
    "checkpoint.max_to_keep": 5, "optim.schedule": "constant", "optim.warmup_steps": 1,
    "optim.lr": 3e-3, "logging.progress_bar": False, "logging.plot": False}

# Runs the real CLI (flags → distributed.initialize → train_and_evaluate) and prints every
# metrics record this process produced (process 0 writes them; the others drop them).
DRIVER = r"""
import json, sys
from absl import app
from nested_jax.train import distributed, metrics
from nested_jax.train import __main__ as cli
records = []
for cls in (metrics.MetricsWriter, distributed.NullWriter):
    def write(self, rec, _orig=cls.write):
        records.append({k: float(v) for k, v in rec.items()})
        _orig(self, rec)
    cls.write = write
try:
    app.run(cli.main, argv=["nested_jax.train"] + sys.argv[1:], flags_parser=cli._parse)
finally:
    print("RECORDS " + json.dumps(records), flush=True)
"""


def _free_port() -> int:
    try:
        import portpicker

        return portpicker.pick_unused_port()
    except ImportError:
        with socket.socket() as s:
            s.bind(("localhost", 0))
            return s.getsockname()[1]


def _config(steps):
    return tiny_config(**OVERRIDES, **{"train.steps": steps})


def _records(out: str) -> list[dict]:
    line = [l for l in out.splitlines() if l.startswith("RECORDS ")][-1]
    return json.loads(line[len("RECORDS "):])


def test_two_processes_train_checkpoint_and_single_process_restores(tmp_path):
    wd = tmp_path / "two_procs"
    port = _free_port()
    args = ["--config", os.path.join(ROOT, "configs", "smoke.py"), "--workdir", str(wd),
            "--coordinator", f"localhost:{port}", "--num-processes", "2",
            "--config.train.steps=3"] + [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=1")
    procs = [subprocess.Popen([sys.executable, "-c", DRIVER, *args, "--process-id", str(i)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=400)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for i, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"process {i} failed:\n{out[-4000:]}"
    rec0, rec1 = (_records(o) for o in outs)
    losses = [[r["loss"] for r in rec if "loss" in r] for rec in (rec0, rec1)]
    assert len(losses[0]) == 3 and losses[0] == losses[1], losses  # the same replicated loss
    assert [r["eval_loss"] for r in rec0 if "eval_loss" in r] == \
        [r["eval_loss"] for r in rec1 if "eval_loss" in r]
    written = [json.loads(l) for l in open(wd / "metrics.jsonl")]  # process 0 only, once
    assert [r["step"] for r in written if "loss" in r] == [1, 2, 3]
    data_files = sorted(os.listdir(wd / "checkpoints" / "3" / "data"))
    assert [f for f in data_files if f.endswith(".json")] == ["process_0-of-2.json",
                                                              "process_1-of-2.json"]

    # A single-process run on the same global batches (this process: 2 local devices).
    ref = tmp_path / "one_proc"
    train_and_evaluate(_config(4), str(ref))  # checkpoints at 3 and 4
    ref_recs = [json.loads(l) for l in open(ref / "metrics.jsonl")]
    ref_losses = [r["loss"] for r in ref_recs if "loss" in r]
    np.testing.assert_allclose(losses[0], ref_losses[:3], rtol=1e-5)

    # Restore the 2-process checkpoint in this single process, onto one device.
    one_dev = mesh_lib.replicated(mesh_lib.make_mesh(_config(3).mesh, devices=jax.devices()[:1]))
    ck_ref = Checkpointer(str(ref / "checkpoints"), read_only=True)
    ref_params = ck_ref.restore(3, params=_abstract(ck_ref, 3, one_dev))["params"]
    ck = Checkpointer(str(wd / "checkpoints"), read_only=True)
    got = ck.restore(3, params=_abstract(ck, 3, one_dev))["params"]
    assert ck.read_meta(3)["process_count"] == 2
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(got)[0],
                            jax.tree.leaves(ref_params)):
        assert a.sharding.device_set == {jax.devices()[0]}
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6,
                                   err_msg=jax.tree_util.keystr(path))
    ck.close()
    ck_ref.close()

    # And resume it here (2 processes → 1): the data order continues with global batch 4.
    s = train_and_evaluate(_config(4), str(wd))
    assert s["start_step"] == 3 and s["final_step"] == 4
    step4 = [json.loads(l) for l in open(wd / "metrics.jsonl") if '"loss"' in l][-1]
    assert step4["step"] == 4
    np.testing.assert_allclose(step4["loss"], ref_losses[3], rtol=1e-5)


def _abstract(ck, step, sharding):
    """Abstract params of the checkpoint's model (config in its meta), placed with `sharding`."""
    cfg = config_from_meta(ck.read_meta(step))
    tree = jax.eval_shape(lambda: nnx.to_pure_dict(nnx.split(build_model(cfg.model, 0))[1]))
    return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), tree)
