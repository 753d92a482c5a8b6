"""train_and_evaluate(config, workdir): the training loop around the pure step."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import time

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
from nested_jax.train import distributed, parallel
from nested_jax.git_info import git_commit
from nested_jax.train.validate import check_resume_config, finalize_config


def _host(tree):
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


def evaluate(eval_fn, params, batches, mesh, step) -> float:
    tot, n = 0.0, 0.0
    for b in batches:
        s, c = eval_fn(params, mesh_lib.shard_full_batch(b, mesh), step)
        tot, n = tot + float(s), n + float(c)
    return tot / max(n, 1.0)


def _last(recs: list[dict], key: str, upto: int):
    """(step, value) of the last record with `key` at or before step `upto`, else (None, None)."""
    for r in reversed(recs):
        if key in r and r.get("step", 0) <= upto:
            return r["step"], r[key]
    return None, None


def _plot(config, metrics_path: str, workdir: str) -> None:
    """(Re)draw loss_curve.png; a plotting failure is a warning, never the end of a run."""
    try:
        metrics_lib.plot_loss_curve(metrics_path, os.path.join(workdir, "loss_curve.png"),
                                    title=f"{config.model.variant} on {config.data.dataset}")
    except Exception as e:  # noqa: BLE001
        print(f"[nested_jax] warning: could not draw loss_curve.png ({type(e).__name__}: {e}).",
              file=sys.stderr, flush=True)


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
    """--resume-step: move the checkpoints after `resume_step` aside (process 0), all wait."""
    proc = jax.process_index()
    moved = rollback(os.path.join(workdir, "checkpoints"), resume_step, lead=proc == 0)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("nested_jax_rollback")
    if moved and proc == 0:
        print(f"[nested_jax] --resume-step {resume_step}: moved later checkpoints aside "
              f"({', '.join(moved)})", flush=True)


def train_and_evaluate(config, workdir: str, resume_step: int | None = None) -> dict:
    """Train per `config`, writing checkpoints, metrics.jsonl (+ TensorBoard events) and
    loss_curve.png to `workdir`.

    Rerunning with the same workdir resumes from the latest checkpoint; `resume_step` resumes
    from that step instead (later steps are moved aside, see nested_jax.checkpoint.rollback).
    Whatever happens (an exception, a signal), the signal handlers, the checkpoint manager
    (in-flight saves complete), the metrics writers and the progress bar are closed.
    Returns a summary (also written to summary.json).
    """
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    tok = loader.tokenizer_for(config.data)
    finalize_config(config, tok.vocab_size)
    loader.check_vocab(config.data, config.model.vocab_size)

    mesh = mesh_lib.make_mesh(config.mesh)
    n_proc, proc = jax.process_count(), jax.process_index()
    parallel.check_config(config, mesh)
    total = config.train.steps
    tx = optim.build_optimizer(config.optim, total, freeze=config.model.freeze)
    lr_schedule = optim.schedule(config.optim, total)
    fn = abstract_model(config.model)
    try:
        optim.check_freeze(fn.params(), config.model.freeze)
    except ValueError as e:
        from nested_jax.train.validate import ConfigError

        raise ConfigError(str(e), fix="correct --config.model.freeze.") from None
    if resume_step is not None:
        _roll_back(workdir, resume_step)

    summary: dict = {}
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
        summary["start_step"] = start
        if proc == 0:
            with open(os.path.join(workdir, "config.json"), "w") as f:
                f.write(config.to_json_best_effort(indent=2))

        p_train = parallel.jit_train_step(config, mesh, shardings, fn=fn, tx=tx,
                                          lr_schedule=lr_schedule)  # shard_map DP (mesh.mode)
        p_eval = jax.jit(functools.partial(step_lib.eval_step, fn=fn))
        eval_batches = loader.make_eval_batches(
            config.data, seq_len=config.train.seq_len, batch_size=config.eval.batch_size,
            num_batches=config.eval.num_batches)

        writer = distributed.NullWriter()
        if proc == 0:
            sinks = metrics_lib.make_sinks(config.logging, workdir, start,
                                           config.to_json_best_effort())
            writer = metrics_lib.MetricsWriter(workdir, resume_step=start, sinks=sinks)
        cleanup.callback(writer.close)
        plain = proc == 0 and not config.logging.progress_bar  # one line per log / eval
        plot = proc == 0 and config.logging.plot
        guard = metrics_lib.NonFiniteGuard(  # counts skipped non-finite steps; aborts after K
            workdir, config.train.max_nonfinite_in_a_row,
            meta, save_batches=proc == 0, before_abort=ckpt.wait)
        tokens_per_step = config.train.batch_size * config.train.seq_len
        meta_base = {
            "tokenizer_sha256": tok.sha256,
            "package_version": nested_jax.__version__,
            "git_commit": git_commit(),
            "variant": config.model.variant,
            "process_count": n_proc,
        }
        last_eval = None
        last_saved = start
        if start >= total and proc == 0:
            print(f"[nested_jax] the run is already at step {start} (train.steps={total}): "
                  "nothing to train (raise --config.train.steps to train further).", flush=True)
        bar = None
        if config.logging.progress_bar and proc == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, initial=start, desc=f"train {config.model.variant}",
                       dynamic_ncols=True)
            cleanup.callback(bar.close)

        def save(step_done: int):
            ckpt.save(step_done, params=state["params"],
                      opt={"opt_state": state["opt_state"], "step": state["step"]},
                      fast=state.get("fast"), data_iter=train_iter,
                      meta=dict(meta_base, config=config.to_json_best_effort(), step=step_done,
                                tokens_seen=step_done * tokens_per_step, **guard.state()))

        def record_eval(s: int, loss: float) -> None:
            """Write the held-out loss, print it, redraw the PNG; non-finite = divergence."""
            writer.write({"step": s, "eval_loss": loss})
            summary["eval_step"] = s
            line = metrics_lib.log_line({"step": s, "eval_loss": loss}, total)
            if bar is not None:
                bar.write(line)
            elif proc == 0:
                print(line, flush=True)
            if plot:
                _plot(config, writer.path, workdir)
            if not np.isfinite(loss):
                ckpt.wait()  # an in-flight save of an earlier step completes
                where = (f"the last checkpoint, step {last_saved}, in {ckpt.directory} is kept"
                         if last_saved else "no checkpoint was saved")
                raise metrics_lib.NonFiniteError(
                    f"training stopped at step {s}: the held-out loss is {loss} (non-finite): "
                    f"the model diverged. Step {s} was not saved; {where}. Fix: rerun with a "
                    "lower --config.optim.lr (or, for online variants, a smaller --config."
                    "model.online.teach_scale); the same command resumes from the last "
                    "checkpoint, --resume-step N from an earlier one.")

        pending = None  # (step, metrics on device): read after dispatching the next step
        t_last, step_last = time.perf_counter(), start

        def flush(pending_item):
            nonlocal t_last, step_last
            s, m = pending_item
            m = {k: float(v) for k, v in _host(m).items()}
            guard.update(s, m)  # "nonfinite" → cumulative "nonfinite_skipped"
            summary["loss"] = m["loss"]
            if s % config.train.log_every == 0 or s == total or guard.abort:
                now = time.perf_counter()
                tps = (s - step_last) * tokens_per_step / max(now - t_last, 1e-9)
                t_last, step_last = now, s
                rec = {"step": s, **m, "tokens_per_sec": tps}
                writer.write(rec)
                summary["tokens_per_sec"] = tps
                if bar is not None:
                    bar.set_postfix(loss=f"{m['loss']:.3f}", tok_s=f"{tps:,.0f}")
                elif plain:
                    print(metrics_lib.log_line(rec, total), flush=True)
            guard.check()  # K non-finite steps in a row: NonFiniteError, nothing more is saved

        def run_steps() -> None:
            nonlocal state, pending, last_eval, last_saved
            if start == 0 and total > 0:  # the initial model's held-out loss
                last_eval = evaluate(p_eval, state["params"], eval_batches, mesh, state["step"])
                record_eval(0, last_eval)
            for i in range(start, total):
                batch = next(train_iter)
                guard.remember(i + 1, batch)
                state, m = p_train(state, {"tokens": mesh_lib.global_batch(batch["tokens"], mesh)})
                if pending is not None:
                    flush(pending)
                pending = (i + 1, m)
                if bar is not None:
                    bar.update(1)
                s = i + 1
                if s % config.eval.every_steps == 0 or s == total:
                    flush(pending)
                    pending = None
                    last_eval = evaluate(p_eval, state["params"], eval_batches, mesh,
                                         state["step"])
                    record_eval(s, last_eval)  # raises (nothing saved) when it is non-finite
                stopping = stop.requested(s)
                if s % config.checkpoint.every_steps == 0 or s == total or stopping:
                    if pending is not None:  # step s's record reaches metrics.jsonl first
                        flush(pending)
                        pending = None
                    save(s)
                    last_saved = s
                if stopping:
                    summary["stopped_at"] = s
                    break
            if pending is not None:
                flush(pending)
                pending = None

        stop = StopRequest().install()  # SIGTERM/SIGINT: checkpoint after this step, exit 0
        cleanup.callback(stop.uninstall)
        try:
            run_steps()
        except metrics_lib.NonFiniteError as e:  # diverged: summary.json says so, then stop
            if proc == 0:
                summary.update(diverged=" ".join(str(e).split()),
                               last_checkpoint=last_saved or None)
                with open(os.path.join(workdir, "summary.json"), "w") as f:
                    json.dump(summary, f, indent=2)
            raise
        if last_saved != total and total > start and "stopped_at" not in summary:
            save(total)
    # Everything is closed here: the last save is committed, the writers are flushed.
    if plot:
        _plot(config, writer.path, workdir)
    final = summary.get("stopped_at", max(total, start))
    summary.update(final_step=final, eval_loss=last_eval, vocab_size=config.model.vocab_size,
                   ln_vocab=float(np.log(config.model.vocab_size)))
    if proc == 0:
        # A rerun of a finished run (or a stop before any evaluation) measured nothing new:
        # take the last values metrics.jsonl holds instead of writing nulls over them.
        recs = metrics_lib.read_metrics(writer.path)
        if summary.get("eval_step") is None:
            summary["eval_step"], summary["eval_loss"] = _last(recs, "eval_loss", final)
        for key in ("loss", "tokens_per_sec"):
            if summary.get(key) is None:
                summary[key] = _last(recs, key, final)[1]
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    return summary
