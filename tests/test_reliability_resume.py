"""Exact resume after kill -9 at several points, and SIGTERM.

One uninterrupted reference run, and one run of the same command interrupted three times:
  A  kill -9 right after checkpoint 12 was committed, mid-interval (paused after step 13,
     whose record is already in metrics.jsonl; synchronous saves)
  B  kill -9 while checkpoint 18 is being written (its async commit stalled)
  C  SIGTERM after step 15: finishes the step, checkpoints, exits 0
  D  the same command runs to the end
On CPU the final parameters must equal the reference bit for bit and metrics.jsonl must
hold the same records (timing fields aside).

Test hooks (tests/train_with_hooks.py, environment variables read only when set):
  NESTED_JAX_TEST_PAUSE_AFTER_STEP=N  the metrics writer blocks (signal.pause) after
                                      writing step N's train record
  NESTED_JAX_TEST_STALL_COMMIT=N      the checkpointer stalls the async commit of step N
Subprocesses share a persistent XLA compilation cache (same executables, less CPU).
"""

import json
import os
import signal
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest

from nested_jax.checkpoint import Checkpointer
from nested_jax.checkpoint.io import step_dirs
from nested_jax.train.loop import train_and_evaluate
from tests.tiny import ROLLED, tiny_config as _tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 24
OVERRIDES = {  # the in-process runs and the command line alike (loops: ROLLED)
    **ROLLED, "model.d_model": 32, "model.n_layers": 1, "model.n_heads": 2,
    "train.steps": STEPS, "train.batch_size": 4, "train.seq_len": 32, "train.log_every": 1,
    "optim.warmup_steps": 4,
    "checkpoint.every_steps": 6, "eval.every_steps": 8, "eval.num_batches": 1,
    "eval.batch_size": 4, "logging.progress_bar": False, "logging.plot": False,
}
TIMING = ("tokens_per_sec",)
CACHE_ENV = {"JAX_COMPILATION_CACHE_DIR": os.path.join(
    os.environ.get("TMPDIR", "/tmp"), f"nested_jax_test_xla_cache_{os.getuid()}"),
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}


def tiny_config(**extra):
    return _tiny_config(**{**OVERRIDES, **extra})


def cli_args(workdir, module="nested_jax.train", **extra):
    flags = [f"--config.{k}={v}" for k, v in {**OVERRIDES, **extra}.items()]
    return [sys.executable, "-m", module, "--config", "configs/smoke.py",
            "--workdir", str(workdir), *flags]


class Run:
    """The train CLI (with the test hooks of tests/train_with_hooks.py) in a subprocess,
    output to files (no pipe to fill)."""

    def __init__(self, workdir, env=None, **extra):
        self.workdir = str(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.err_path = os.path.join(self.workdir, f"stderr_{time.time_ns()}.txt")
        self.out_path = self.err_path.replace("stderr", "stdout")
        self._out, self._err = open(self.out_path, "w"), open(self.err_path, "w")
        self.proc = subprocess.Popen(cli_args(self.workdir, "tests.train_with_hooks", **extra),
                                     cwd=REPO,
                                     stdout=self._out, stderr=self._err,
                                     env={**os.environ, **CACHE_ENV, **(env or {})})

    @property
    def stderr(self) -> str:
        return open(self.err_path).read()

    @property
    def stdout(self) -> str:
        return open(self.out_path).read()

    def wait_for(self, cond, what: str, timeout: float = 240.0):
        t0 = time.time()
        while not cond():
            if self.proc.poll() is not None:
                raise AssertionError(f"run exited ({self.proc.returncode}) before {what}:\n"
                                     f"{self.stderr[-3000:]}")
            if time.time() - t0 > timeout:
                self.kill()
                raise AssertionError(f"timed out waiting for {what}:\n{self.stderr[-3000:]}")
            time.sleep(0.05)

    def kill(self, sig=signal.SIGKILL) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)  # this run's own pid only
        rc = self.proc.wait(timeout=240)
        self._out.close()
        self._err.close()
        return rc

    def wait(self) -> int:
        rc = self.proc.wait(timeout=300)
        self._out.close()
        self._err.close()
        return rc


def records(workdir):
    out = []
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            out.append({k: v for k, v in rec.items() if k not in TIMING})
    return out


def final_params(workdir, step=STEPS):
    ck = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
    meta = ck.read_meta(step)
    import orbax.checkpoint as ocp

    tree = ocp.StandardCheckpointer().metadata(
        os.path.join(ck.directory, str(step), "params")).item_metadata.tree
    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=dev), tree)
    got = ck.restore(step, params=target)
    ck.manager.close()
    return jax.tree.map(np.asarray, got["params"]), meta


# One reference run per pytest process, whichever module asks first. The path is kept in
# the environment because pytest may import this file twice (as a test module and as
# tests.test_reliability_resume from the other reliability tests).
_REFERENCE_ENV = f"NESTED_JAX_TEST_REFERENCE_RUN_{os.getpid()}"


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
    """The uninterrupted run (in-process), shared by the reliability tests (read-only: tests
    copy it before changing anything)."""
    wd = os.environ.get(_REFERENCE_ENV)
    if not wd or not os.path.isfile(os.path.join(wd, "summary.json")):
        wd = str(tmp_path_factory.mktemp("reference") / "run")
        calls, orig = [], Checkpointer.save

        def spy(self, step, **kw):  # which records are on disk when checkpoint `step` starts
            calls.append([step, _max_step(wd)])
            return orig(self, step, **kw)

        Checkpointer.save = spy
        try:
            train_and_evaluate(tiny_config(), wd)
        finally:
            Checkpointer.save = orig
        with open(os.path.join(wd, "save_calls.json"), "w") as f:
            json.dump(calls, f)
        os.environ[_REFERENCE_ENV] = wd
    return wd


def _max_step(workdir) -> int:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return -1
    best = -1
    for line in open(path):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if "loss" in rec:
            best = max(best, rec["step"])
    return best


def test_kill9_at_any_point_then_resume_equals_uninterrupted(tmp_path, reference_run):
    wd = str(tmp_path / "run")
    pause = "NESTED_JAX_TEST_PAUSE_AFTER_STEP"

    # A: kill -9 right after checkpoint 12 is committed, with step 13 already logged.
    r = Run(wd, env={pause: "13"}, **{"checkpoint.async_save": False})
    r.wait_for(lambda: "paused after step 13" in r.stderr, "step 13")
    assert r.kill() == -signal.SIGKILL
    assert step_dirs(os.path.join(wd, "checkpoints"))["steps"] == [6, 12]
    assert _max_step(wd) == 13

    # B: kill -9 while checkpoint 18 is mid-write (its async commit stalls).
    r = Run(wd, env={"NESTED_JAX_TEST_STALL_COMMIT": "18"})
    r.wait_for(lambda: "stalling the commit of step 18" in r.stderr, "the save of step 18")
    assert r.kill() == -signal.SIGKILL
    found = step_dirs(os.path.join(wd, "checkpoints"))
    assert found["steps"] == [6, 12] and found["tmp"], found

    # C: SIGTERM: finish the step, checkpoint, exit 0.
    r = Run(wd, env={pause: "15"})
    r.wait_for(lambda: "paused after step 15" in r.stderr, "step 15")
    assert "cut mid-write" in r.stderr and "resumed from step 12" in r.stdout
    assert r.kill(signal.SIGTERM) == 0, r.stderr[-3000:]
    assert "stopped by signal after step 16" in r.stdout, r.stdout
    found = step_dirs(os.path.join(wd, "checkpoints"))
    assert 16 in found["steps"] and not found["tmp"], found

    # D: the same command runs to the end.
    r = Run(wd)
    assert r.wait() == 0, r.stderr[-3000:]
    assert "resumed from step 16" in r.stdout

    got, meta = final_params(wd)
    want, _ = final_params(reference_run)
    chex.assert_trees_all_equal(got, want)
    assert records(wd) == records(reference_run)
    # Every checkpoint starts after its step's record is in metrics.jsonl, so a kill right
    # after a checkpoint never loses a record (the pending-metric flush).
    with open(os.path.join(reference_run, "save_calls.json")) as f:
        assert json.load(f) == [[6, 6], [12, 12], [18, 18], [24, 24]]
    assert meta["step"] == STEPS and meta["tokens_seen"] == STEPS * 4 * 32
    assert not [f for f in os.listdir(wd) if f.startswith("nonfinite_batch")]


def test_metrics_of_a_run_killed_before_its_first_checkpoint_are_dropped(tmp_path):
    from nested_jax.train.metrics import MetricsWriter

    w = MetricsWriter(str(tmp_path), resume_step=None)
    w.write({"step": 0, "eval_loss": 7.0})
    w.write({"step": 1, "loss": 7.0})
    w.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "lo')  # a line cut by the kill
    MetricsWriter(str(tmp_path), resume_step=0).close()  # no checkpoint: a fresh start
    assert open(tmp_path / "metrics.jsonl").read() == ""
    w = MetricsWriter(str(tmp_path), resume_step=None)
    for s in (0, 1, 2, 3):
        w.write({"step": s, "loss": 1.0})
    w.close()
    MetricsWriter(str(tmp_path), resume_step=2).close()
    assert [r["step"] for r in records(str(tmp_path))] == [0, 1, 2]


@pytest.mark.slow
def test_streaming_hope_resume_equals_uninterrupted(tmp_path):
    """HOPE-Attention with a streaming fast state (reset=never): the fast state item is
    restored exactly too (about a minute on 2 CPU cores)."""
    extra = {"model.variant": "hope_attention", "model.online.segment_len": 16,
             "model.cms.periods": "(16, 32, 32)", "model.online.reset": "never",
             "train.steps": 8, "checkpoint.every_steps": 4, "eval.every_steps": 4}
    ref = Run(tmp_path / "ref", **extra)
    assert ref.wait() == 0, ref.stderr[-3000:]
    r = Run(tmp_path / "int", env={"NESTED_JAX_TEST_PAUSE_AFTER_STEP": "6"},
            **{**extra, "checkpoint.async_save": False})
    r.wait_for(lambda: "paused after step 6" in r.stderr, "step 6")
    assert r.kill() == -signal.SIGKILL
    r = Run(tmp_path / "int", **extra)
    assert r.wait() == 0 and "resumed from step 4" in r.stdout, r.stderr[-3000:]
    got, _ = final_params(str(tmp_path / "int"), 8)
    want, _ = final_params(str(tmp_path / "ref"), 8)
    chex.assert_trees_all_equal(got, want)
    assert records(str(tmp_path / "int")) == records(str(tmp_path / "ref"))
    assert os.path.isdir(os.path.join(tmp_path, "int", "checkpoints", "8", "fast"))
