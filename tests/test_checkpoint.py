"""Orbax checkpoints: exact round trip of params, optimizer state, step, meta and data state."""

import json

import chex
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from nested_jax.checkpoint import CheckpointError, Checkpointer, checkpoint_dir
from nested_jax.model.lm import init_params
from nested_jax.train import optim, step as step_lib
from tests.helpers import tiny_model_config


def _state():
    cfg = tiny_model_config()
    fn, params = init_params(cfg, seed=0)
    o = ml_collections.ConfigDict(dict(name="adamw", lr=1e-3, warmup_steps=1, schedule="cosine",
                                       min_lr_ratio=0.1, b1=0.9, b2=0.95, eps=1e-8,
                                       weight_decay=0.1, grad_clip=1.0))
    tx = optim.build_optimizer(o, 10)
    state = step_lib.init_train_state(params, tx)
    tokens = jax.random.randint(jax.random.key(0), (2, 9), 0, cfg.vocab_size)
    import functools
    step = jax.jit(functools.partial(step_lib.train_step, fn=fn, tx=tx,
                                     lr_schedule=optim.schedule(o, 10)))
    for _ in range(2):
        state, _ = step(state, {"tokens": tokens})
    return state


def _iter():
    return iter(grain.MapDataset.range(1000).seed(0).shuffle().batch(4).to_iter_dataset())


def test_round_trip_is_exact(tmp_path):
    state = _state()
    it = _iter()
    for _ in range(3):
        next(it)
    ck = Checkpointer(str(tmp_path / "checkpoints"), async_save=True)
    meta = {"config": json.dumps({"a": 1}), "tokenizer_sha256": "abc", "step": 2}
    ck.save(2, params=state["params"], opt={"opt_state": state["opt_state"], "step": state["step"]},
            meta=meta, data_iter=it)
    ck.close()
    expected_next = next(it)

    ck2 = Checkpointer(checkpoint_dir(str(tmp_path)), read_only=True)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    it2 = _iter()
    got = ck2.restore(None, params=abstract["params"],
                      opt={"opt_state": abstract["opt_state"], "step": abstract["step"]},
                      data_iter=it2)
    chex.assert_trees_all_equal(got["params"], state["params"])
    chex.assert_trees_all_equal(got["opt"]["opt_state"], state["opt_state"])
    assert int(got["opt"]["step"]) == 2
    assert got["meta"]["tokenizer_sha256"] == "abc"
    np.testing.assert_array_equal(next(it2), expected_next)


def test_missing_and_unknown_step_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint directory"):
        Checkpointer(str(tmp_path / "nope"), read_only=True)
    state = _state()
    ck = Checkpointer(str(tmp_path / "c"), async_save=False)
    ck.save(1, params=state["params"], meta={"config": "{}"})
    ck.close()
    ck = Checkpointer(str(tmp_path / "c"), read_only=True)
    with pytest.raises(CheckpointError, match="step 7 not found.*available: \\[1\\]"):
        ck.read_meta(7)


def test_old_checkpoint_configs_get_the_fields_added_since():
    """A checkpoint's config without a field added later restores with the value that
    reproduces what the code computed then (LEGACY_MODEL_FIELDS); present fields are kept."""
    from nested_jax.checkpoint.io import LEGACY_MODEL_FIELDS, config_from_meta
    from nested_jax.configs import default

    cfg = default.get_config().to_dict()
    del cfg["model"]["unroll_layers"], cfg["model"]["online"]["unroll_segments"]
    del cfg["model"]["titans"]["residual_norm"]
    del cfg["model"]["unroll_chunks"], cfg["model"]["online"]["unroll_layers"]
    cfg["model"]["selfmod"]["dgd"] = False  # written by the run: kept
    got = config_from_meta({"config": json.dumps(cfg)}).model
    assert got.unroll_layers == LEGACY_MODEL_FIELDS["unroll_layers"] == 1
    assert got.online.unroll_segments == 1 and got.titans.residual_norm is False
    assert got.selfmod.dgd is False
    assert got.unroll_chunks == 16 and got.online.unroll_layers == 16  # the old module values


def test_sha256_record_is_written_in_the_background_after_the_commit(tmp_path, monkeypatch):
    """A save never waits for hashing: step N's record is computed by a background thread
    once N is committed (started by the next save), and close() finishes it."""
    import threading

    from nested_jax.checkpoint import io as ckpt_io

    release = threading.Event()
    real = ckpt_io.hash_tree
    monkeypatch.setattr(ckpt_io, "hash_tree", lambda *a, **k: (release.wait(60), real(*a, **k))[1])
    params = {"w": jnp.arange(6.0)}
    d = str(tmp_path / "checkpoints")
    ck = Checkpointer(d, async_save=True)
    ck.save(1, params=params, meta={"step": 1})
    ck.save(2, params=params, meta={"step": 2})  # returns while step 1 is being hashed
    assert ck._hasher is not None and ck._hasher.is_alive()
    assert not (tmp_path / "checkpoints" / "1" / ckpt_io.SUMS_FILE).exists()
    release.set()
    ck.close()
    for step in (1, 2):
        rep = ckpt_io.inspect_step(f"{d}/{step}")
        assert rep.ok and rep.has_sums and rep.hashed_files >= 2, rep
    # A resume re-hashes only files written after their record: an overwrite is caught.
    victim = next(p for p in sorted((tmp_path / "checkpoints" / "2" / "params").rglob("*"))
                  if p.is_file() and p.stat().st_size > 0)
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    assert "recorded sha256" in " ".join(ckpt_io.inspect_step(f"{d}/2", check_hashes="changed").problems)
