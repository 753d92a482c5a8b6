"""Corpora as FineWeb-Edu and SlimPajama ship them: Parquet (several row groups, extra columns)
and zstd-compressed JSONL give the same packed rows as the same documents in plain JSONL; a
missing or non-string text column, a truncated .zst or .parquet, and a missing optional reader
package are each one clear error naming the file; token ids of large (128k-152k) vocabularies
survive packing."""

import json
import re
import sys

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
zstd = pytest.importorskip("zstandard")

from nested_jax.data import assets, packing, prepare, sources, spm_train  # noqa: E402
from nested_jax.data.__main__ import main as data_main  # noqa: E402
from nested_jax.data.loader import WindowSource  # noqa: E402
from nested_jax.data.sources import Manifest, Source  # noqa: E402

ROW_LEN, SHARD_ROWS = 64, 8


@pytest.fixture(scope="module")
def records():
    """40 real paragraphs (CRLF line ends, as in the corpus, so normalisation has work to do),
    one exact duplicate, one too short, one not English; ids, a split column and an int column."""
    novel = next(assets.novels("valid"))["text"]
    paras = [p for p in re.split(r"\r?\n\s*\n", novel) if len(p) > 300][:40]
    texts = paras + [paras[3], "Too short.",
                     "Der Hund und die Katze sind nicht hier, aber wir haben keine Zeit mehr dafür."]
    return [{"id": f"n{i}", "text": t, "split": "valid" if i % 5 == 4 else "train", "n": i}
            for i, t in enumerate(texts)]


def _write_parquet(path, recs, row_group_size=7):
    table = pa.table({"id": [r["id"] for r in recs], "n": pa.array([r["n"] for r in recs], pa.int64()),
                      "text": [r["text"] for r in recs], "split": [r["split"] for r in recs]})
    pq.write_table(table, path, row_group_size=row_group_size)


def _write_zst(path, recs, frames=2):
    """JSON lines compressed as `frames` concatenated zstd frames (as multi-part writers do)."""
    lines = [json.dumps(r) + "\n" for r in recs]
    cut = [len(lines) * k // frames for k in range(frames + 1)]
    cctx = zstd.ZstdCompressor(level=3)
    path.write_bytes(b"".join(cctx.compress("".join(lines[a:b]).encode()) for a, b in zip(cut, cut[1:])))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, records):
    d = tmp_path_factory.mktemp("corpus")
    (d / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    _write_parquet(d / "docs.parquet", records)
    _write_zst(d / "docs.jsonl.zst", records)
    return d


def _manifest(path, **extra) -> dict:
    return {"name": "fmt", "row_len": ROW_LEN, "shard_rows": SHARD_ROWS, "sources": [
        {"domain": "prose", "path": str(path), "split": {"field": "split"}, "min_chars": 20, **extra}]}


@pytest.fixture(scope="module")
def reference(corpus):
    """The plain-JSONL baseline, prepared by the library."""
    out = corpus / "ref"
    stats = prepare.prepare(Manifest.from_dict(_manifest(corpus / "docs.jsonl")), out,
                            tokenizer="novels_2k", progress=False)
    return out, stats


def _shards(root, stats) -> dict:
    return {(d, s): np.concatenate([np.load(p) for p in packing.shard_paths(root, stats, d, s)])
            for d, splits in stats["domains"].items() for s in splits}


def test_format_detection():
    assert Source.from_dict({"domain": "x", "path": "a.parquet"}).resolved_format() == "parquet"
    assert Source.from_dict({"domain": "x", "path": "a.jsonl.zst"}).resolved_format() == "jsonl"
    assert Source.from_dict({"domain": "x", "path": "a.txt.zst"}).resolved_format() == "txt"
    Source.from_dict({"domain": "x", "path": "a.parquet", "split": {"field": "split"}})  # allowed
    with pytest.raises(ValueError, match="needs a jsonl or parquet source"):
        Source.from_dict({"domain": "x", "path": "a.txt", "split": {"field": "split"}})


@pytest.mark.parametrize("name", ["docs.parquet", "docs.jsonl.zst"])
def test_same_documents_as_plain_jsonl(corpus, records, name, monkeypatch):
    # Small read units so the readers cross row groups / record batches / read blocks / frames.
    monkeypatch.setattr(sources, "PARQUET_BATCH_ROWS", 5)
    monkeypatch.setattr(sources, "ZSTD_READ_BYTES", 997)
    want = list(sources.read_docs(Source.from_dict(_manifest(corpus / "docs.jsonl")["sources"][0])))
    got = list(sources.read_docs(Source.from_dict(_manifest(corpus / name)["sources"][0])))
    assert got == want and len(got) == len(records)
    assert pq.ParquetFile(corpus / "docs.parquet").num_row_groups == 7


@pytest.mark.parametrize("fmt,write,suffix", [("parquet", _write_parquet, ".parquet"),
                                                ("jsonl", _write_zst, ".jsonl.zst")])
def test_a_folder_of_shards_is_one_source(tmp_path, records, fmt, write, suffix):
    """A folder of shards (FineWeb-Edu's data/CC-MAIN-*/000_0000x.parquet layout) read as one
    source gives the documents of the single file, in shard-name order; no shard is an error."""
    want = list(sources.read_docs(Source.from_dict(
        {"domain": "p", "path": str(_single(tmp_path, records, fmt, write, suffix)),
         "split": {"field": "split"}})))
    folder = tmp_path / "shards"
    for k, a in enumerate(range(0, len(records), 15)):
        (folder / f"part{k // 2}").mkdir(parents=True, exist_ok=True)
        write(folder / f"part{k // 2}" / f"{k:05d}{suffix}", records[a:a + 15])
    (folder / "README.md").write_text("not a shard")
    src = Source.from_dict({"domain": "p", "path": str(folder), "format": fmt,
                            "split": {"field": "split"}})
    assert len(src.files()) == 3 and [f.name for f in src.files()] == sorted(
        f.name for f in src.files())
    got = list(sources.read_docs(src))
    assert [(d.text, d.split) for d in got] == [(d.text, d.split) for d in want]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no file matching"):
        Source.from_dict({"domain": "p", "path": str(empty), "format": fmt}).files()
    with pytest.raises(ValueError, match="folder of shards"):
        Source.from_dict({"domain": "p", "path": str(empty), "format": "txt"}).files()


def _single(tmp_path, records, fmt, write, suffix):
    path = tmp_path / f"all{suffix}"
    write(path, records)
    return path


@pytest.mark.parametrize("name", ["docs.parquet", "docs.jsonl.zst"])
def test_prepare_cli_packs_the_same_rows(corpus, reference, name, capsys):
    ref_root, ref = reference
    out = corpus / f"out-{name}"
    (corpus / f"{name}.json").write_text(json.dumps(_manifest(name)))  # path relative to the manifest
    rc = data_main(["prepare", "--manifest", str(corpus / f"{name}.json"), "--output", str(out),
                    "--workers", "1", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    stats = packing.read_stats(out)
    (counts,), (ref_counts,) = stats["filtering"], ref["filtering"]
    assert {k: v for k, v in counts.items() if k != "path"} == {k: v for k, v in ref_counts.items() if k != "path"}
    assert (counts["read"], counts["duplicate"], counts["too_short"], counts["not_english"]) == (43, 1, 1, 1)
    assert stats["domains"] == ref["domains"]
    assert stats["domains"]["prose"]["valid"]["rows"] > 0
    got, want = _shards(out, stats), _shards(ref_root, ref)
    assert got.keys() == want.keys() == {("prose", "train"), ("prose", "valid")}
    for k in want:
        assert got[k].dtype == want[k].dtype == np.dtype(stats["dtype"])
        np.testing.assert_array_equal(got[k], want[k])


def test_tokenizer_reads_the_formats(corpus, monkeypatch):
    """The `tokenizer` command's input: the same sentences from every format, and it trains."""
    monkeypatch.setattr(sources, "PARQUET_BATCH_ROWS", 4)
    got = {name: spm_train.collect_sentences([Source.from_dict({"domain": "x", "path": str(corpus / name),
                                                                "split": {"field": "split"}})],
                                             "train", 0, 0)[0]
           for name in ("docs.jsonl", "docs.parquet", "docs.jsonl.zst")}
    assert got["docs.parquet"] == got["docs.jsonl"] == got["docs.jsonl.zst"] and len(got["docs.jsonl"]) > 30
    rc = data_main(["tokenizer", "--input", str(corpus / "docs.parquet"), "--field", "text",
                    "--split", "all", "--vocab-size", "400", "--workers", "1",
                    "--output", str(corpus / "tok" / "fmt")])
    assert rc == 0 and (corpus / "tok" / "fmt.model").is_file()


def test_limit_stops_reading_early(corpus):
    src = Source.from_dict({"domain": "x", "path": str(corpus / "docs.parquet"), "limit": 3})
    assert [d.key for d in sources.read_docs(src)] == ["n0", "n1", "n2"]
    src = Source.from_dict({**_manifest(corpus / "docs.jsonl.zst")["sources"][0], "limit": 2})
    docs = list(sources.read_docs(src))
    assert [d.split for d in docs] == ["train", "train", "valid", "valid"]


def test_null_text_is_an_empty_document(tmp_path):
    pq.write_table(pa.table({"text": ["A first document.", None]}), tmp_path / "n.parquet")
    docs = list(sources.read_docs(Source.from_dict({"domain": "x", "path": str(tmp_path / "n.parquet")})))
    assert [(d.key, d.text) for d in docs] == [("n.parquet:0", "A first document."), ("n.parquet:1", "")]


def _cli_error(args, capsys) -> str:
    rc = data_main(args)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err and "Fix:" in lines[0], err
    return lines[0]


def test_missing_column_is_clear(corpus, capsys):
    path = corpus / "docs.parquet"
    src = Source.from_dict({"domain": "x", "path": str(path), "field": "content"})
    with pytest.raises(ValueError, match=re.escape(f"{path} has no column 'content'; its columns are "
                                                   "['id', 'n', 'text', 'split']")):
        list(sources.read_docs(src))
    line = _cli_error(["tokenizer", "--input", str(path), "--field", "content",
                       "--output", str(corpus / "tok" / "x")], capsys)
    assert str(path) in line and "'text'" in line and "--field" in line
    src = Source.from_dict({"domain": "x", "path": str(path), "split": {"field": "subset"}})
    with pytest.raises(ValueError, match="no column 'subset' for the split rule"):
        list(sources.read_docs(src))


def test_non_string_column_is_clear(corpus, capsys):
    path = corpus / "docs.parquet"
    src = Source.from_dict({"domain": "x", "path": str(path), "field": "n"})
    with pytest.raises(ValueError, match=re.escape(f"{path}: column 'n' holds int64, not strings; "
                                                   "its string columns are ['id', 'text', 'split']")):
        list(sources.read_docs(src))
    (corpus / "bad_field.json").write_text(json.dumps(_manifest("docs.parquet", field="n")))
    line = _cli_error(["prepare", "--manifest", str(corpus / "bad_field.json"),
                       "--output", str(corpus / "never"), "--workers", "1", "--no-progress"], capsys)
    assert "column 'n' holds int64" in line and str(path) in line
    assert not (corpus / "never").exists()


@pytest.mark.parametrize("kind", ["truncated", "garbage"])
def test_corrupt_zst_is_clear(tmp_path, corpus, kind, capsys):
    data = (corpus / "docs.jsonl.zst").read_bytes()
    bad = tmp_path / "bad.jsonl.zst"
    bad.write_bytes(data[: len(data) * 2 // 3] if kind == "truncated" else b"not zstd at all\n" * 20)
    with pytest.raises(ValueError, match=re.escape(f"{bad} cannot be decompressed (zstd: ")):
        list(sources.read_docs(Source.from_dict({"domain": "x", "path": str(bad)})))
    line = _cli_error(["tokenizer", "--input", str(bad), "--output", str(tmp_path / "tok" / "x")], capsys)
    assert f"{bad} cannot be decompressed" in line and ("truncated" in line) == (kind == "truncated")


@pytest.mark.parametrize("cut", [0.5, 0.98])
def test_truncated_parquet_is_clear(tmp_path, corpus, cut, capsys):
    data = (corpus / "docs.parquet").read_bytes()
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(ValueError, match=re.escape(f"{bad} is not a readable Parquet file")):
        list(sources.read_docs(Source.from_dict({"domain": "x", "path": str(bad)})))
    (tmp_path / "m.json").write_text(json.dumps(_manifest("bad.parquet")))
    line = _cli_error(["prepare", "--manifest", str(tmp_path / "m.json"), "--output", str(tmp_path / "o"),
                       "--workers", "1", "--no-progress"], capsys)
    assert f"{bad} is not a readable Parquet file" in line


@pytest.mark.parametrize("name,package", [("docs.parquet", "pyarrow"), ("docs.jsonl.zst", "zstandard")])
def test_missing_reader_package_names_the_extra(corpus, name, package, monkeypatch, capsys):
    for mod in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        monkeypatch.setitem(sys.modules, mod, None)  # `import` now raises ImportError
    monkeypatch.setitem(sys.modules, package, None)
    path = corpus / name
    src = Source.from_dict({"domain": "x", "path": str(path)})
    for fn in (src.check_readers, lambda: list(sources.read_docs(src))):
        with pytest.raises(ValueError, match=re.escape(f"Reading {path} needs the {package!r} package")
                           + ".*nested_jax\\[corpora\\]"):
            fn()
    line = _cli_error(["tokenizer", "--input", str(path), "--output", str(corpus / "tok" / "x")], capsys)
    assert "corpora" in line and package in line


def test_large_vocab_ids_survive_packing(tmp_path):
    """Ids of Llama 3 (128,256) and Qwen2 (151,936) vocabularies do not fit uint16: the shards
    store int32 (stats.json "dtype"), and pack -> shards -> loader windows give them back."""
    rng = np.random.default_rng(0)
    eos = 151_643
    docs = [list(rng.integers(0, 151_936, size=n)) + [eos] for n in (37, 5, 120, 64, 1)]
    docs[0][:3] = [151_935, 128_255, 65_536]
    rows, dropped = packing.pack(docs, 16)
    stream = np.concatenate([np.asarray(d) for d in docs])
    assert rows.dtype == np.int32 and dropped == len(stream) % 16
    np.testing.assert_array_equal(rows.reshape(-1), stream[: rows.size])
    names = packing.write_shards(rows, tmp_path / "d" / "train", 4)
    loaded = np.concatenate([np.load(tmp_path / "d" / "train" / n) for n in names])
    assert loaded.dtype == np.int32 and loaded.max() == 151_935
    np.testing.assert_array_equal(loaded, rows)
    win = WindowSource([tmp_path / "d" / "train" / n for n in names], seq_len=15)
    flat = rows.reshape(-1)
    for i in range(len(win)):
        np.testing.assert_array_equal(win[i], flat[i * 15: i * 15 + 16])
