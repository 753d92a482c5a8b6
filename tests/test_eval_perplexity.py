"""`python -m nested_jax.eval perplexity`: rolling windows (lm-evaluation-harness's
loglikelihood_rolling), the metrics against a hand computation (NumPy log-softmax of the
model's full-forward logits), finite values on text the project never saw."""

import gzip
import json
import math
import re

import jax
import numpy as np
import pytest

from nested_jax.data.tokenizer import load_tokenizer
from nested_jax.eval import perplexity as ppl
from nested_jax.eval.__main__ import main
from nested_jax.eval.models import PlainLM, from_loaded
from nested_jax.eval.restore import load
from nested_jax.model.lm import init_params
from tests.tiny_checkpoint import tiny_config, write_checkpoint

L = 32  # window (train.seq_len of the tiny checkpoints)
TEXT = ("The lighthouse keeper counted seventeen gulls on the rail, then eighteen; "
        "the sea was grey as slate and the kettle sang.\nNobody came.")


def _harness_windows(tokens, prefix, max_seq_len, context_len):
    """lm-evaluation-harness get_rolling_token_windows, written out for the test."""
    pred_len = max_seq_len - context_len + 1
    first = min(max_seq_len, len(tokens))
    out = [([prefix] + tokens[:first - 1], tokens[:first])]
    predicted = first
    while predicted < len(tokens):
        n = min(len(tokens) - predicted, pred_len)
        end = predicted + n
        out.append((tokens[end - max_seq_len - 1:end - 1], tokens[end - n:end]))
        predicted += n
    return out


@pytest.mark.parametrize("n, stride", [(5, 32), (32, 32), (70, 32), (70, 10), (33, 1)])
def test_rolling_windows_score_every_token_once_like_the_harness(n, stride):
    seq = [-1] + list(range(n))  # prefix, then tokens 0..n-1
    wins = ppl.rolling_windows(n, L, stride)
    scored = [j for s, e, k in wins for j in range(e - k, e)]
    assert scored == list(range(n))  # every target once, in order
    ref = _harness_windows(list(range(n)), -1, L, L - stride + 1)
    assert len(ref) == len(wins)
    for (s, e, k), (ctx, cont) in zip(wins, ref):
        inputs = seq[s:e]
        assert len(inputs) <= L and seq[e - k + 1:e + 1] == cont
        assert inputs[-len(ctx):] == ctx[-len(inputs):]  # same inputs (harness trims to L)
        if s > 0:
            assert e - k - s >= L - stride  # context before the first scored token


@pytest.fixture(scope="module")
def tiny():
    fn, params = init_params(tiny_config("transformer", seq_len=L).model, seed=2)
    forward = jax.jit(lambda p, t: fn.bind(p)(t))
    return fn, params, PlainLM(forward, params, name="transformer"), forward


def _np_logp(forward, params, inputs, targets):
    """Independent log-probs: NumPy log-softmax (float64) of the full-forward logits."""
    logits = np.asarray(forward(params, np.asarray([inputs], np.int32)))[0].astype(np.float64)
    m = logits.max(-1, keepdims=True)
    logz = np.log(np.exp(logits - m).sum(-1)) + m[:, 0]
    return logits[np.arange(len(targets)), targets] - logz


def test_one_window_matches_a_hand_computation(tiny):
    fn, params, model, forward = tiny
    tok = load_tokenizer("novels_2k")
    short = "Nobody came to the lighthouse that winter."
    ids = tok.encode(short)
    assert len(ids) < L
    res = ppl.evaluate(model, tok, {"t": [ppl.Document(short, short)]}, max_len=L, stride=L)
    seq = [tok.eos_id] + ids
    lp = _np_logp(forward, params, seq[:-1], seq[1:]).sum()
    words, n_bytes = len(re.split(r"\s+", short)), len(short.encode())
    m = res["files"]["t"]
    assert m["tokens"] == len(ids) and m["words"] == words == 7 and m["bytes"] == n_bytes
    np.testing.assert_allclose(m["logprob"], lp, rtol=1e-5)
    np.testing.assert_allclose(m["word_perplexity"], math.exp(-lp / words), rtol=1e-4)
    np.testing.assert_allclose(m["byte_perplexity"], math.exp(-lp / n_bytes), rtol=1e-4)
    np.testing.assert_allclose(m["bits_per_byte"], -lp / n_bytes / math.log(2), rtol=1e-4)
    np.testing.assert_allclose(m["token_ce"], -lp / len(ids), rtol=1e-5)
    assert res["overall"] == {k: v for k, v in m.items() if k not in ("documents", "windows")}


def test_strided_windows_token_by_token(tiny):
    fn, params, model, forward = tiny
    tok = load_tokenizer("novels_2k")
    seq = [tok.eos_id] + tok.encode(TEXT)
    assert L < len(seq) - 1 <= 2 * L  # two windows at stride L
    for stride in (L, 12):
        got = ppl.score_token_lists(model, [seq], max_len=L, stride=stride, batch_size=3)[0]
        want = np.zeros(len(seq) - 1)
        for s, e, k in ppl.rolling_windows(len(seq) - 1, L, stride):
            want[e - k:e] = _np_logp(forward, params, seq[s:e], seq[s + 1:e + 1])[-k:]
        np.testing.assert_allclose(got, want, atol=2e-5)
    # With stride 12 the tokens after the first window see more context than at stride L.
    far = ppl.score_token_lists(model, [seq], max_len=L, stride=L)[0]
    assert not np.allclose(far[L:], got[L:])
    # --prefix none: the first token is not scored.
    res = ppl.evaluate(model, tok, {"t": [ppl.Document(TEXT, TEXT)]}, max_len=L, stride=L,
                       prefix="none")
    assert res["files"]["t"]["tokens"] == len(seq) - 2


def test_wikitext2_builtin_is_60_detokenized_articles():
    docs = ppl.read_documents("wikitext2")
    assert len(docs) == 60
    assert docs[0].count_text.startswith(" = Homarus gammarus = ")
    assert " @-@ " in "".join(d.count_text for d in docs)
    assert not any(" @-@ " in d.text for d in docs) and " , " not in docs[0].text
    assert sum(ppl.count_words(d.count_text) for d in docs) > 200_000


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ppl_ckpts")
    out = {}
    for variant in ("transformer", "hope_attention"):
        write_checkpoint(tiny_config(variant, seq_len=L), str(root / variant), step=4)
        out[variant] = str(root / variant)
    return out


def test_cli_on_unseen_text_files(ckpts, tmp_path, capsys):
    txt = tmp_path / "letter.txt"
    txt.write_text("Dear Ada,\nthe orchard flooded twice this spring, and the bees moved to "
                   "the old bell tower. We counted 40 hives. — Yours, Tom\n", encoding="utf-8")
    jl = tmp_path / "notes.jsonl.gz"
    with gzip.open(jl, "wt", encoding="utf-8") as f:
        for t in ("Quantum kettles whistle in 7 dimensions.", "Zebras prefer jazz on Tuesdays."):
            f.write(json.dumps({"body": t, "id": 1}) + "\n")
    out = tmp_path / "p.json"
    args = ["perplexity", "--checkpoint", ckpts["transformer"], "--text", str(txt), str(jl),
            "--field", "body", "--stride", "16", "--output", str(out), "--no-progress"]
    assert main(args) == 0
    doc = json.loads(out.read_text())
    m = doc["metrics"]
    assert set(m["files"]) == {str(txt), str(jl)} and m["files"][str(jl)]["documents"] == 2
    for r in list(m["files"].values()) + [m["overall"]]:
        for key in ("word_perplexity", "byte_perplexity", "bits_per_byte", "token_perplexity"):
            assert math.isfinite(r[key]) and r[key] > 0
    assert m["overall"]["tokens"] == sum(r["tokens"] for r in m["files"].values())
    assert doc["settings"]["window"] == L and doc["settings"]["stride"] == 16
    table = capsys.readouterr().out
    assert "word ppl" in table and "letter.txt" in table


def test_memorized_scoring_uses_the_online_scan(ckpts, tmp_path):
    loaded = load(ckpts["hope_attention"])
    model = from_loaded(loaded)
    tok = loaded.tokenizer
    seq = [tok.eos_id] + tok.encode(TEXT)
    frozen = ppl.score_token_lists(model, [seq], max_len=L, stride=L)[0]
    mem = ppl.score_token_lists(model, [seq], max_len=L, stride=L, memorize=True)[0]
    s = int(loaded.cfg.model.online.segment_len)
    # Same scores until the first CMS update (after the first segment), different after.
    np.testing.assert_allclose(mem[:s], frozen[:s], atol=1e-5)
    assert np.abs(mem[s:L] - frozen[s:L]).max() > 1e-4
    # The memorised scores are the online scan's own (OnlineLM.run from a fresh state).
    t = np.full((1, L + 1), tok.eos_id, np.int32)
    t[0] = seq[:L + 1]
    logp, _ = model.run(t, np.ones((1, L), np.float32))
    np.testing.assert_allclose(mem[:L], logp[0], atol=1e-5)
    txt = tmp_path / "t.txt"
    txt.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "m.json"
    assert main(["perplexity", "--checkpoint", ckpts["hope_attention"], "--text", str(txt),
                 "--learn-online", "--output", str(out), "--no-progress"]) == 0
    doc = json.loads(out.read_text())
    assert doc["learn_online"]["applied"] and "updates" in doc["settings"]["fast_state"]
    np.testing.assert_allclose(doc["metrics"]["overall"]["logprob"], mem.sum(), rtol=1e-5)


@pytest.mark.parametrize("extra, needle", [
    (["--text", "/no/such/file.txt"], "does not exist"),
    (["--text", "{bin}"], "UTF-8"),
    (["--text", "{jsonl}"], "no field 'text'"),
    (["--text", "wikitext2", "--stride", "40"], "exceeds the window"),
])
def test_cli_bad_input(ckpts, tmp_path, capsys, extra, needle):
    bin_path = tmp_path / "blob.txt"
    bin_path.write_bytes(bytes(range(256)) * 4)
    jsonl = tmp_path / "x.jsonl"
    jsonl.write_text('{"body": "hi"}\n')
    extra = [x.format(bin=bin_path, jsonl=jsonl) for x in extra]
    rc = main(["perplexity", "--checkpoint", ckpts["transformer"], "--output",
               str(tmp_path / "o.json")] + extra)
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and needle in err and "Fix:" in err
