"""The training loop's periodic actions (nested_jax/train/actions.py), each on its own with
stand-ins for the checkpointer, the writer and the model: when it fires (its cadence, the last
step, a forced save), what it writes, and the order it keeps (metrics before an evaluation or
a save, a diverged evaluation stopping before the save). Then: a launch validates its config
once, and the allowed values of a field are the lists its owning module defines."""

import math
import os

import numpy as np
import pytest

from nested_jax.train import actions
from nested_jax.train import metrics as metrics_lib
from nested_jax.train import validate
from nested_jax.train.metrics import NonFiniteError, NonFiniteGuard


class ListWriter:
    path = None

    def __init__(self):
        self.records = []

    def write(self, record):
        self.records.append(dict(record))


class FakeCheckpointer:
    directory = "/runs/x/checkpoints"

    def __init__(self, log=None):
        self.saves, self.waits, self.log = [], 0, log if log is not None else []

    def save(self, step, **items):
        self.saves.append((step, items))
        self.log.append(("save", step))

    def wait(self):
        self.waits += 1
        self.log.append(("wait",))


class Counter(actions.PeriodicAction):
    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.ran = []

    def _apply(self, step):
        self.ran.append(step)


def test_periodic_action_fires_at_its_multiples_and_the_last_step():
    a = Counter(4, 10)
    fired = [s for s in range(1, 11) if a(s)]
    assert fired == a.ran == [4, 8, 10]
    assert a.due(0)  # the initial evaluation is on the cadence too
    assert a(5, force=True) and a.ran[-1] == 5  # a forced run (a stop request) fires off-cadence
    order = []
    b = Counter(2, 3, before=lambda: order.append("before"))
    b(1), b(2)
    assert order == ["before"] and b.ran == [2]


def _metrics(loss, nonfinite=0.0):
    return {"loss": np.float32(loss), "lr": np.float32(1e-3), "nonfinite": np.float32(nonfinite)}


def test_metrics_flush_reads_one_step_late_and_logs_on_its_cadence(tmp_path, capsys):
    writer = ListWriter()
    guard = NonFiniteGuard(str(tmp_path), 0, save_batches=False)
    m = actions.MetricsFlush(2, 5, writer=writer, guard=guard, tokens_per_step=8, start=0,
                             console=actions.Console(plain=True))
    m.push(1, _metrics(3.0))
    assert m.loss is None and not writer.records  # step 1 is held until step 2 is dispatched
    m.push(2, _metrics(2.5))
    assert m.loss == 3.0 and not writer.records  # step 1 read, not a log step
    m.push(3, _metrics(2.0))
    m.push(4, _metrics(1.5))
    m.push(5, _metrics(1.0))
    m.flush()
    m.flush()  # nothing held: no second record
    assert [r["step"] for r in writer.records] == [2, 4, 5]  # cadence and the last step
    assert [r["loss"] for r in writer.records] == [2.5, 1.5, 1.0] and m.loss == 1.0
    rec = writer.records[-1]
    assert rec["nonfinite_skipped"] == 0 and "nonfinite" not in rec
    assert rec["tokens_per_sec"] > 0 and m.tokens_per_sec == rec["tokens_per_sec"]
    lines = capsys.readouterr().out.splitlines()
    assert [l.split()[2] for l in lines] == ["2/5", "4/5", "5/5"]


def test_metrics_flush_writes_the_aborting_step_then_raises(tmp_path):
    writer = ListWriter()
    guard = NonFiniteGuard(str(tmp_path), 2, save_batches=False)
    m = actions.MetricsFlush(10, 20, writer=writer, guard=guard, tokens_per_step=8, start=0,
                             console=actions.Console())
    m.push(1, _metrics(2.0, nonfinite=1.0))
    m.push(2, _metrics(math.nan, nonfinite=1.0))
    with pytest.raises(NonFiniteError, match="2 steps in a row"):
        m.push(3, _metrics(1.0))  # reading step 2 aborts: its record is written first
    assert [(r["step"], r["nonfinite_skipped"]) for r in writer.records] == [(2, 2)]


def test_console_writes_to_the_bar_or_plain_lines_or_nowhere(capsys):
    class Bar:
        def __init__(self):
            self.calls = []

        def update(self, n):
            self.calls.append(("update", n))

        def write(self, text):
            self.calls.append(("write", text))

        def set_postfix(self, **kw):
            self.calls.append(("postfix", kw))

    bar = Bar()
    c = actions.Console(bar)
    c.advance(), c.line("eval"), c.status("train", loss="1.000")
    assert bar.calls == [("update", 1), ("write", "eval"), ("postfix", {"loss": "1.000"})]
    actions.Console(plain=True).status("train line")
    actions.Console().line("not shown")  # another process
    assert capsys.readouterr().out == "train line\n"


def _saver(log, every=3, last=7, start=0):
    ckpt = FakeCheckpointer(log)
    guard_state = {"nonfinite_skipped": 1, "nonfinite_in_a_row": 0}
    saver = actions.Checkpoint(every, last, checkpointer=ckpt, data_iter="ITER",
                               meta={"variant": "transformer"}, guard_state=lambda: guard_state,
                               tokens_per_step=64, start=start,
                               before=lambda: log.append(("flush",)))
    return saver, ckpt


def test_checkpoint_saves_state_iterator_and_meta_at_its_steps():
    log = []
    saver, ckpt = _saver(log)
    state = {"params": "P", "opt_state": "O", "step": "S", "fast": "F"}
    for s in range(1, 8):
        saver(s, state, force=s == 5)  # a stop request at step 5
    assert [s for s, _ in ckpt.saves] == [3, 5, 6, 7] and saver.last_saved == 7
    assert log[:2] == [("flush",), ("save", 3)]  # the step's metrics reach the file first
    step, items = ckpt.saves[0]
    assert items["params"] == "P" and items["fast"] == "F" and items["data_iter"] == "ITER"
    assert items["opt"] == {"opt_state": "O", "step": "S"}
    assert items["meta"] == {"variant": "transformer", "step": 3, "tokens_seen": 192,
                             "nonfinite_skipped": 1, "nonfinite_in_a_row": 0}
    assert saver.kept() == "the last checkpoint, step 7, in /runs/x/checkpoints is kept"
    unsaved, _ = _saver([], start=0)
    assert unsaved.last_saved == 0 and unsaved.kept() == "no checkpoint was saved"
    resumed, _ = _saver([], start=4)
    assert resumed.kept().startswith("the last checkpoint, step 4,")


def test_held_out_eval_records_the_loss_and_stops_a_diverged_run(capsys):
    log = []
    saver, ckpt = _saver(log, every=4, last=12)
    losses = {0: 5.0, 4: 4.0, 8: math.nan}
    writer = ListWriter()
    evals = actions.HeldOutEval(4, 10, measure=lambda st: losses[st["step"]], writer=writer,
                                console=actions.Console(plain=True), checkpoint=saver,
                                before=lambda: log.append(("flush",)))
    assert evals(0, {"step": 0}) and not evals(3, {"step": 3}) and evals(4, {"step": 4})
    evals.check()  # finite: nothing happens
    saver(4, {"params": 0, "opt_state": 0, "step": 0})
    assert writer.records == [{"step": 0, "eval_loss": 5.0}, {"step": 4, "eval_loss": 4.0}]
    assert (evals.step, evals.loss) == (4, 4.0)
    last_line = capsys.readouterr().out.splitlines()[-1]
    assert last_line == "[nested_jax] step 4/10: held-out loss 4.0000"
    evals(8, {"step": 8})
    assert evals.step == 8 and math.isnan(writer.records[-1]["eval_loss"])
    with pytest.raises(NonFiniteError, match=r"step 8: the held-out loss is nan .* Step 8 was not "
                                             r"saved; the last checkpoint, step 4, in "
                                             r"/runs/x/checkpoints is kept"):
        evals.check()
    assert log[-1] == ("wait",) and ckpt.waits == 1  # the in-flight save completes first


def test_plot_redraws_on_its_cadence_and_survives_a_failure(tmp_path, monkeypatch, capsys):
    drawn = []
    monkeypatch.setattr(metrics_lib, "plot_loss_curve",
                        lambda src, png, title="": drawn.append((src, png, title)))
    plot = actions.Plot(4, 10, metrics_path="m.jsonl", png_path="c.png", title="t")
    fired = [s for s in range(0, 11) if plot(s)]
    assert fired == [0, 4, 8, 10] and drawn == [("m.jsonl", "c.png", "t")] * 4
    plot.draw()  # the final redraw
    assert len(drawn) == 5
    off = actions.Plot(4, 10, metrics_path=None, png_path="c.png", title="t", enabled=False)
    off(4), off.draw()
    assert len(drawn) == 5

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(metrics_lib, "plot_loss_curve", broken)
    plot(8)  # a warning, not an exception
    assert "could not draw loss_curve.png (OSError: disk full)" in capsys.readouterr().err


def test_host_reads_device_arrays_as_numpy():
    import jax.numpy as jnp

    got = actions.host({"a": jnp.ones((2,)), "b": jnp.asarray(3.0)})
    assert isinstance(got["a"], np.ndarray) and float(got["b"]) == 3.0


def test_a_launch_validates_its_config_once(tmp_path, monkeypatch):
    """The CLI's path (preflight, then train_and_evaluate(validated=True)) and a direct call
    of train_and_evaluate each run check_values once."""
    from nested_jax.train.loop import train_and_evaluate
    from tests.test_reliability_resume import tiny_config

    calls = []
    orig = validate.check_values
    monkeypatch.setattr(validate, "check_values", lambda c: (calls.append(1), orig(c))[1])
    over = {"train.steps": 0, "optim.schedule": "constant"}  # set up, nothing to train
    c = tiny_config(**over)
    validate.preflight(c)
    train_and_evaluate(c, str(tmp_path / "cli"), validated=True)
    assert len(calls) == 1
    calls.clear()
    summary = train_and_evaluate(tiny_config(**over), str(tmp_path / "direct"))
    assert len(calls) == 1 and summary["final_step"] == 0
    with pytest.raises(validate.ConfigError, match=r"model.dtype='float16' is not valid .*choose "
                                                   r"one of 'float32', 'bfloat16'\."):
        train_and_evaluate(tiny_config(**over, **{"model.dtype": "float16"}),
                           str(tmp_path / "bad"))
    assert not os.path.exists(tmp_path / "bad" / "config.json")


def test_choice_lists_are_the_owning_modules_lists():
    from nested_jax.model import blocks, cms, lm
    from nested_jax.ops import selfmod

    got = validate.choices()
    assert got["model.cms.mlp"] is cms.CMS_MLPS
    assert got["model.titans.mode"] is blocks.TITANS_MODES
    assert got["model.selfmod.mem_read"] is selfmod.MEM_READS
    assert got["model.dtype"] == tuple(lm.DTYPES) == ("float32", "bfloat16")
