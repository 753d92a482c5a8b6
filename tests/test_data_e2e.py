"""End to end: the CLI (`python -m nested_jax.data ...`) writes shards that the loader reads."""

import json
import subprocess
import sys

import numpy as np
import pytest

from nested_jax.data import assets, config, loader, packing


def _cli(*args):
    r = subprocess.run([sys.executable, "-m", "nested_jax.data", *args], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _tiny_manifest(tmp_path):
    novel = next(assets.novels("valid"))["text"].split("\n")
    (tmp_path / "a.txt").write_text("\n".join(line for line in novel[:400] if len(line) > 100))
    (tmp_path / "b.jsonl").write_text("\n".join(
        json.dumps({"text": "\n".join(novel[i:i + 30]), "split": "valid" if j % 5 == 0 else "train"})
        for j, i in enumerate(range(400, 1600, 30))))
    m = {"name": "tiny", "row_len": 64, "shard_rows": 100, "sources": [
        {"domain": "lines", "path": "a.txt", "split": {"valid_fraction": 0.2}, "weight": 2.0},
        {"domain": "chunks", "path": "b.jsonl", "split": {"field": "split"}, "weight": 1.0}]}
    (tmp_path / "m.json").write_text(json.dumps(m))
    return tmp_path / "m.json"


def test_cli_prepare_tiny_manifest_then_train_iterator(tmp_path):
    _cli("prepare", "--manifest", str(_tiny_manifest(tmp_path)), "--out", str(tmp_path / "out"), "--no-progress")
    stats = packing.read_stats(tmp_path / "out")
    assert set(stats["domains"]) == {"lines", "chunks"} and stats["weights"] == {"lines": 2.0, "chunks": 1.0}
    c = config.default_data_config()
    c.dataset = str(tmp_path / "out")
    it = loader.make_train_iterator(c, seq_len=32, batch_size=4, seed=0)
    b = [next(it)["tokens"] for _ in range(3)]
    assert b[0].shape == (4, 33) and b[0].dtype == np.int32 and b[0].max() < 2048
    ev = loader.make_eval_batches(c, seq_len=32, batch_size=2, num_batches=2, domain="chunks")
    assert len(ev) == 2 and ev[0].shape == (2, 33)


def test_manifest_dataset_is_prepared_once_and_cached(tmp_path):
    c = config.default_data_config()
    c.dataset = str(_tiny_manifest(tmp_path))
    c.cache_dir = str(tmp_path / "cache")
    root, _ = loader.prepared_dir(c, progress=False)
    assert root.parent == tmp_path / "cache" / "prepared" and root.name.startswith("tiny-")
    mtime = (root / packing.STATS_FILE).stat().st_mtime_ns
    first = next(loader.make_train_iterator(c, seq_len=16, batch_size=2, seed=0))["tokens"]
    assert (root / packing.STATS_FILE).stat().st_mtime_ns == mtime  # not rebuilt
    c.tokenizer = "novels_32k"  # another tokenizer -> another cache entry, not a stale one
    root32, stats32 = loader.prepared_dir(c, progress=False)
    assert root32 != root and stats32["tokenizer"]["vocab_size"] == 32000
    assert first.shape == (2, 17)


def test_cli_tokenizer(tmp_path):
    novel = next(assets.novels("valid"))["text"]
    (tmp_path / "t.jsonl").write_text(json.dumps({"text": novel[:60_000], "split": "train"}) + "\n")
    _cli("tokenizer", "--input", str(tmp_path / "t.jsonl"), "--split-field", "split", "--vocab-size", "400",
         "--out", str(tmp_path / "tok" / "tiny"))
    meta = json.loads((tmp_path / "tok" / "tiny.json").read_text())
    assert meta["vocab_size"] == 400 and meta["coverage"]["tokens_per_word"] > 1
    assert (tmp_path / "tok" / "tiny.model").is_file() and (tmp_path / "tok" / "tiny.vocab").is_file()


def test_cli_prepare_preset_sample_then_train_iterator(tmp_path):
    _cli("prepare", "--preset", "sample", "--out", str(tmp_path / "sample"), "--no-progress")
    stats = packing.read_stats(tmp_path / "sample")
    assert set(stats["domains"]) == {"novels", "wikipedia", "math", "code"}
    for d, splits in stats["domains"].items():
        assert set(splits) == {"train", "valid"}, d
        for s in splits.values():
            assert s["tokens"] == s["tokens_packed"] + s["tokens_dropped"]
    c = config.default_data_config()
    c.dataset = str(tmp_path / "sample")
    it = loader.make_train_iterator(c, seq_len=128, batch_size=8, seed=0)
    for _ in range(3):
        assert next(it)["tokens"].shape == (8, 129)
    tok = loader.tokenizer_for(c)
    assert isinstance(tok.decode(next(it)["tokens"][0]), str)


@pytest.mark.slow
def test_default_novels_dataset_first_use(tmp_path):
    """The default config: the vendored novels are tokenised and cached on first use (~30 s)."""
    c = config.default_data_config()
    c.cache_dir = str(tmp_path)
    b = next(loader.make_train_iterator(c, seq_len=256, batch_size=4, seed=0))["tokens"]
    assert b.shape == (4, 257)
    _, stats = loader.prepared_dir(c)
    assert stats["domains"]["novels"]["train"]["documents"] == 93
    assert stats["domains"]["novels"]["valid"]["documents"] == 5
    ev = loader.make_eval_batches(c, seq_len=2048, batch_size=8, num_batches=8)
    assert len(ev) == 8 and ev[0].shape == (8, 2049)
