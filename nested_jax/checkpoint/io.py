"""Checkpoint layout: one Orbax CheckpointManager directory with per-step items

  params/  model parameters (StandardSave)        opt/   optimizer state + step
  fast/    per-sequence fast state (HOPE/CMS)      data/  Grain iterator state
  meta/    JSON: config, tokenizer sha256, package version, git commit, step, tokens seen

Evaluation restores `params` and `meta` only.
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, corrupt or does not match the run."""


def checkpoint_dir(path: str) -> str:
    """Accept a training workdir or its checkpoints/ folder; return the checkpoints folder."""
    path = os.path.abspath(os.path.expanduser(path))
    sub = os.path.join(path, "checkpoints")
    if os.path.isdir(sub):
        return sub
    return path


def config_from_meta(meta: dict) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(json.loads(meta["config"]))


class Checkpointer:
    """Thin wrapper over ocp.CheckpointManager with our item names."""

    def __init__(self, directory: str, *, max_to_keep: int = 3, async_save: bool = True,
                 read_only: bool = False):
        self.directory = os.path.abspath(directory)
        if read_only and not os.path.isdir(self.directory):
            raise CheckpointError(
                f"no checkpoint directory at {self.directory}. Pass a training workdir "
                "(the folder given as --workdir) or its checkpoints/ folder."
            )
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            enable_async_checkpointing=async_save,
            create=not read_only,
            read_only=read_only,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

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
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)

    def resolve_step(self, step: int | None) -> int:
        steps = self.all_steps()
        if not steps:
            raise CheckpointError(f"no checkpoint found in {self.directory}.")
        if step is None:
            return steps[-1]
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
            raise CheckpointError(
                f"cannot restore step {step} from {self.directory}: {type(e).__name__}: {e}"
            ) from e
        return {k: out[k] for k in items}

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
