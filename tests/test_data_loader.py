"""Loader: window cutting, mixture proportions, resume (also via Orbax), per-process sharding, errors."""

import json

import grain
import numpy as np
import pytest

from nested_jax.data import config, loader, packing
from nested_jax.data.tokenizer import load_tokenizer

# Synthetic domains with disjoint token ranges, so every window tells its domain.
RANGES = {"a": (100, 600), "b": (1000, 1500)}


def _write_prepared(root, n_tokens={"a": 40_000, "b": 20_000}, weights={"a": 0.75, "b": 0.25}, sha=None):
    tok = load_tokenizer("novels_2k")
    domains = {}
    for d, n in n_tokens.items():
        lo, hi = RANGES[d]
        domains[d] = {}
        for split, count in (("train", n), ("valid", n // 4)):
            stream = np.random.default_rng(count).integers(lo, hi, count, dtype=np.int32)
            rows, dropped = packing.pack([stream.tolist()], 64)
            names = packing.write_shards(rows, root / d / split, shard_rows=50)
            domains[d][split] = {"tokens": count, "rows": len(rows), "tokens_dropped": dropped, "shards": names}
    stats = {"format": packing.FORMAT, "name": "synthetic", "row_len": 64, "weights": weights, "domains": domains,
             "tokenizer": {"name": tok.name, "sha256": sha or tok.sha256, "vocab_size": tok.vocab_size}}
    (root / packing.STATS_FILE).write_text(json.dumps(stats))
    return root


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    c = config.default_data_config()
    c.dataset = str(_write_prepared(tmp_path_factory.mktemp("prep")))
    c.read_threads = 0
    return c


def _domain_of(row):
    for d, (lo, hi) in RANGES.items():
        if lo <= row.min() and row.max() < hi:
            return d
    raise AssertionError(f"row mixes domains: {row}")


def test_batches_shape_and_windows(cfg):
    it = loader.make_train_iterator(cfg, seq_len=32, batch_size=4, seed=0)
    b = next(it)["tokens"]
    assert b.shape == (4, 33) and b.dtype == np.int32
    root, stats = loader.prepared_dir(cfg)
    for row in b:  # each row is a window [i*32, i*32 + 33) of its domain's train stream
        d = _domain_of(row)
        stream = np.concatenate([np.load(p).reshape(-1) for p in packing.shard_paths(root, stats, d, "train")])
        windows = {stream[j * 32: j * 32 + 33].tobytes() for j in range((len(stream) - 1) // 32)}
        assert row.tobytes() in windows


def test_window_source_crosses_shards_and_loses_nothing(cfg):
    root, stats = loader.prepared_dir(cfg)
    src = loader.WindowSource(packing.shard_paths(root, stats, "a", "train"), seq_len=100)  # shards hold 3200 tokens
    stream = np.concatenate([np.load(p).reshape(-1) for p in packing.shard_paths(root, stats, "a", "train")])
    assert len(src) == (len(stream) - 1) // 100
    for i in (0, 31, 32, len(src) - 1):
        np.testing.assert_array_equal(src[i], stream[i * 100: i * 100 + 101])


def test_mixture_proportions(cfg):
    it = loader.make_train_iterator(cfg, seq_len=16, batch_size=32, seed=1)
    counts = {"a": 0, "b": 0}
    for _ in range(50):
        for row in next(it)["tokens"]:
            counts[_domain_of(row)] += 1
    share = counts["a"] / sum(counts.values())
    assert abs(share - 0.75) < 0.02, counts


def test_mixture_override_and_unknown_domain(cfg):
    c = cfg.copy_and_resolve_references()
    c.mixture = "a=0,b=1"
    b = next(loader.make_train_iterator(c, seq_len=16, batch_size=8, seed=0))["tokens"]
    assert {_domain_of(r) for r in b} == {"b"}
    c.mixture = "a=1,zz=2"
    with pytest.raises(ValueError, match="unknown domain"):
        loader.make_train_iterator(c, seq_len=16, batch_size=8, seed=0)


def test_infinite_and_reshuffled_epochs(cfg):
    c = cfg.copy_and_resolve_references()
    c.mixture = "a=0,b=1"
    it = loader.make_train_iterator(c, seq_len=1000, batch_size=4, seed=0)  # 19 windows: an epoch is 4 batches
    rows = [tuple(r[:3]) for _ in range(12) for r in next(it)["tokens"]]
    assert len(rows) == 48 and sorted(rows[:16]) != sorted(rows[19:35])


def test_save_restore_exact(cfg):
    it = loader.make_train_iterator(cfg, seq_len=16, batch_size=8, seed=3)
    for _ in range(5):
        next(it)
    state = it.get_state()
    expected = [next(it)["tokens"] for _ in range(4)]
    it2 = loader.make_train_iterator(cfg, seq_len=16, batch_size=8, seed=3)
    it2.set_state(json.loads(json.dumps(state)))
    for e in expected:
        np.testing.assert_array_equal(next(it2)["tokens"], e)


def test_save_restore_with_prefetch_threads(cfg):
    c = cfg.copy_and_resolve_references()
    c.read_threads = 2
    it = loader.make_train_iterator(c, seq_len=16, batch_size=8, seed=3)
    for _ in range(7):
        next(it)
    state = it.get_state()
    expected = [next(it)["tokens"] for _ in range(3)]
    it2 = loader.make_train_iterator(c, seq_len=16, batch_size=8, seed=3)
    it2.set_state(state)
    for e in expected:
        np.testing.assert_array_equal(next(it2)["tokens"], e)


def test_orbax_checkpoint_manager_round_trip(cfg, tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    it = loader.make_train_iterator(cfg, seq_len=16, batch_size=4, seed=5)
    for _ in range(3):
        next(it)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.save(3, args=ocp.args.Composite(ds=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
    expected = [next(it)["tokens"] for _ in range(3)]
    it2 = loader.make_train_iterator(cfg, seq_len=16, batch_size=4, seed=5)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.restore(3, args=ocp.args.Composite(ds=grain.checkpoint.CheckpointRestore(it2)))
    for e in expected:
        np.testing.assert_array_equal(next(it2)["tokens"], e)


def test_per_process_sharding_disjoint_and_complete(cfg):
    full = loader.make_train_iterator(cfg, seq_len=16, batch_size=8, seed=2)
    procs = [loader.make_train_iterator(cfg, seq_len=16, batch_size=8, seed=2, process_index=p, process_count=2)
             for p in range(2)]
    for _ in range(10):
        g = next(full)["tokens"]
        p0, p1 = (next(p)["tokens"] for p in procs)
        assert p0.shape == p1.shape == (4, 17)
        s0, s1 = {r.tobytes() for r in p0}, {r.tobytes() for r in p1}
        assert not s0 & s1
        assert s0 | s1 == {r.tobytes() for r in g}
    with pytest.raises(ValueError, match="not divisible"):
        loader.make_train_iterator(cfg, seq_len=16, batch_size=7, seed=0, process_count=2)


def test_eval_batches_deterministic(cfg):
    a = loader.make_eval_batches(cfg, seq_len=32, batch_size=4, num_batches=3, domain="a")
    b = loader.make_eval_batches(cfg, seq_len=32, batch_size=4, num_batches=3, domain="a")
    assert len(a) == 3 and a[0].shape == (4, 33)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    root, stats = loader.prepared_dir(cfg)
    first = np.load(packing.shard_paths(root, stats, "a", "valid")[0]).reshape(-1)[:33]
    np.testing.assert_array_equal(a[0][0], first)  # the first window of the valid split
    mixed = loader.make_eval_batches(cfg, seq_len=32, batch_size=8, num_batches=2)
    assert {_domain_of(r) for m in mixed for r in m} == {"a", "b"}
    with pytest.raises(ValueError, match="need"):
        loader.make_eval_batches(cfg, seq_len=32, batch_size=64, num_batches=100, domain="b")


def test_seq_len_longer_than_data_is_clear(cfg):
    with pytest.raises(ValueError, match="fewer than seq_len"):
        loader.make_eval_batches(cfg, seq_len=10_000, batch_size=1, num_batches=1, domain="b")


def test_tokenizer_mismatch_is_clear(tmp_path):
    c = config.default_data_config()
    c.dataset = str(_write_prepared(tmp_path, sha="0" * 64))
    with pytest.raises(ValueError, match="were written by tokenizer"):
        loader.make_train_iterator(c, seq_len=16, batch_size=4, seed=0)


def test_check_vocab(cfg):
    loader.check_vocab(cfg, 2048)
    with pytest.raises(ValueError, match="vocab_size = 32000 but tokenizer 'novels_2k' has 2048"):
        loader.check_vocab(cfg, 32000)
    loader.check_vocab(cfg, 2176, allow_padding=True)
    assert loader.tokenizer_for(cfg).vocab_size == 2048


def test_bad_dataset_and_empty_dir_are_clear(tmp_path):
    c = config.default_data_config()
    c.dataset = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="neither a preset"):
        loader.make_train_iterator(c, seq_len=16, batch_size=4, seed=0)
    c.dataset = str(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a prepared data directory"):
        loader.make_train_iterator(c, seq_len=16, batch_size=4, seed=0)
    c.dataset = "novels"
    c.tokenizer = "novels_9k"
    with pytest.raises(ValueError, match="Shipped tokenizers: novels_2k"):
        loader.make_train_iterator(c, seq_len=16, batch_size=4, seed=0)


def test_parse_mixture():
    assert loader.parse_mixture("a=0.5, b:2") == {"a": 0.5, "b": 2.0}
    with pytest.raises(ValueError, match="Bad mixture"):
        loader.parse_mixture("a")
