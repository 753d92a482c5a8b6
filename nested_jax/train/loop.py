"""train_and_evaluate(config, workdir): the training loop around the pure step."""

from __future__ import annotations

import contextlib
import functools
import json
import os

import jax
import numpy as np
from flax import nnx

import nested_jax
from nested_jax.checkpoint import Checkpointer, rollback
from nested_jax.checkpoint.preemption import StopRequest
from nested_jax.data import loader
from nested_jax.model.lm import abstract_model, build_model
from nested_jax.model.loss import streams
from nested_jax.model.online import init_fast, strip_kv
from nested_jax.train import mesh as mesh_lib
from nested_jax.train import metrics as metrics_lib
from nested_jax.train import optim, step as step_lib
from nested_jax.train import actions, compile_cache, distributed, parallel
from nested_jax.git_info import git_commit
from nested_jax.train.validate import check_resume_config, finalize_config


def evaluate(eval_fn, params, batches, mesh, step) -> float:
    """The held-out loss per token over `batches` (every process holds them whole)."""
    tot, n = 0.0, 0.0
    for b in batches:
        s, c = eval_fn(params, mesh_lib.shard_full_batch(b, mesh), step)
        tot, n = tot + float(s), n + float(c)
    return tot / max(n, 1.0)


def init_or_restore(config, ckpt: Checkpointer, train_iter, *, tx, mesh, tokenizer_sha256: str):
    """The train state on the mesh: a fresh sharded init (`jax.eval_shape` → shardings →
    jitted init, nothing materialised unsharded), or the latest checkpoint restored into the
    same shardings together with the data iterator's state. Returns (state, shardings,
    start step, the resumed checkpoint's meta or None)."""

    def init_state():
        model = build_model(config.model, config.seed)
        params = nnx.to_pure_dict(nnx.split(model)[1])
        fast = None
        if streams(config.model):  # streaming fast state lives in the train state
            fast = strip_kv(init_fast(model, config.model, config.train.batch_size,
                                      config.train.seq_len))
        return step_lib.init_train_state(params, tx, fast)

    abstract_state = jax.eval_shape(init_state)
    shardings = parallel.state_shardings(config, mesh, abstract_state)  # FSDP / rows
    start = ckpt.latest_step()
    if start is None:
        state = jax.jit(init_state, out_shardings=shardings)()
        if config.train.init_from:
            abstract_params = jax.tree.map(
                lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                abstract_state["params"], shardings["params"])
            state["params"] = params_from(config.train.init_from, abstract_params,
                                          tokenizer_sha256)
        return state, shardings, 0, None
    meta = ckpt.read_meta(start)
    check_resume_config(meta, config, tokenizer_sha256)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            abstract_state, shardings)
    same_procs = meta.get("process_count", 1) == jax.process_count()  # else data files differ
    got = ckpt.restore(start, params=abstract["params"],
                       opt={"opt_state": abstract["opt_state"], "step": abstract["step"]},
                       fast=abstract.get("fast"), data_iter=train_iter if same_procs else None)
    if not same_procs:
        distributed.restore_data_state(ckpt.directory, start, train_iter)
    state = {"params": got["params"], "opt_state": got["opt"]["opt_state"],
             "step": got["opt"]["step"]}
    if "fast" in abstract:
        state["fast"] = got["fast"]
    print(f"[nested_jax] resumed from step {start} in {ckpt.directory}", flush=True)
    return state, shardings, start, meta


def params_from(source: str, abstract_params, tokenizer_sha256: str):
    """train.init_from: the params of the checkpoint `source` ("DIR" = its newest intact
    step, "DIR@STEP"), restored straight into the shardings of `abstract_params`. The
    source must hold a model of the same parameter shapes and the same tokenizer."""
    from nested_jax.checkpoint.io import CheckpointError, checkpoint_dir, config_from_meta
    from nested_jax.train.validate import ConfigError

    path, _, step_s = source.partition("@")
    try:
        step = int(step_s) if step_s else None
    except ValueError:
        raise ConfigError(f"train.init_from={source!r}: the part after '@' must be a step "
                          "number. Fix: DIR or DIR@STEP.") from None
    d = checkpoint_dir(path)
    try:
        src = Checkpointer(d, read_only=True, async_save=False)
        try:
            step = src.pick_step(step, hash_items=("params", "meta"))[0]
            meta = src.read_meta(step)
            want = meta.get("tokenizer_sha256")
            if want and want != tokenizer_sha256:
                raise ConfigError(
                    f"train.init_from={source!r} was made with another tokenizer (sha256 "
                    f"{want[:12]}…, this config's is {tokenizer_sha256[:12]}…). Fix: use "
                    f"data.tokenizer={config_from_meta(meta).data.tokenizer!r}.")
            got = src.restore(step, params=abstract_params)["params"]
        finally:
            src.manager.close()
    except CheckpointError as e:
        raise ConfigError(f"train.init_from={source!r}: {e} Fix: pass a workdir with an intact "
                          "checkpoint whose model matches model.*.") from None
    print(f"[nested_jax] initialised the params from {d} step {step} (fresh optimizer)",
          flush=True)
    return got


def _roll_back(workdir: str, resume_step: int) -> None:
    """--step: move the checkpoints after `resume_step` aside (process 0), all wait."""
    proc = jax.process_index()
    moved = rollback(os.path.join(workdir, "checkpoints"), resume_step, lead=proc == 0)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("nested_jax_rollback")
    if moved and proc == 0:
        print(f"[nested_jax] --step {resume_step}: moved later checkpoints aside "
              f"({', '.join(moved)})", flush=True)


def train_and_evaluate(config, workdir: str, resume_step: int | None = None, *,
                       validated: bool = False) -> dict:
    """Train per `config`, writing checkpoints, metrics.jsonl (+ TensorBoard events) and
    loss_curve.png to `workdir`.

    Rerunning with the same workdir resumes from the latest checkpoint; `resume_step` resumes
    from that step instead (later steps are moved aside, see nested_jax.checkpoint.rollback).
    Whatever happens (an exception, a signal), the signal handlers, the checkpoint manager
    (in-flight saves complete), the metrics writers and the progress bar are closed.
    `validated=True` says the caller has run `validate.preflight` on this config (the CLI
    does), so its checks are not repeated; otherwise they run here, once.
    Returns a summary (also written to summary.json).
    """
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    tok = loader.tokenizer_for(config.data)
    if not validated:
        finalize_config(config, tok.vocab_size)
    loader.check_vocab(config.data, config.model.vocab_size)

    compile_cache.enable(config.train.compile_cache)  # before the first compile
    mesh = mesh_lib.make_mesh(config.mesh)
    n_proc, proc = jax.process_count(), jax.process_index()
    parallel.check_config(config, mesh)
    total = config.train.steps
    tx = optim.build_optimizer(config.optim, total, freeze=config.model.freeze)
    lr_schedule = optim.schedule(config.optim, total)
    fn = abstract_model(config.model)
    _check_freeze(fn, config.model.freeze)
    if resume_step is not None:
        _roll_back(workdir, resume_step)

    with contextlib.ExitStack() as cleanup:  # closed in reverse order, on any exit
        ckpt = Checkpointer(os.path.join(workdir, "checkpoints"),
                            max_to_keep=config.checkpoint.max_to_keep,
                            async_save=config.checkpoint.async_save)
        cleanup.callback(ckpt.close)
        train_iter = loader.make_train_iterator(
            config.data, seq_len=config.train.seq_len, batch_size=config.train.batch_size,
            seed=config.seed, process_index=proc, process_count=n_proc)
        state, shardings, start, meta = init_or_restore(config, ckpt, train_iter, tx=tx,
                                                        mesh=mesh, tokenizer_sha256=tok.sha256)
        if proc == 0:
            with open(os.path.join(workdir, "config.json"), "w") as f:
                f.write(config.to_json_best_effort(indent=2))

        p_train = parallel.jit_train_step(config, mesh, shardings, fn=fn, tx=tx,
                                          lr_schedule=lr_schedule)  # shard_map DP (mesh.mode)
        p_eval = jax.jit(functools.partial(step_lib.eval_step, fn=fn))
        eval_batches = loader.make_eval_batches(
            config.data, seq_len=config.train.seq_len, batch_size=config.eval.batch_size,
            num_batches=config.eval.num_batches)

        writer = _open_writer(config, workdir, start) if proc == 0 else distributed.NullWriter()
        cleanup.callback(writer.close)
        guard = metrics_lib.NonFiniteGuard(  # counts skipped non-finite steps; aborts after K
            workdir, config.train.max_nonfinite_in_a_row,
            meta, save_batches=proc == 0, before_abort=ckpt.wait)
        if start >= total and proc == 0:
            print(f"[nested_jax] the run is already at step {start} (train.steps={total}): "
                  "nothing to train (raise --config.train.steps to train further).", flush=True)
        bar = _open_bar(config, start) if proc == 0 and config.logging.progress_bar else None
        if bar is not None:
            cleanup.callback(bar.close)
        console = actions.Console(bar, plain=proc == 0 and not config.logging.progress_bar)

        tokens_per_step = config.train.batch_size * config.train.seq_len
        metrics = actions.MetricsFlush(
            config.train.log_every, total, writer=writer, guard=guard, console=console,
            tokens_per_step=tokens_per_step, start=start)
        saver = actions.Checkpoint(
            config.checkpoint.every_steps, total, checkpointer=ckpt, data_iter=train_iter,
            meta=_checkpoint_meta(config, tok.sha256, n_proc), guard_state=guard.state,
            tokens_per_step=tokens_per_step, start=start, before=metrics.flush)
        evals = actions.HeldOutEval(
            config.eval.every_steps, total, writer=writer, console=console, checkpoint=saver,
            measure=lambda st: evaluate(p_eval, st["params"], eval_batches, mesh, st["step"]),
            before=metrics.flush)
        plot = actions.Plot(  # on the evaluation's cadence: redrawn after each evaluation
            config.eval.every_steps, total, metrics_path=writer.path,
            png_path=os.path.join(workdir, "loss_curve.png"),
            title=f"{config.model.variant} on {config.data.dataset}",
            enabled=proc == 0 and config.logging.plot)

        stop = StopRequest().install()  # SIGTERM/SIGINT: checkpoint after this step, exit 0
        cleanup.callback(stop.uninstall)
        stopped_at = None
        try:
            if start == 0 and total > 0:  # the initial model's held-out loss
                evals(0, state)
                plot(0)
                evals.check()
            for step in range(start + 1, total + 1):
                batch = next(train_iter)
                guard.remember(step, batch)
                state, m = p_train(state, {"tokens": mesh_lib.global_batch(batch["tokens"], mesh)})
                metrics.push(step, m)  # reads step - 1's metrics: `step` is already dispatched
                console.advance()
                evals(step, state)
                plot(step)
                evals.check()  # a non-finite held-out loss: raise before `step` is saved
                stopping = stop.requested(step)
                saver(step, state, force=stopping)
                if stopping:
                    stopped_at = step
                    break
            metrics.flush()
        except metrics_lib.NonFiniteError as e:  # diverged: summary.json says so, then stop
            if proc == 0:
                _write_summary(workdir, dict(
                    _measured(start, metrics, evals), diverged=" ".join(str(e).split()),
                    last_checkpoint=saver.last_saved or None))
            raise
    # Everything is closed here: the last save is committed, the writers are flushed.
    plot.draw()
    summary = _measured(start, metrics, evals)
    if stopped_at is not None:
        summary["stopped_at"] = stopped_at
    final = stopped_at if stopped_at is not None else max(total, start)
    summary.update(final_step=final, eval_loss=evals.loss, vocab_size=config.model.vocab_size,
                   ln_vocab=float(np.log(config.model.vocab_size)))
    if proc == 0:
        _fill_from_metrics(summary, writer.path, final)
        _write_summary(workdir, summary)
    return summary


def _check_freeze(fn, freeze) -> None:
    """model.freeze names parameters the model has (a ConfigError naming the fix otherwise)."""
    try:
        optim.check_freeze(fn.params(), freeze)
    except ValueError as e:
        from nested_jax.train.validate import ConfigError

        raise ConfigError(str(e), fix="correct --config.model.freeze.") from None


def _open_writer(config, workdir: str, start: int) -> metrics_lib.MetricsWriter:
    """Process 0's metrics.jsonl writer with its TensorBoard / W&B sinks, resumed at `start`."""
    sinks = metrics_lib.make_sinks(config.logging, workdir, start, config.to_json_best_effort())
    return metrics_lib.MetricsWriter(workdir, resume_step=start, sinks=sinks)


def _open_bar(config, start: int):
    from tqdm.auto import tqdm

    return tqdm(total=config.train.steps, initial=start, desc=f"train {config.model.variant}",
                dynamic_ncols=True)


def _checkpoint_meta(config, tokenizer_sha256: str, process_count: int) -> dict:
    """What every checkpoint's meta records besides its step (the Checkpoint action adds it)."""
    return {
        "tokenizer_sha256": tokenizer_sha256,
        "package_version": nested_jax.__version__,
        "git_commit": git_commit(),
        "variant": config.model.variant,
        "process_count": process_count,
        "config": config.to_json_best_effort(),
    }


def _measured(start: int, metrics: actions.MetricsFlush, evals: actions.HeldOutEval) -> dict:
    """The summary of what this launch measured (a key only for a value it has)."""
    out = {"start_step": start}
    if evals.step is not None:
        out["eval_step"] = evals.step
    if metrics.loss is not None:
        out["loss"] = metrics.loss
    if metrics.tokens_per_sec is not None:
        out["tokens_per_sec"] = metrics.tokens_per_sec
    return out


def _fill_from_metrics(summary: dict, metrics_path: str, final: int) -> None:
    """A rerun of a finished run (or a stop before any evaluation) measured nothing new:
    take the last values metrics.jsonl holds instead of writing nulls over them."""
    recs = metrics_lib.read_metrics(metrics_path)
    if summary.get("eval_step") is None:
        summary["eval_step"], summary["eval_loss"] = _last(recs, "eval_loss", final)
    for key in ("loss", "tokens_per_sec"):
        if summary.get(key) is None:
            summary[key] = _last(recs, key, final)[1]


def _write_summary(workdir: str, summary: dict) -> None:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)


def _last(recs: list[dict], key: str, upto: int):
    """(step, value) of the last record with `key` at or before step `upto`, else (None, None)."""
    for r in reversed(recs):
        if key in r and r.get("step", 0) <= upto:
            return r["step"], r[key]
    return None, None
