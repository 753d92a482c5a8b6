"""metrics.jsonl writer (resume-aware) with TensorBoard and optional Weights & Biases copies,
the plain log lines of batch jobs, the non-finite step guard and the loss-curve plot.

TensorBoard: tensorboardX. It writes the event files TensorBoard reads with numpy and
protobuf only (no TensorFlow, no PyTorch) and is maintained (2.6.5, 2026). clu's
`metric_writers` would fit the JAX stack but `import clu.metric_writers` imports TensorFlow
(its SummaryWriter is `tf.summary`), about 2 GB more to install, and clu's last release
(0.0.12) dates from 2024.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import numpy as np


def _numbers(record: dict) -> dict[str, float]:
    """The numeric fields of a record other than its step."""
    return {k: float(v) for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


class TensorBoardSink:
    """Every numeric field of every record as a TensorBoard scalar, tagged with its
    metrics.jsonl key (`loss`, `eval_loss`, `cms/<layer>/<level>/updates`, ...), in
    `WORKDIR/tensorboard/`. On resume, TensorBoard drops the events an earlier process wrote
    after the resumed step (`purge_step`), as MetricsWriter drops those records."""

    def __init__(self, logdir: str, resume_step: int | None):
        from tensorboardX import SummaryWriter

        self.logdir = logdir
        purge = resume_step + 1 if resume_step else 0  # events at or after it are dropped
        # A new file per writer (the default name has one-second resolution: a quick rerun
        # would overwrite the previous file); names sort in writing order.
        self._w = SummaryWriter(logdir=logdir, purge_step=purge, flush_secs=10,
                                filename_suffix=f".{time.time_ns()}")

    def write(self, record: dict) -> None:
        step = int(record.get("step", 0))
        for k, v in _numbers(record).items():
            self._w.add_scalar(k, v, global_step=step)
        if "eval_loss" in record:
            self._w.flush()

    def close(self) -> None:
        self._w.close()


class WandbSink:
    """The same records logged to a Weights & Biases run (optional: used when `wandb` imports and
    logging.wandb_project is set; WANDB_MODE=offline works without a network). The run id is
    kept in WORKDIR/wandb_run_id so a resumed training continues the same W&B run."""

    def __init__(self, workdir: str, project: str, entity: str, config: dict):
        import wandb

        id_path = os.path.join(workdir, "wandb_run_id")
        run_id = open(id_path).read().strip() if os.path.isfile(id_path) else None
        run_id = run_id or wandb.util.generate_id()
        self._run = wandb.init(project=project, entity=entity or None, id=run_id,
                               resume="allow", name=os.path.basename(workdir), dir=workdir,
                               config=config)
        with open(id_path, "w") as f:
            f.write(run_id + "\n")

    def write(self, record: dict) -> None:
        self._run.log(_numbers(record), step=int(record.get("step", 0)))

    def close(self) -> None:
        self._run.finish()


def make_sinks(logging_cfg, workdir: str, resume_step: int | None, config_json: str) -> list:
    """TensorBoard (logging.tensorboard) and W&B (logging.wandb_project, when wandb imports)."""
    sinks = []
    if logging_cfg.tensorboard:
        try:
            sinks.append(TensorBoardSink(os.path.join(workdir, "tensorboard"), resume_step))
        except ImportError:
            print("[nested_jax] warning: tensorboardX is not installed, so no TensorBoard events "
                  "are written. Fix: `pip install tensorboardX` (a nested_jax dependency).",
                  file=sys.stderr, flush=True)
    project = logging_cfg.wandb_project
    if project:
        try:
            import wandb  # noqa: F401
        except ImportError:
            print(f"[nested_jax] warning: logging.wandb_project={project!r} but wandb is not "
                  "installed; logging to metrics.jsonl and TensorBoard only. Fix: `pip install "
                  "wandb`.", file=sys.stderr, flush=True)
        else:
            try:
                sinks.append(WandbSink(workdir, project, logging_cfg.wandb_entity,
                                       json.loads(config_json)))
            except Exception as e:  # noqa: BLE001 - W&B is optional: training goes on
                print(f"[nested_jax] warning: W&B logging is off ({type(e).__name__}: "
                      f"{str(e)[:200]}); set WANDB_MODE=offline to log without a network.",
                      file=sys.stderr, flush=True)
    return sinks


def log_line(record: dict, total: int) -> str:
    """The plain log line of a train record (step, loss, lr, tokens/s) or an eval record."""
    s = record["step"]
    if "eval_loss" in record:
        return f"[nested_jax] step {s}/{total}: held-out loss {record['eval_loss']:.4f}"
    line = (f"[nested_jax] step {s}/{total}  loss {record['loss']:.4f}  lr {record['lr']:.3e}  "
            f"tokens/s {record.get('tokens_per_sec', 0.0):,.0f}")
    if record.get("nonfinite_skipped"):
        line += f"  non-finite skipped {int(record['nonfinite_skipped'])}"
    return line


class MetricsWriter:
    """Appends one JSON record per line (and hands each record to the `sinks`: TensorBoard,
    W&B). On resume, drops records after the resumed step so the file reads as if the run had
    never been interrupted; a fresh start (resume_step None or 0: no checkpoint yet) drops
    every record of a run killed before its first checkpoint."""

    def __init__(self, workdir: str, resume_step: int | None, sinks=()):
        self.sinks = list(sinks)
        self.path = os.path.join(workdir, "metrics.jsonl")
        if os.path.exists(self.path):
            keep = []
            if resume_step:
                with open(self.path) as f:
                    for line in f:
                        line = line.strip()
                        if not line:
                            continue
                        try:
                            rec = json.loads(line)
                        except json.JSONDecodeError:
                            continue  # a line cut by a crash
                        if rec.get("step", 0) <= resume_step:
                            keep.append(rec)
            with open(self.path, "w") as f:
                for rec in keep:
                    f.write(json.dumps(rec) + "\n")
        self._f = open(self.path, "a")

    def write(self, record: dict) -> None:
        clean = {k: (float(v) if hasattr(v, "__float__") and not isinstance(v, (int, bool)) else v)
                 for k, v in record.items()}
        self._f.write(json.dumps(clean) + "\n")
        self._f.flush()
        for sink in self.sinks:
            sink.write(clean)

    def close(self) -> None:
        self._f.close()
        for sink in self.sinks:
            sink.close()


class NonFiniteError(RuntimeError):
    """Training produced non-finite losses or gradients too many steps in a row."""


class NonFiniteGuard:
    """Host side of the non-finite step guard (the jitted step skips the update itself and
    reports metrics["nonfinite"] = 1.0).

    Counts skipped steps (`nonfinite_skipped`, cumulative, added to every metrics record
    and to the checkpoint meta so a resumed run counts on), saves each offending batch to
    `workdir/nonfinite_batch_step<N>.npy`. After `max_in_a_row` consecutive skips (0 =
    never) `abort` is set; `check()` (called once the step's record is written, before any
    further checkpoint) raises it as NonFiniteError.
    """

    def __init__(self, workdir: str, max_in_a_row: int, meta: dict | None = None, *,
                 save_batches: bool = True, before_abort=None):
        self.workdir, self.max_in_a_row = workdir, int(max_in_a_row)
        self.skipped = int((meta or {}).get("nonfinite_skipped", 0))
        self.in_a_row = int((meta or {}).get("nonfinite_in_a_row", 0))
        self.save_batches, self.before_abort = save_batches, before_abort
        self._batches: dict[int, np.ndarray] = {}
        self.abort: NonFiniteError | None = None

    def remember(self, step: int, batch) -> None:
        """Keep the host batch of `step` until its metrics are read (one step later)."""
        self._batches[step] = batch
        for s in [s for s in self._batches if s < step - 2]:
            del self._batches[s]

    def state(self) -> dict:
        return {"nonfinite_skipped": self.skipped, "nonfinite_in_a_row": self.in_a_row}

    def update(self, step: int, m: dict) -> None:
        """Consume m["nonfinite"] of `step`; add m["nonfinite_skipped"]; set `abort` after K."""
        bad = bool(m.pop("nonfinite", 0.0))
        batch = self._batches.pop(step, None)
        if not bad:
            self.in_a_row = 0
            m["nonfinite_skipped"] = self.skipped
            return
        self.skipped += 1
        self.in_a_row += 1
        m["nonfinite_skipped"] = self.skipped
        path = os.path.join(self.workdir, f"nonfinite_batch_step{step}.npy")
        if self.save_batches and batch is not None:
            tokens = batch["tokens"] if isinstance(batch, dict) else batch
            np.save(path, np.asarray(tokens))
        print(f"[nested_jax] warning: step {step}: non-finite loss or gradient "
              f"(loss={m.get('loss')}, grad_norm={m.get('grad_norm')}); update skipped "
              f"({self.in_a_row} in a row, {self.skipped} in total); batch saved to {path}.",
              file=sys.stderr, flush=True)
        if self.max_in_a_row and self.in_a_row >= self.max_in_a_row:
            self.abort = NonFiniteError(
                f"training stopped at step {step}: {self.in_a_row} steps in a row had a "
                f"non-finite loss or gradient (train.max_nonfinite_in_a_row="
                f"{self.max_in_a_row}); their updates were skipped, so the last checkpoint in "
                f"{os.path.join(self.workdir, 'checkpoints')} holds the last good weights. The "
                f"offending batch is {path}. Fix: inspect that batch, then rerun the same command "
                "with a lower --config.optim.lr (it resumes from that checkpoint), or with a "
                "larger --config.train.max_nonfinite_in_a_row to step past a few bad batches.")

    def check(self) -> None:
        """Raise the pending NonFiniteError (after letting an in-flight good save finish)."""
        if self.abort is not None:
            if self.before_abort is not None:
                self.before_abort()
            raise self.abort


def read_metrics(path: str) -> list[dict]:
    """The records of a metrics.jsonl; [] when it does not exist. Lines that do not parse (a
    run killed mid-write leaves a torn last line) are skipped."""
    out = []
    if not os.path.isfile(path):
        return out
    with open(path) as f:
        for line in f:
            if line.strip():
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
    return out


def plot_loss_curve(metrics_path: str, png_path: str, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = read_metrics(metrics_path)
    tr = [(r["step"], r["loss"]) for r in recs if "loss" in r and math.isfinite(r["loss"])]
    ev = [(r["step"], r["eval_loss"]) for r in recs if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    if tr:
        ax.plot(*zip(*tr), label="train loss", lw=1.2)
    if ev:
        ax.plot(*zip(*ev), "o-", label="held-out loss", lw=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title or "loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
