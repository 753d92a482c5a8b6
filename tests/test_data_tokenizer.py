"""Tokenizer: exact round trip on real novel text, special ids, errors, and the training CLI."""

import json

import pytest

from nested_jax.data import assets, spm_train
from nested_jax.data.sources import Source
from nested_jax.data.tokenizer import SentencePieceTokenizer as Tokenizer, load_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("novels_2k")


@pytest.fixture(scope="module")
def paragraphs():
    rec = next(assets.novels("valid"))
    lines = [line for line in rec["text"].split("\n") if len(line) > 200]
    return lines[:20]


def test_special_ids_and_vocab(tok):
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
    assert tok.vocab_size == 2048
    assert len(tok.sha256) == 64
    meta = json.loads((assets.TOKENIZERS_DIR / "novels_2k.json").read_text())
    assert meta["sha256"] == tok.sha256


def test_round_trip_real_novel_text(tok, paragraphs):
    text = "\n".join(paragraphs[:5]) + "\n\n  indented line\n"
    assert tok.decode(tok.encode(text)) == text
    for p in paragraphs:
        assert tok.decode(tok.encode(p)) == p


def test_round_trip_non_ascii(tok):
    for text in ["Café naïve — “quoted” ‘single’ £5 ñ æ œ ſ ﬁ", "Ἀθῆναι καὶ Ῥώμη", "日本語 テキスト 🙂", "\ttab\r\n x  "]:
        assert tok.decode(tok.encode(text)) == text


def test_encode_batch_matches_encode(tok, paragraphs):
    texts = paragraphs[:6] + ["a\nb", ""]
    assert tok.encode_batch(texts, add_eos=True, num_threads=2) == [tok.encode(t, add_eos=True) for t in texts]
    ids = tok.encode("Hello there.", add_bos=True, add_eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.decode(ids) == "Hello there."


def test_newline_is_one_token_and_keeps_word_pieces(tok):
    a = tok.encode("The house")
    assert tok.encode("x\nThe house")[-len(a):] == a
    assert tok.encode("one\ntwo").count(tok.newline_id) == 1


def test_unknown_name_lists_shipped():
    with pytest.raises(ValueError, match="novels_2k"):
        load_tokenizer("no_such_tokenizer")


def test_missing_path_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_tokenizer(str(tmp_path / "missing.model"))


def _tiny_sources(tmp_path, n=60):
    rec = next(assets.novels("valid"))
    path = tmp_path / "tiny.txt"
    path.write_text("\n".join(rec["text"].split("\n")[:n]))
    return [Source.from_dict({"domain": "t", "path": str(path), "format": "txt"})]


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_train_tokenizer_writes_model_vocab_and_stats(tmp_path, model_type):
    stats = spm_train.train_tokenizer(_tiny_sources(tmp_path), tmp_path / "tiny", vocab_size=400,
                                      model_type=model_type, split="train", sample_limit=1000)
    for ext in (".model", ".vocab", ".json"):
        assert (tmp_path / f"tiny{ext}").is_file()
    t = Tokenizer(tmp_path / "tiny.model")
    assert t.sha256 == stats["sha256"] == json.loads((tmp_path / "tiny.json").read_text())["sha256"]
    assert (t.pad_id, t.unk_id, t.bos_id, t.eos_id) == (0, 1, 2, 3)
    cov = stats["coverage"]
    assert cov["tokens_per_word"] >= 1.0 and 0 <= cov["single_token_word_share"] <= 1
    assert sum(cov["piece_length_histogram"].values()) > 0
    s = "Über naïve text\nwith two lines"
    assert t.decode(t.encode(s)) == s


def test_train_tokenizer_rejects_empty_split(tmp_path):
    with pytest.raises(ValueError, match="No training text"):
        spm_train.train_tokenizer(_tiny_sources(tmp_path), tmp_path / "x", vocab_size=400, split="valid")
