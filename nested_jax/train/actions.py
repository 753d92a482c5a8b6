"""What the training loop does on a cadence of steps, one small object each.

    metrics = MetricsFlush(train.log_every, ...)   every step: read the previous step's
                                                   metrics; a log record every log_every
    evals   = HeldOutEval(eval.every_steps, ...)   held-out loss; `check()` stops a diverged run
    plot    = Plot(eval.every_steps, ...)          loss_curve.png after each evaluation
    saver   = Checkpoint(checkpoint.every_steps, ...)  the train state (async with Orbax)

Each fires at the multiples of its `every_steps` and at the run's last step, in the style of
clu's periodic actions (a few lines here rather than a dependency: clu is not installed and
its package pulls in TensorFlow, see train/metrics.py). The loop in train/loop.py calls them
in that order after dispatching each step; they share no state but what they are given.
"""

from __future__ import annotations

import sys
import time
from typing import Callable

import jax
import numpy as np

from nested_jax.train import metrics as metrics_lib


def host(tree):
    """A pytree of device arrays as NumPy arrays (blocks until they are computed)."""
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


class PeriodicAction:
    """Runs `_apply(step, *args)` at the multiples of `every_steps` and at `last_step`, so a
    run always ends with its log record, evaluation and checkpoint (step 0 is a multiple).

    `before`, when given, runs first each time the action fires: the loop passes the metrics
    flush, so a step's train record reaches metrics.jsonl before its evaluation or save.
    """

    def __init__(self, every_steps: int, last_step: int,
                 before: Callable[[], None] | None = None):
        self.every_steps, self.last_step, self.before = int(every_steps), int(last_step), before

    def due(self, step: int) -> bool:
        return step % self.every_steps == 0 or step == self.last_step

    def __call__(self, step: int, *args, force: bool = False) -> bool:
        """Run at `step` when it is due (or `force`); True when it ran."""
        if not (force or self.due(step)):
            return False
        if self.before is not None:
            self.before()
        self._apply(step, *args)
        return True

    def _apply(self, step: int, *args) -> None:
        raise NotImplementedError


class Console:
    """Where a run reports: a tqdm `bar` (train records set its postfix, other lines are
    written above it), else plain lines (`plain`: process 0 without a bar), else nothing
    (the other processes)."""

    def __init__(self, bar=None, plain: bool = False):
        self.bar, self.plain = bar, plain

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        elif self.plain:
            print(text, flush=True)

    def status(self, text: str, **postfix) -> None:
        """A train record: `postfix` on the bar, or `text` as a plain line."""
        if self.bar is not None:
            self.bar.set_postfix(**postfix)
        elif self.plain:
            print(text, flush=True)


class MetricsFlush(PeriodicAction):
    """Train metrics, read on the host one step late and logged every `every_steps`.

    `push(t, m)` comes right after step t is dispatched: it reads step t-1's metrics (the host
    never waits for the step the device is running) and holds step t's; `flush()` reads the
    held ones now (before an evaluation, a checkpoint, the end). Every read passes through the
    non-finite `guard`; a record, with the tokens/s since the previous record, is written at
    the cadence, at the last step and at the step where the guard aborts, whose
    NonFiniteError is raised once that record is written (before any further checkpoint).
    """

    def __init__(self, every_steps: int, last_step: int, *, writer, guard, console: Console,
                 tokens_per_step: int, start: int):
        super().__init__(every_steps, last_step)
        self.writer, self.guard, self.console = writer, guard, console
        self.tokens_per_step = tokens_per_step
        self.loss: float | None = None  # of the last step read
        self.tokens_per_sec: float | None = None  # of the last record written
        self._pending = None  # (step, metrics on device)
        self._since = (time.perf_counter(), start)  # the clock and step of the last record

    def push(self, step: int, metrics: dict) -> None:
        self.flush()
        self._pending = (step, metrics)

    def flush(self) -> None:
        if self._pending is None:
            return
        step, metrics = self._pending
        self._pending = None
        m = {k: float(v) for k, v in host(metrics).items()}
        self.guard.update(step, m)  # "nonfinite" → cumulative "nonfinite_skipped"
        self.loss = m["loss"]
        self(step, m, force=self.guard.abort is not None)
        self.guard.check()  # K non-finite steps in a row: NonFiniteError

    def _apply(self, step: int, m: dict) -> None:
        now = time.perf_counter()
        then, step_then = self._since
        tps = (step - step_then) * self.tokens_per_step / max(now - then, 1e-9)
        self._since = (now, step)
        rec = {"step": step, **m, "tokens_per_sec": tps}
        self.writer.write(rec)
        self.tokens_per_sec = tps
        self.console.status(metrics_lib.log_line(rec, self.last_step),
                            loss=f"{m['loss']:.3f}", tok_s=f"{tps:,.0f}")


class Checkpoint(PeriodicAction):
    """Saves the train state, the data iterator's position and the run's meta (the guard's
    counts included, so a resumed run counts on) through `checkpointer` (asynchronously when
    it is async) at the cadence, at the last step, and where a stop was requested (the loop
    passes `force=True`). `last_saved` is the newest step saved, `start` until the first."""

    def __init__(self, every_steps: int, last_step: int, *, checkpointer, data_iter,
                 meta: dict, guard_state: Callable[[], dict], tokens_per_step: int, start: int,
                 before: Callable[[], None] | None = None):
        super().__init__(every_steps, last_step, before)
        self.checkpointer, self.data_iter = checkpointer, data_iter
        self.meta, self.guard_state, self.tokens_per_step = meta, guard_state, tokens_per_step
        self.last_saved = start

    def _apply(self, step: int, state: dict) -> None:
        self.checkpointer.save(
            step, params=state["params"], opt={"opt_state": state["opt_state"],
                                               "step": state["step"]},
            fast=state.get("fast"), data_iter=self.data_iter,
            meta=dict(self.meta, step=step, tokens_seen=step * self.tokens_per_step,
                      **self.guard_state()))
        self.last_saved = step

    def wait(self) -> None:
        """Let an in-flight save complete."""
        self.checkpointer.wait()

    def kept(self) -> str:
        """Which checkpoint a run that stops now leaves, in words."""
        if not self.last_saved:
            return "no checkpoint was saved"
        return (f"the last checkpoint, step {self.last_saved}, in "
                f"{self.checkpointer.directory} is kept")


class HeldOutEval(PeriodicAction):
    """The held-out loss of `measure(state)`: written to metrics.jsonl (`writer`) and printed.
    `check()` then stops a run whose latest held-out loss is non-finite (the model diverged)
    before that step is saved: once an in-flight save of an earlier step has completed, it
    raises NonFiniteError naming the checkpoint that is kept."""

    def __init__(self, every_steps: int, last_step: int, *, measure: Callable[[dict], float],
                 writer, console: Console, checkpoint: Checkpoint,
                 before: Callable[[], None] | None = None):
        super().__init__(every_steps, last_step, before)
        self.measure, self.writer, self.console = measure, writer, console
        self.checkpoint = checkpoint
        self.step: int | None = None  # of the last evaluation
        self.loss: float | None = None

    def _apply(self, step: int, state: dict) -> None:
        self.step, self.loss = step, self.measure(state)
        rec = {"step": step, "eval_loss": self.loss}
        self.writer.write(rec)
        self.console.line(metrics_lib.log_line(rec, self.last_step))

    def check(self) -> None:
        if self.loss is None or np.isfinite(self.loss):
            return
        self.checkpoint.wait()
        s = self.step
        raise metrics_lib.NonFiniteError(
            f"training stopped at step {s}: the held-out loss is {self.loss} (non-finite): "
            f"the model diverged. Step {s} was not saved; {self.checkpoint.kept()}. Fix: rerun "
            "with a lower --config.optim.lr (or, for online variants, a smaller --config."
            "model.online.teach_scale); the same command resumes from the last checkpoint, "
            "--resume-step N from an earlier one.")


class Plot(PeriodicAction):
    """Redraws `png_path` from the metrics file (the loop gives it the evaluation's cadence,
    so the curve is new after each evaluation, and calls `draw()` once more at the end). Off
    unless `enabled` (process 0 with logging.plot); a plotting failure is a warning, never
    the end of a run."""

    def __init__(self, every_steps: int, last_step: int, *, metrics_path: str | None,
                 png_path: str, title: str, enabled: bool = True):
        super().__init__(every_steps, last_step)
        self.metrics_path, self.png_path, self.title = metrics_path, png_path, title
        self.enabled = enabled

    def _apply(self, step: int) -> None:
        self.draw()

    def draw(self) -> None:
        if not self.enabled:
            return
        try:
            metrics_lib.plot_loss_curve(self.metrics_path, self.png_path, title=self.title)
        except Exception as e:  # noqa: BLE001
            print(f"[nested_jax] warning: could not draw loss_curve.png ({type(e).__name__}: "
                  f"{e}).", file=sys.stderr, flush=True)
