"""Runs a researcher can watch and that end well: plain log lines for batch jobs,
TensorBoard events and W&B records of every metric in metrics.jsonl, the loss curve redrawn at
every evaluation, a rerun of a finished run that keeps summary.json, a diverged run that saves
nothing, rollback / --resume-step, --print-config.

One tiny Transformer++ run (8 steps, checkpoints 4 and 8) is shared by the module; tests that
change a workdir copy it first.
"""

import contextlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
import types

import chex
import pytest

from nested_jax.checkpoint import CheckpointError
from nested_jax.checkpoint.__main__ import main as checkpoint_main
from nested_jax.checkpoint.io import step_dirs
from nested_jax.train import loop as loop_lib
from nested_jax.train import metrics as metrics_lib
from nested_jax.train.loop import train_and_evaluate
from nested_jax.train.metrics import MetricsWriter, NonFiniteError, TensorBoardSink
from tests.helpers import tensorboard_events, tensorboard_scalars
from tests.test_reliability_resume import REPO, final_params, records, tiny_config

RUN = {"train.steps": 8, "train.log_every": 2, "eval.every_steps": 4,
       "checkpoint.every_steps": 4, "checkpoint.async_save": False, "logging.plot": True,
       "logging.wandb_project": "nj-test"}


def cfg(**extra):
    return tiny_config(**{**RUN, **extra})


class FakeWandbRun:
    def __init__(self, **kw):
        self.init_kw, self.logs, self.finished = kw, [], False

    def log(self, values, step):
        self.logs.append((step, dict(values)))

    def finish(self):
        self.finished = True


def fake_wandb(runs: list) -> types.ModuleType:
    mod = types.ModuleType("wandb")
    mod.util = types.SimpleNamespace(generate_id=lambda: "fakeid01")

    def init(**kw):
        runs.append(FakeWandbRun(**kw))
        return runs[-1]

    mod.init = init
    return mod


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The shared run, with a stand-in `wandb` module and a spy on the loss-curve plot."""
    wd = str(tmp_path_factory.mktemp("outputs") / "run")
    runs, plots = [], []
    orig_plot = metrics_lib.plot_loss_curve

    def spy(metrics_path, png_path, title=""):
        evals = [r["step"] for r in metrics_lib.read_metrics(metrics_path) if "eval_loss" in r]
        plots.append(evals[-1] if evals else None)
        return orig_plot(metrics_path, png_path, title)

    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        mp.setitem(sys.modules, "wandb", fake_wandb(runs))
        mp.setattr(metrics_lib, "plot_loss_curve", spy)
        summary = train_and_evaluate(cfg(), wd)
    return {"wd": wd, "stdout": out.getvalue(), "summary": summary, "wandb": runs,
            "plots": plots}


def _numeric(rec):
    return {k: v for k, v in rec.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def test_plain_log_lines_every_log_step_and_every_evaluation(run):
    lines = run["stdout"].splitlines()
    train = [l for l in lines if "  loss " in l]
    assert [l.split()[2] for l in train] == ["2/8", "4/8", "6/8", "8/8"], run["stdout"]
    for l in train:
        assert " lr " in l and " tokens/s " in l
    evals = [l for l in lines if "held-out loss" in l]
    assert [l.split()[2] for l in evals] == ["0/8:", "4/8:", "8/8:"], run["stdout"]
    want = {r["step"]: r["eval_loss"] for r in records(run["wd"]) if "eval_loss" in r}
    for l in evals:
        assert float(l.rsplit(" ", 1)[1]) == pytest.approx(want[int(l.split()[2][:-3])], abs=1e-4)


def test_tensorboard_and_wandb_get_every_metric_of_metrics_jsonl(run):
    recs = [json.loads(l) for l in open(os.path.join(run["wd"], "metrics.jsonl"))]
    want = {(r["step"], k): v for r in recs for k, v in _numeric(r).items()}
    assert {k for _, k in want} >= {"loss", "eval_loss", "lr", "grad_norm", "tokens_per_sec",
                                    "nonfinite_skipped"}
    got = {(s, t): v for s, t, v in tensorboard_scalars(os.path.join(run["wd"], "tensorboard"))}
    assert set(got) == set(want)
    for key, v in want.items():
        assert got[key] == pytest.approx(v, rel=1e-6), key

    (wb,) = run["wandb"]
    assert wb.init_kw["project"] == "nj-test" and wb.init_kw["id"] == "fakeid01"
    assert wb.init_kw["config"]["train"]["steps"] == 8 and wb.finished
    logged = {(s, k): v for s, d in wb.logs for k, v in d.items()}
    assert logged == pytest.approx(want)
    assert open(os.path.join(run["wd"], "wandb_run_id")).read().strip() == "fakeid01"


def test_tensorboard_gets_cms_update_counts_and_purges_after_a_resume(tmp_path):
    """Any key of a record, `cms/<layer>/<level>/updates` included, becomes a scalar; a resumed
    writer tells TensorBoard to drop what an earlier process wrote after the resumed step."""
    w = MetricsWriter(str(tmp_path), None, sinks=[TensorBoardSink(str(tmp_path / "tb"), None)])
    for s in (1, 2, 3):
        w.write({"step": s, "loss": 1.0 / s, "cms/0/fast/updates": 2.0 * s})
    w.close()
    w = MetricsWriter(str(tmp_path), 2, sinks=[TensorBoardSink(str(tmp_path / "tb"), 2)])
    w.write({"step": 3, "loss": 0.25, "cms/0/fast/updates": 7.0})
    w.close()
    got = tensorboard_scalars(tmp_path / "tb")
    assert (2, "cms/0/fast/updates", 4.0) in got and (3, "cms/0/fast/updates", 7.0) in got
    first, second = sorted(os.listdir(tmp_path / "tb"))
    starts = [ev.step for ev in tensorboard_events(tmp_path / "tb" / second)
              if ev.HasField("session_log") and ev.session_log.status == ev.session_log.START]
    assert starts == [3]  # TensorBoard drops the earlier file's events at steps >= 3


def test_loss_curve_is_redrawn_at_every_evaluation(run):
    assert run["plots"] == [0, 4, 8, 8]  # after the evaluations at 0, 4, 8, and at the end
    assert os.path.getsize(os.path.join(run["wd"], "loss_curve.png")) > 1000


def test_rerunning_a_finished_run_keeps_the_summary(run, tmp_path, capsys):
    wd = str(tmp_path / "run")
    shutil.copytree(run["wd"], wd)
    first = json.load(open(os.path.join(wd, "summary.json")))
    assert first["eval_loss"] is not None and first["eval_step"] == 8
    again = train_and_evaluate(cfg(**{"logging.wandb_project": ""}), wd)
    assert "nothing to train" in capsys.readouterr().out
    second = json.load(open(os.path.join(wd, "summary.json")))
    for key in ("final_step", "eval_loss", "eval_step", "loss", "tokens_per_sec"):
        assert second[key] == first[key] and second[key] is not None, key
    assert again["eval_loss"] == first["eval_loss"]
    assert records(wd) == records(run["wd"])


def test_a_diverged_run_does_not_save_the_diverged_step(run, tmp_path, monkeypatch):
    """A non-finite held-out loss stops training (exit 3 on the CLI) before that step is saved;
    summary.json says where, and the newest checkpoint stays the last good one."""
    wd = str(tmp_path / "run")
    shutil.copytree(run["wd"], wd)
    for name in ("8", ):
        shutil.rmtree(os.path.join(wd, "checkpoints", name))  # resume from 4
    orig = loop_lib.evaluate

    def diverge_at_8(eval_fn, params, batches, mesh, step):
        loss = orig(eval_fn, params, batches, mesh, step)
        return math.nan if int(step) == 8 else loss

    monkeypatch.setattr(loop_lib, "evaluate", diverge_at_8)
    with pytest.raises(NonFiniteError, match=r"step 8: the held-out loss is nan .*diverged. Step 8 "
                                             r"was not saved; the last checkpoint, step 4"):
        train_and_evaluate(cfg(**{"logging.wandb_project": "", "logging.plot": False}), wd)
    assert step_dirs(os.path.join(wd, "checkpoints"))["steps"] == [4]
    summary = json.load(open(os.path.join(wd, "summary.json")))
    assert summary["last_checkpoint"] == 4 and "diverged" in summary["diverged"]


def test_rollback_moves_later_steps_aside(run, tmp_path, capsys):
    wd = str(tmp_path / "run")
    shutil.copytree(run["wd"], wd)
    assert checkpoint_main(["rollback", wd, "4"]) == 0
    assert "moved aside: 8.rolled_back" in capsys.readouterr().out
    found = step_dirs(os.path.join(wd, "checkpoints"))
    assert found["steps"] == [4] and found["rolled_back"] == ["8.rolled_back"]
    assert os.path.isfile(os.path.join(wd, "metrics.before_rollback_to_4.jsonl"))
    assert checkpoint_main(["verify", wd, "--no-read"]) == 0
    assert "ROLLED BACK" in capsys.readouterr().out
    assert checkpoint_main(["rollback", wd, "8"]) == 2  # moved aside: no longer a step
    assert "step 8 not found" in capsys.readouterr().err


def test_resume_step_resumes_from_an_earlier_checkpoint_exactly(run, tmp_path):
    wd = str(tmp_path / "run")
    shutil.copytree(run["wd"], wd)
    with pytest.raises(CheckpointError, match=r"step 5 not found .*available: \[4, 8\]"):
        train_and_evaluate(cfg(), wd, resume_step=5)
    summary = train_and_evaluate(cfg(**{"logging.wandb_project": "", "logging.plot": False}), wd,
                                 resume_step=4)
    assert summary["start_step"] == 4 and summary["final_step"] == 8
    assert step_dirs(os.path.join(wd, "checkpoints"))["rolled_back"] == ["8.rolled_back"]
    got, _ = final_params(wd, 8)
    want, _ = final_params(run["wd"], 8)
    chex.assert_trees_all_equal(got, want)
    drop = ("tokens_per_sec",)
    assert ([{k: v for k, v in r.items() if k not in drop} for r in records(wd)]
            == [{k: v for k, v in r.items() if k not in drop} for r in records(run["wd"])])
    # A corrupt step is refused, not resumed from.
    params = os.path.join(wd, "checkpoints", "4", "params")
    victim = next(os.path.join(dp, f) for dp, _, fs in os.walk(params) for f in fs
                  if os.path.getsize(os.path.join(dp, f)) > 64)
    with open(victim, "r+b") as f:
        b = f.read(1)
        f.seek(0)
        f.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(CheckpointError, match=r"step 4 .* is corrupt or incomplete .*sha256"):
        train_and_evaluate(cfg(), wd, resume_step=4)


def test_print_config_shows_the_resolved_config_and_exits(tmp_path):
    wd = tmp_path / "never"
    p = subprocess.run([sys.executable, "-m", "nested_jax.train", "--config", "configs/smoke.py",
                        "--print-config", "--workdir", str(wd), "--config.train.steps=7",
                        "--config.model.vocab_size=0"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["train"]["steps"] == 7 and doc["model"]["vocab_size"] == 2048  # from the tokenizer
    assert not wd.exists()
