"""Incremental decoding (nested_jax/eval/decode.py, python -m nested_jax.generate).

Greedy incremental decoding must equal the argmax of one teacher-forced pass over the
generated text — the full forward (transformer, titans) or the online segment scan that
HOPE variants are trained with, with CMS updates off (frozen fast state) and on
(--memorize) — and its log-probs must match that pass's. Seeded sampling reproduces; the
CLI's bad inputs are one `error: ... Fix: ...` paragraph with exit status 2.
"""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nested_jax.eval.decode import Decoder, block_len, sample_logits
from nested_jax.generate import main
from nested_jax.model.variants import online_names

from nested_jax.model.lm import init_params
from nested_jax.model.online import online_forward
from tests.tiny_checkpoint import tiny_config, write_checkpoint

ONLINE_VARIANTS = online_names()

VARIANTS = ("transformer", "titans", "hope", "hope_attention", "hope_hybrid")
MAX_LEN, P, N = 64, 21, 30  # prompt crosses a block boundary; generation crosses two more


@pytest.fixture(scope="module")
def models():
    """Built lazily and shared: {variant: (Functional, params)}."""
    cache = {}

    def get(variant):
        if variant not in cache:
            cache[variant] = init_params(tiny_config(variant).model, seed=1)
        return cache[variant]
    return get


@pytest.fixture(scope="module")
def generations(models):
    """Greedy generations shared between tests: {(variant, memorize): (Generation, seq)}."""
    cache = {}

    def get(variant, memorize=False):
        if (variant, memorize) not in cache:
            fn, params = models(variant)
            dec = Decoder(fn, params, max_len=MAX_LEN, memorize=memorize, prefill=1)
            prompt = np.random.RandomState(0).randint(4, 2048, (1, P)).astype(np.int32)
            g = dec.generate(prompt, N, stop_at_eos=False, want_logits=True)
            cache[(variant, memorize)] = (g, np.concatenate([prompt, g.tokens], axis=1))
        return cache[(variant, memorize)]
    return get


def _reference(fn, params, seq, update):
    """(argmax [n], log-prob of the next token [n]) at positions P-1 .. len-2 of one
    teacher-forced pass over seq, right-padded (padding comes after every
    position compared, so causality keeps it out)."""
    n = seq.shape[1]
    online = fn.cfg.variant in ONLINE_VARIANTS
    t = MAX_LEN if online else MAX_LEN + block_len(fn.cfg)  # a multiple of the read block
    tokens = np.full((1, t + 1), 3, np.int32)
    tokens[:, :n] = seq
    if online:
        mask = np.zeros((1, t), np.float32)
        mask[0, :n - 1] = 1.0
        _, aux = jax.jit(lambda p, t, m: online_forward(
            fn, p, t, step=0, update=update, mask_BxT=m, collect_argmax=True))(params, tokens,
                                                                               mask)
        am, lp = np.asarray(aux["argmax"][0]), -np.asarray(aux["ce"][0])
    else:
        logits = np.asarray(jax.jit(lambda p, t: fn.bind(p)(t))(params, tokens[:, :-1]))[0]
        logits = logits.astype(np.float64)
        logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
        am = logits.argmax(-1)
        lp = logits[np.arange(t), tokens[0, 1:]] - logz
    return am[P - 1:n - 1], lp[P - 1:n - 1]


def _check_matches(g, seq, am_ref, lp_ref):
    gen = seq[0, P:]
    np.testing.assert_allclose(g.logprobs[0], lp_ref, atol=1e-4)
    top2 = np.sort(g.logits[0], axis=-1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 1e-4  # a near-tie may go either way in float32
    assert clear.sum() >= len(gen) - 2
    np.testing.assert_array_equal(gen[clear], am_ref[clear])


@pytest.mark.parametrize("variant", VARIANTS)
def test_greedy_incremental_decoding_equals_teacher_forced_argmax(variant, models, generations):
    fn, params = models(variant)
    g, seq = generations(variant)
    assert g.tokens.shape == (1, N) and g.stopped == ["max_new_tokens"]
    am_ref, lp_ref = _reference(fn, params, seq, update=False)
    _check_matches(g, seq, am_ref, lp_ref)


@pytest.mark.parametrize("variant", ONLINE_VARIANTS)
def test_memorizing_decoding_equals_the_online_scan_with_updates(variant, models, generations):
    fn, params = models(variant)
    g, seq = generations(variant, memorize=True)
    am_ref, lp_ref = _reference(fn, params, seq, update=True)
    _check_matches(g, seq, am_ref, lp_ref)
    # The CMS levels did learn: the prompt's first segment (targets known) updated them
    # before the first new token, read from the same context as the frozen run's.
    frozen, _ = generations(variant)
    assert np.abs(g.logits[0, 0] - frozen.logits[0, 0]).max() > 1e-4


def test_seeded_sampling_reproduces_and_respects_top_k(models):
    fn, params = models("transformer")
    dec = Decoder(fn, params, max_len=MAX_LEN)
    prompt = np.full((2, 5), 7, np.int32)
    kw = dict(temperature=0.9, top_k=20, top_p=0.95, stop_at_eos=False, want_logits=True)
    a = dec.generate(prompt, 24, seed=5, **kw)
    b = dec.generate(prompt, 24, seed=5, **kw)
    c = dec.generate(prompt, 24, seed=6, **kw)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert not np.array_equal(a.tokens, c.tokens)
    assert not np.array_equal(a.tokens[0], a.tokens[1])  # rows draw their own tokens
    rank = (a.logits > np.take_along_axis(a.logits, a.tokens[..., None], -1)).sum(-1)
    assert rank.max() < 20  # every draw is among the top 20
    # top_k = 1 and a tiny nucleus both collapse to the argmax.
    logits = jax.random.normal(jax.random.key(0), (4, 50))
    for k, p in ((1, 1.0), (0, 1e-6)):
        tok = sample_logits(logits, jax.random.key(1), jnp.float32(1.0), jnp.int32(k),
                            jnp.float32(p))
        np.testing.assert_array_equal(tok, jnp.argmax(logits, -1))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    wd = tmp_path_factory.mktemp("gen_ckpt") / "hope_attention"
    write_checkpoint(tiny_config("hope_attention"), str(wd), step=3)
    return str(wd)


def test_cli_output_and_learn_online(ckpt, tmp_path, capsys):
    out_json = tmp_path / "m.json"
    assert main(["--checkpoint", ckpt, "--prompt", "It was a dark night,", "--max-new-tokens",
                 "12", "--ignore-eos", "--learn-online", "--output", str(out_json)]) == 0
    m = json.loads(out_json.read_text())
    for key in ("prompt", "completion", "tokens", "tokens_per_sec", "checkpoint", "step"):
        assert key in m
    assert len(m["tokens"]) == 12 and m["step"] == 3 and m["sampling"]["greedy"]
    assert m["learn_online"] == {"requested": True, "applied": True}
    # the reported rate is the generated tokens over the timed decode (Generation.tokens_per_sec)
    assert m["tokens_per_sec"] == pytest.approx(m["new_tokens"] / max(m["timing_s"]["decode"],
                                                                      1e-9), rel=5e-2)  # (decode time is rounded to 0.1 ms)
    out = capsys.readouterr()
    assert m["completion"] in out.out and "tokens/s" in out.err


@pytest.mark.parametrize("extra, needle", [
    (["--prompt", "   "], "the prompt is empty"),
    (["--prompt", "word " * 80], "the prompt is"),
    (["--prompt", "Hello", "--max-new-tokens", "500"], "exceed"),
])
def test_cli_bad_input_is_one_error_paragraph(ckpt, capsys, extra, needle):
    assert main(["--checkpoint", ckpt] + extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err and "Fix:" in err
    assert "Traceback" not in err


def test_cli_missing_checkpoint_exits_2_without_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "nested_jax.generate", "--checkpoint",
                        str(tmp_path / "nope"), "--prompt", "Hello"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error: ") and "Fix:" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_titans_mac_decodes_in_mac_segments():
    """Memory as context attends within MAC segments and retrieves at their start, so its
    read block is the MAC segment (the variant spec's read_block), not the memory chunk:
    greedy decoding equals the teacher-forced forward."""
    c = tiny_config("titans")
    c.model.titans.mode, c.model.titans.mac_segment = "mac", 16  # chunk 8: two per segment
    assert block_len(c.model) == 16
    fn, params = init_params(c.model, seed=1)
    dec = Decoder(fn, params, max_len=MAX_LEN, prefill=1)
    prompt = np.random.RandomState(0).randint(4, 2048, (1, P)).astype(np.int32)
    g = dec.generate(prompt, N, stop_at_eos=False, want_logits=True)
    seq = np.concatenate([prompt, g.tokens], axis=1)
    am_ref, lp_ref = _reference(fn, params, seq, update=False)
    _check_matches(g, seq, am_ref, lp_ref)
