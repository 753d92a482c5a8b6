"""prepare: determinism, dedup, filters, packing accounts for every token, split rules, clear errors."""

import json

import numpy as np
import pytest

from nested_jax.data import assets, packing, prepare, presets, sources
from nested_jax.data.sources import Manifest, Source
from nested_jax.data.tokenizer import load_tokenizer

ENGLISH = [
    "It was the best of times and it was the worst of times, and we had everything before us.",
    "She said that there was nothing in the house which could be of any use to them at all.",
    "He would not go with them to the town, for he was tired of the road and of all its people.",
    "They had been walking for many hours when they saw the lights of the village below them.",
]


def _write_inputs(tmp_path):
    jl = tmp_path / "docs.jsonl"
    recs = [{"id": f"d{i}", "text": t, "split": "train" if i % 2 == 0 else "valid"} for i, t in enumerate(ENGLISH)]
    recs.append({"id": "dup", "text": ENGLISH[0], "split": "train"})  # exact copy of d0
    recs.append({"id": "de", "text": "Der Hund und die Katze sind nicht hier, aber wir haben keine Zeit mehr dafür.",
                 "split": "train"})
    jl.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    txt = tmp_path / "lines.txt"
    txt.write_text("\n".join(ENGLISH[::-1]) + "\n" + "short\n" + ENGLISH[1] + "\n")  # a duplicate across sources
    d = tmp_path / "code"
    d.mkdir()
    for i in range(4):
        (d / f"m{i}.py").write_text(f"def f{i}(x):\n    return x + {i}    \n\n\n\n# end {i}\n" * 5)
    return {"sources": [
        {"domain": "prose", "path": str(jl), "format": "jsonl", "split": {"field": "split"}, "min_chars": 20},
        {"domain": "prose", "path": str(txt), "split": "train", "min_chars": 20},
        {"domain": "code", "path": str(d), "format": "dir", "glob": "*.py", "english": False,
         "split": {"valid_fraction": 0.5}, "weight": 0.5},
    ], "name": "tiny", "row_len": 16, "shard_rows": 3}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tiny")
    m = Manifest.from_dict(_write_inputs(tmp))
    stats = prepare.prepare(m, tmp / "out", tokenizer="novels_2k", progress=False)
    return m, tmp, stats


def test_deterministic_byte_identical(tiny):
    m, tmp, stats = tiny
    prepare.prepare(m, tmp / "out2", tokenizer="novels_2k", progress=False)
    files = sorted(p.relative_to(tmp / "out") for p in (tmp / "out").rglob("*.npy"))
    assert files and files == sorted(p.relative_to(tmp / "out2") for p in (tmp / "out2").rglob("*.npy"))
    for f in files:
        assert (tmp / "out" / f).read_bytes() == (tmp / "out2" / f).read_bytes()


def test_dedup_filters_and_splits(tiny):
    _, _, stats = tiny
    jl, txt, code = stats["filtering"]
    assert jl["duplicate"] == 1 and jl["not_english"] == 1 and jl["kept"] == 4
    assert txt["too_short"] == 1 and txt["duplicate"] == 5 and txt["kept"] == 0  # all already seen in docs.jsonl
    assert code["kept"] == 4 and code["not_english"] == 0
    assert stats["domains"]["prose"]["train"]["documents"] == 2
    assert stats["domains"]["prose"]["valid"]["documents"] == 2
    assert sum(v["documents"] for v in stats["domains"]["code"].values()) == 4
    assert stats["weights"] == {"prose": 1.0, "code": 0.5}


def test_packing_accounts_for_every_token(tiny):
    _, tmp, stats = tiny
    tok = load_tokenizer("novels_2k")
    assert stats["tokenizer"]["sha256"] == tok.sha256
    texts = [ENGLISH[0], ENGLISH[2]]  # prose/train, in manifest order
    expected = np.concatenate([tok.encode(t, add_eos=True) for t in texts])
    info = stats["domains"]["prose"]["train"]
    rows = np.concatenate([np.load(p) for p in packing.shard_paths(tmp / "out", stats, "prose", "train")])
    assert rows.shape[1] == 16 and rows.dtype == np.int32
    assert info["tokens"] == len(expected) == rows.size + info["tokens_dropped"]
    assert info["tokens_dropped"] < 16
    np.testing.assert_array_equal(rows.reshape(-1), expected[: rows.size])
    assert (rows == tok.eos_id).sum() == (expected[: rows.size] == tok.eos_id).sum()


def test_pack_unit():
    rows, dropped = packing.pack([[5, 6, 3], [7, 3], [8, 9, 10, 3]], 4)
    np.testing.assert_array_equal(rows, [[5, 6, 3, 7], [3, 8, 9, 10]])
    assert dropped == 1


def test_whitespace_normalised(tiny):
    _, tmp, stats = tiny
    tok = load_tokenizer("novels_2k")
    rows = np.concatenate([np.load(p) for s in stats["domains"]["code"] for p in
                           packing.shard_paths(tmp / "out", stats, "code", s)])
    text = tok.decode(rows.reshape(-1))
    assert "    \n" not in text and "\n\n\n" not in text and "    return" in text


def test_missing_input_is_clear(tmp_path):
    m = Manifest.from_dict({"sources": [{"domain": "x", "path": str(tmp_path / "nope.jsonl")}]})
    with pytest.raises(FileNotFoundError, match="not found"):
        prepare.prepare(m, tmp_path / "o", progress=False)


def test_empty_input_is_clear(tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n")
    m = Manifest.from_dict({"sources": [{"domain": "x", "path": str(tmp_path / "empty.txt")}]})
    with pytest.raises(ValueError, match="no documents"):
        prepare.prepare(m, tmp_path / "o", progress=False)


def test_unknown_format_is_clear(tmp_path):
    with pytest.raises(ValueError, match="Unknown format"):
        Source.from_dict({"domain": "x", "path": "a.txt", "format": "csv"})
    with pytest.raises(ValueError, match="Cannot infer the format"):
        Source.from_dict({"domain": "x", "path": "a.csv"})
    with pytest.raises(ValueError, match="Unknown source key"):
        Source.from_dict({"domain": "x", "path": "a.txt", "feild": "text"})


def test_bad_split_is_clear(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_text(json.dumps({"text": ENGLISH[0], "split": "test"}) + "\n")
    src = Source.from_dict({"domain": "x", "path": str(p), "split": {"field": "split"}})
    with pytest.raises(ValueError, match="Bad split 'test'.*map"):
        list(sources.read_docs(src))
    src = Source.from_dict({"domain": "x", "path": str(p), "split": {"field": "split", "map": {"test": "valid"}}})
    assert [d.split for d in sources.read_docs(src)] == ["valid"]
    with pytest.raises(ValueError, match="Bad split"):
        Source.from_dict({"domain": "x", "path": str(p), "split": "validation"})


def test_manifest_files(tmp_path):
    (tmp_path / "a.txt").write_text(ENGLISH[0] + "\n")
    (tmp_path / "m.json").write_text(json.dumps({"sources": [{"domain": "x", "path": "a.txt"}]}))
    (tmp_path / "m.py").write_text("def get_manifest():\n    return {'sources': [{'domain': 'x', 'path': 'a.txt'}]}\n")
    for name in ("m.json", "m.py"):
        m = sources.load_manifest(tmp_path / name)
        assert m.name == "m" and [d.text for d in sources.read_docs(m.sources[0])] == [ENGLISH[0]]
    with pytest.raises(ValueError, match="Unknown manifest type"):
        (tmp_path / "m.yaml").write_text("x")
        sources.load_manifest(tmp_path / "m.yaml")


def test_presets_resolve_vendored_inputs():
    for name in presets.PRESETS:
        for src in presets.get_preset(name).sources:
            assert src.files(), (name, src.domain)
    with pytest.raises(ValueError, match="presets are"):
        presets.get_preset("nope")


def test_wikitext_split_by_article():
    src = presets.get_preset("full").sources[1]
    docs = list(sources.read_docs(src))
    assert len(docs) == 60 and all(d.text.startswith(" = ") for d in docs)
    assert {d.split for d in docs} == {"train", "valid"}


def test_missing_vendored_file_is_clear():
    with pytest.raises(FileNotFoundError, match="git checkout"):
        assets.data_path("novels100/missing.jsonl.xz")


def test_english_filter():
    from nested_jax.data.text import is_english
    assert all(is_english(t) for t in ENGLISH)
    for foreign in ["Der schnelle braune Fuchs springt über den faulen Hund, und die Katze ist nicht da.",
                    "Le renard brun rapide saute par-dessus le chien paresseux et il est dans la maison.",
                    "El zorro marrón rápido salta sobre el perro perezoso y no está en la casa.",
                    "Ἀθῆναι καὶ Ῥώμη εἰσὶ πόλεις μεγάλαι.", "12345 67890 + - * /"]:
        assert not is_english(foreign), foreign
