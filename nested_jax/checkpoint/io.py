"""Checkpoint layout: one Orbax CheckpointManager directory with per-step items

  params/  model parameters (StandardSave)        opt/   optimizer state + step
  fast/    per-sequence fast state (HOPE/CMS)      data/  Grain iterator state
  meta/    JSON: config, tokenizer sha256, package version, git commit, step, tokens seen
  nested_jax_sha256.json   sha256 and size of every file above, written in a background
                           thread after Orbax's atomic commit (the next save or `close()`
                           starts it; the record itself is written atomically)

Evaluation restores `params` and `meta` only.

Bytes that fail their recorded sha256 get one policy everywhere: without an explicit step,
training, evaluation and release skip the newest corrupt steps (with a warning) and use the
newest intact one (training also moves them aside to `N.corrupt`); an explicit step that is
corrupt is an error. Evaluation hashes the items it reads (`params`, `meta`), training and
release every file.

Rolling back (`rollback`, `python -m nested_jax.checkpoint rollback DIR N`, the train CLI's
`--resume-step N`) moves the steps after N aside to `M.rolled_back` (never deletes them), so
the next run resumes from N.

Crash safety. Orbax writes step N into `N.orbax-checkpoint-tmp*` and renames it to `N`
when complete, so a process killed mid-write leaves only a temporary directory. A
writable Checkpointer removes such leftovers (with a warning), checks the newest steps
against their recorded sha256 sums, and moves a truncated or corrupt step aside to
`N.corrupt` (with a warning) so the previous intact step is resumed.

Cost at scale. Hashing re-reads every byte of a step, so it never blocks a save: the record
of step N is computed in a background thread once N is committed (training goes on), and a
resume checks the newest steps' structure, every file's size, and the hash of every file
modified after its record was written (a truncation, a copy cut short or an overwrite is
caught without re-reading the rest). Silent bit rot of an untouched file is caught by
`python -m nested_jax.checkpoint verify` (every byte), by evaluation (the items it reads)
and by release (every byte). A step committed but killed before its record was written has
no record: it is used unverified, like the steps of older versions.

This module holds the Checkpointer (save, restore, the step policy, crash recovery),
`rollback` and the config of a step's meta; the on-disk checks it relies on (folder marks,
sha256 records, step inspection) are in nested_jax/checkpoint/integrity.py.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
from typing import Any

import ml_collections
import orbax.checkpoint as ocp

from nested_jax.checkpoint.integrity import (ROLLBACK_MARK, SUMS_FILE, UNHASHED, StepReport,
                                             hash_tree, inspect_step, quarantine_name,
                                             step_dirs)
from nested_jax.cli import UserError


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing, incomplete, corrupt or does not match the run."""


def warn(msg: str) -> None:
    print(f"[nested_jax.checkpoint] warning: {msg}", file=sys.stderr, flush=True)


def checkpoint_dir(path: str) -> str:
    """Accept a training workdir or its checkpoints/ folder; return the checkpoints folder."""
    path = os.path.abspath(os.path.expanduser(path))
    sub = os.path.join(path, "checkpoints")
    if os.path.isdir(sub):
        return sub
    return path


# Model fields added after checkpoints were first written, with the value that reproduces
# what the code computed before the field existed (a checkpoint without the field restores
# the model it was trained as).
LEGACY_MODEL_FIELDS = {
    "unroll_layers": 1,  # compile-time only (loop unrolling): the value the code used then
    "online.unroll_segments": 1,
    "unroll_chunks": 16,  # compile-time only: what ops/scan.py unrolled before it was a field
    "online.unroll_layers": 16,  # compile-time only: model/online.py's former LAYER_UNROLL_MAX
    "online.remat": "block",  # compile-time only: per-block checkpointing, as the code did then
    "titans.residual_norm": False,
    "titans.depth": 2,
    "titans.mac_segment": 64,
    "selfmod.mem_read": "boundary",
    "selfmod.dgd": True,
    "selfmod.retention": True,
    "selfmod.inner_k": True,
    "selfmod.inner_v": True,
    "selfmod.adaptive_q": False,
    "selfmod.kernel": "auto",  # compile-time choice of kernel, same math
    "titans.kernel": "auto",  # compile-time choice of kernel, same math
    "n_kv_heads": 0,  # one key/value head per query head, as attention was before GQA
    "attention_impl": "auto",  # compile-time choice of kernel (cuDNN / XLA), same math
    "rope_scaling": "none",  # plain RoPE frequencies, as before Llama imports
    "rope_factor": 8.0,
    "rope_low_freq_factor": 1.0,
    "rope_high_freq_factor": 4.0,
    "rope_original_max_len": 8192,
    "attention_bias": False,  # no q/k/v biases, as before Qwen2 imports
    "cms.hidden": 0,  # hidden_mult × d_model, as before stacked models
    "cms.mlp": "gelu",
    "freeze": (),  # every parameter trained
}


def config_from_meta(meta: dict) -> ml_collections.ConfigDict:
    cfg = json.loads(meta["config"])
    model = cfg.get("model", {})
    for dotted, value in LEGACY_MODEL_FIELDS.items():
        *groups, key = dotted.split(".")
        node = model
        for g in groups:
            node = node.get(g) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.setdefault(key, value)
    return ml_collections.ConfigDict(cfg)


def rollback(path: str, step: int, *, lead: bool = True) -> list[str]:
    """Make `step` the newest checkpoint: move every later step of `path` (a training workdir or
    its checkpoints/ folder) aside to `<later>.rolled_back` (nothing is deleted) and keep a copy
    of the run's metrics.jsonl as `metrics.before_rollback_to_<step>.jsonl`. Refuses a missing
    or corrupt `step` (sha256 checked). Returns the new folder names; `lead`=False (other
    processes of a multi-host run) only checks."""
    directory = checkpoint_dir(path)
    if not os.path.isdir(directory):
        raise CheckpointError(f"no checkpoint folder at {path!r}. Fix: pass a training --workdir "
                              "or its checkpoints/ folder.")
    found = step_dirs(directory)
    if not found["steps"]:
        raise CheckpointError(f"step {step} not found: {directory} holds no checkpoint. Fix: "
                              "train first (checkpoints are saved every checkpoint.every_steps), "
                              "or pass the workdir of a run that saved some.")
    if step not in found["steps"]:
        raise CheckpointError(f"step {step} not found in {directory} (available: "
                              f"{found['steps']}). Fix: pick one of the available steps.")
    rep = inspect_step(os.path.join(directory, str(step)))
    if not rep.ok:
        raise CheckpointError(
            f"checkpoint step {step} in {directory} is corrupt or incomplete ({rep.problems[0]}). "
            f"Fix: pick another step (available: {found['steps']}); `python -m "
            f"nested_jax.checkpoint verify {directory}` lists what is broken.")
    later = [s for s in found["steps"] if s > step]
    moved = []
    workdir = os.path.dirname(directory)
    metrics = os.path.join(workdir, "metrics.jsonl")
    if lead and later and os.path.basename(directory) == "checkpoints" and os.path.isfile(metrics):
        shutil.copy2(metrics, os.path.join(workdir, f"metrics.before_rollback_to_{step}.jsonl"))
    for s in later:
        dest = quarantine_name(directory, s, ROLLBACK_MARK)
        if lead:
            os.rename(os.path.join(directory, str(s)), dest)
        moved.append(os.path.basename(dest))
    return moved


class Checkpointer:
    """Thin wrapper over ocp.CheckpointManager with our item names and crash recovery."""

    def __init__(self, directory: str, *, max_to_keep: int = 3, async_save: bool = True,
                 read_only: bool = False):
        self.directory = os.path.abspath(directory)
        if read_only and not os.path.isdir(self.directory):
            raise CheckpointError(
                f"no checkpoint directory at {self.directory}. Pass a training workdir "
                "(the folder given as --workdir) or its checkpoints/ folder."
            )
        self.read_only = read_only
        self.async_save = async_save
        self._saving: int | None = None  # the step whose save is in flight (not yet recorded)
        self._hasher: threading.Thread | None = None  # sha256 record of a committed step
        if not read_only:
            os.makedirs(self.directory, exist_ok=True)
            self._recover()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            enable_async_checkpointing=True,  # sync saves wait right after save()
            create=not read_only,
            read_only=read_only,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    # ------------------------------------------------------------------ crash recovery
    def _recover(self) -> None:
        """Drop leftovers of killed saves; move corrupt newest steps aside (see module doc)."""
        import jax

        lead = jax.process_index() == 0
        found = step_dirs(self.directory)
        for name in found["tmp"]:
            warn(f"checkpoint step {name.split('.')[0]} in {self.directory} was cut mid-write "
                 f"(the run was killed while saving); ignoring it and removing {name}.")
            if lead:
                shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
        bad: list[tuple[int, StepReport]] = []
        for step in reversed(found["steps"]):
            rep = inspect_step(os.path.join(self.directory, str(step)), check_hashes="changed")
            if rep.ok:
                break
            bad.append((step, rep))
        else:
            if bad:
                detail = "; ".join(f"step {s}: {r.problems[0]}" for s, r in bad)
                raise CheckpointError(
                    f"every checkpoint in {self.directory} is incomplete or corrupt ({detail}). "
                    "Fix: restore the folder from a copy, or move it away (or pick a new "
                    "--workdir) to start training from scratch; `python -m nested_jax.checkpoint "
                    f"verify {self.directory}` lists the problems.")
        for step, rep in bad:
            dest = quarantine_name(self.directory, step)
            warn(f"checkpoint step {step} in {self.directory} is corrupt or truncated "
                 f"({'; '.join(rep.problems[:3])}); using the previous step instead and moving "
                 f"it to {os.path.basename(dest)} for inspection.")
            if lead:
                os.rename(os.path.join(self.directory, str(step)), dest)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("nested_jax_checkpoint_recover")

    def _record_sums(self, step: int) -> None:
        """Write step's sha256 record into its committed directory (atomic replace)."""
        path = os.path.join(self.directory, str(step))
        try:
            record = {"algorithm": "sha256", "step": step,
                      "files": hash_tree(path, skip_top=UNHASHED)}
            tmp = os.path.join(path, SUMS_FILE + ".tmp")
            with open(tmp, "w") as f:
                json.dump(record, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, os.path.join(path, SUMS_FILE))
        except FileNotFoundError:
            pass  # the step was deleted meanwhile (max_to_keep)
        except Exception as e:  # noqa: BLE001 - a missing record must not fail training
            warn(f"could not record sha256 sums of step {step}: {type(e).__name__}: {e}")

    def _record_committed(self, background: bool) -> None:
        """The save in flight is committed (after `wait_until_finished`): record its sums,
        in a background thread (one at a time) or now."""
        import jax

        step, self._saving = self._saving, None
        self._join_hasher()
        if step is None or jax.process_index() != 0:
            return
        if background:
            self._hasher = threading.Thread(target=self._record_sums, args=(step,),
                                            name=f"nested_jax-sha256-{step}", daemon=True)
            self._hasher.start()
        else:
            self._record_sums(step)

    def _join_hasher(self) -> None:
        if self._hasher is not None:
            self._hasher.join()
            self._hasher = None

    # ------------------------------------------------------------------ steps
    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def pick_step(self, step: int | None = None, *,
                  hash_items: tuple[str, ...] | None = None) -> tuple[int, list[int]]:
        """(step to read, newer steps skipped as corrupt): the policy evaluation, release and
        read-only opens share (module docstring). An explicit `step` must exist and pass
        `inspect_step`; None = the newest step that passes it, with a warning for each newer
        one skipped. `hash_items`: hash only these items' files (sizes for the rest)."""
        steps = self.all_steps()
        if step is not None:
            if step not in steps:
                raise CheckpointError(
                    f"step {step} not found in {self.directory}; available: {steps}. Fix: pass "
                    "one of them (or no step for the newest intact one).")
            rep = inspect_step(os.path.join(self.directory, str(step)), hash_items=hash_items)
            if not rep.ok:
                raise CheckpointError(
                    f"checkpoint step {step} in {self.directory} is not intact: corrupt or "
                    f"incomplete ({rep.problems[0]}). Fix: pick another step (available: "
                    f"{steps}); `python -m nested_jax.checkpoint verify {self.directory}` lists "
                    "what is broken.")
            return step, []
        skipped = []
        for s in reversed(steps):
            rep = inspect_step(os.path.join(self.directory, str(s)), hash_items=hash_items)
            if rep.ok:
                return s, skipped
            skipped.append(s)
            warn(f"skipping corrupt checkpoint step {s} in {self.directory} ({rep.problems[0]}); "
                 "using the newest intact step.")
        raise CheckpointError(
            f"every checkpoint in {self.directory} is corrupt or incomplete (steps {steps}). "
            f"Fix: run `python -m nested_jax.checkpoint verify {self.directory}` for details "
            "and re-save by resuming training.")

    def save(self, step: int, *, params, opt=None, fast=None, meta: dict, data_iter=None) -> None:
        items: dict[str, Any] = {
            "params": ocp.args.StandardSave(params),
            "meta": ocp.args.JsonSave(meta),
        }
        if opt is not None:
            items["opt"] = ocp.args.StandardSave(opt)
        if fast is not None:
            items["fast"] = ocp.args.StandardSave(fast)
        if data_iter is not None:
            import grain  # deferred: grain is only needed when a data iterator is saved

            items["data"] = grain.checkpoint.CheckpointSave(data_iter)
        self.manager.wait_until_finished()  # one save in flight; the previous one is committed
        self._record_committed(background=True)
        self._saving = step
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)
        if not self.async_save:
            self.manager.wait_until_finished()

    def resolve_step(self, step: int | None) -> int:
        """The step read_meta / restore read: an explicit step must exist; None = the newest
        step (read-only opens: the newest intact one, `pick_step`)."""
        steps = self.all_steps()
        if not steps:
            raise CheckpointError(f"no checkpoint found in {self.directory}.")
        if step is None:
            return self.pick_step(None)[0] if self.read_only else steps[-1]
        if step not in steps:
            raise CheckpointError(f"step {step} not found in {self.directory}; available: {steps}.")
        return step

    def read_meta(self, step: int | None = None) -> dict:
        step = self.resolve_step(step)
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        except Exception as e:  # noqa: BLE001 - re-raised with context
            raise CheckpointError(f"cannot read metadata of step {step} in {self.directory}: {e}") from e
        return dict(out["meta"])

    def restore(self, step: int | None, *, params, opt=None, fast=None, data_iter=None) -> dict:
        """Restore the items given as abstract trees (ShapeDtypeStruct with shardings)."""
        step = self.resolve_step(step)
        items: dict[str, Any] = {
            "params": ocp.args.StandardRestore(params),
            "meta": ocp.args.JsonRestore(),
        }
        if opt is not None:
            items["opt"] = ocp.args.StandardRestore(opt)
        if fast is not None:
            items["fast"] = ocp.args.StandardRestore(fast)
        if data_iter is not None:
            import grain

            items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # noqa: BLE001
            first = (str(e).strip().splitlines() or [""])[0][:300]
            raise CheckpointError(
                f"cannot restore step {step} from {self.directory}: {type(e).__name__}: {first}. "
                "The step is corrupt or was written by another model/optimizer configuration. "
                f"Fix: run `python -m nested_jax.checkpoint verify {self.directory}`, move the "
                "broken step folder away to resume from the previous one, or use a new --workdir."
            ) from e
        return {k: out[k] for k in items}

    def wait(self) -> None:
        """The save in flight is committed and its sha256 record written."""
        self.manager.wait_until_finished()
        self._record_committed(background=False)

    def close(self) -> None:
        self.wait()
        self.manager.close()
