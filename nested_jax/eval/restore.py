"""Restore a model from an Orbax checkpoint alone (config and tokenizer hash come from it).

    m = load("runs/x", step=None)      # latest step
    m.fn, m.params, m.cfg, m.tokenizer, m.step, m.online
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import sys
import time

import jax
import numpy as np
from flax import nnx

from nested_jax.checkpoint import CheckpointError, Checkpointer, checkpoint_dir, config_from_meta
from nested_jax.data.tokenizer import Tokenizer, load_tokenizer
from nested_jax.eval.errors import EvalError
from nested_jax.model.variants import get as get_variant
from nested_jax.model.lm import abstract_model, build_model


@dataclasses.dataclass
class Loaded:
    """A restored checkpoint: functional model, float32 params, full config, tokenizer."""

    fn: object
    params: dict
    cfg: object
    tokenizer: Tokenizer
    step: int
    meta: dict
    directory: str
    skipped_steps: list = dataclasses.field(default_factory=list)  # newer corrupt steps

    @property
    def online(self) -> bool:
        return get_variant(self.cfg.model.variant).online

    def summary(self) -> dict:
        """Config summary for the output JSON."""
        m = self.cfg.model
        n_params = int(sum(np.size(x) for x in jax.tree.leaves(self.params)))
        out = {"variant": m.variant, "d_model": m.d_model, "n_layers": m.n_layers,
               "n_heads": m.n_heads, "vocab_size": m.vocab_size, "n_params": n_params,
               "train_seq_len": self.cfg.train.seq_len, "tokenizer": self.cfg.data.tokenizer,
               "tokenizer_sha256": self.tokenizer.sha256}
        if self.online:
            out.update(segment_len=m.online.segment_len, cms_levels=list(m.cms.names),
                       cms_periods=list(m.cms.periods))
        return out


def _first_line(e: Exception, limit: int = 300) -> str:
    text = str(e).strip().splitlines()
    text = text[0] if text else type(e).__name__
    return text if len(text) <= limit else text[:limit] + "…"


# Seconds to wait after a failed restore for Orbax's I/O threads to print their traceback
# into the swallowed buffer (instead of onto the user's terminal after our error line).
IO_SETTLE_S = 0.5


@contextlib.contextmanager
def _quiet_failed_io():
    """Orbax's I/O threads print an 'Event loop is closed' traceback after a failed read;
    swallow that noise (other output is passed through)."""
    old, buf = sys.stderr, io.StringIO()
    sys.stderr = buf
    try:
        yield
    except BaseException:
        time.sleep(IO_SETTLE_S)  # let the I/O threads finish complaining
        raise
    finally:
        sys.stderr = old
        text = buf.getvalue()
        if text and "Event loop is closed" not in text:
            old.write(text)


def abstract_params(model_cfg) -> dict:
    """ShapeDtypeStructs of the pure parameter dict (no allocation)."""
    tree = jax.eval_shape(lambda: nnx.to_pure_dict(nnx.split(build_model(model_cfg, 0))[1]))
    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=dev), tree)


def open_checkpointer(path: str) -> Checkpointer:
    d = checkpoint_dir(path)
    if not os.path.isdir(d):
        raise EvalError(
            f"no checkpoint at {path!r} ({d} does not exist). Fix: pass --checkpoint the training "
            "--workdir (or its checkpoints/ folder) of a finished run.")
    try:
        ck = Checkpointer(d, read_only=True, async_save=False)
    except Exception as e:  # noqa: BLE001 - reported as one paragraph
        raise EvalError(f"cannot open the checkpoint folder {d}: {_first_line(e)}. Fix: pass a "
                        "training --workdir or its checkpoints/ folder.") from None
    if not ck.all_steps():
        raise EvalError(
            f"no checkpoint found in {d} (no step folders). Fix: pass the --workdir of a run that "
            "saved at least one checkpoint (training saves every checkpoint.every_steps and at the end).")
    return ck


# The items evaluation reads; their files are checked against the recorded sha256 (the other
# items' sizes only), so a corrupt step gets the policy training applies (nested_jax.checkpoint).
READ_ITEMS = ("params", "meta")


def load(path: str, step: int | None = None, *, tokenizer: str | None = None) -> Loaded:
    """Restore params + meta of `step` (newest intact one if None); check the tokenizer's
    sha256 against the one recorded in the checkpoint."""
    ck = open_checkpointer(path)
    try:
        try:
            step, skipped = ck.pick_step(step, hash_items=READ_ITEMS)
        except CheckpointError as e:
            raise EvalError(str(e)) from None
        try:
            meta = ck.read_meta(step)
            cfg = config_from_meta(meta)
        except (CheckpointError, KeyError, ValueError) as e:
            raise EvalError(
                f"checkpoint step {step} in {ck.directory} is corrupt or incomplete (its "
                f"metadata cannot be read: {_first_line(e)}). Fix: pick another --step "
                f"(available: {ck.all_steps()}) or re-save it by resuming training.") from None
        try:
            tok = load_tokenizer(tokenizer or cfg.data.tokenizer)
        except (ValueError, FileNotFoundError) as e:
            raise EvalError(f"cannot load the checkpoint's tokenizer: {e}") from None
        want = meta.get("tokenizer_sha256")
        if want and want != tok.sha256:
            raise EvalError(
                f"tokenizer mismatch: the checkpoint was trained with tokenizer "
                f"{cfg.data.tokenizer!r} of sha256 {want[:16]}…, but the file {tok.path} has sha256 "
                f"{tok.sha256[:16]}…. Scores would be meaningless. Fix: restore the original "
                "tokenizer file (`git checkout -- nested_jax/assets/tokenizers`) or pass "
                "--tokenizer PATH to the .model file the run was trained with.")
        fn = abstract_model(cfg.model)
        try:
            with _quiet_failed_io():
                got = ck.restore(step, params=abstract_params(cfg.model))
        except CheckpointError as e:
            raise EvalError(
                f"checkpoint step {step} in {ck.directory} is corrupt or does not match its "
                f"config ({_first_line(e.__cause__ or e)}). Fix: pick another --step (available: "
                f"{ck.all_steps()}) or re-save it by resuming training.") from None
    finally:
        ck.manager.close()
    return Loaded(fn=fn, params=got["params"], cfg=cfg, tokenizer=tok, step=int(step),
                  meta=meta, directory=ck.directory, skipped_steps=skipped)
