"""NIAH / passkey prompts: true token lengths and needle depths; a tiny model trained on
fixed passkey prompts retrieves the key (greedy and by ranking)."""


import numpy as np
import pytest

from helpers import tiny_model_config
from nested_jax.data.tokenizer import load_tokenizer
from nested_jax.eval import niah
from nested_jax.eval.models import PlainLM
from nested_jax.eval.trainer import Trainer
from nested_jax.model.lm import init_params


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("novels_2k")


@pytest.mark.parametrize("task", ["niah", "passkey"])
def test_prompts_have_the_requested_token_length_and_depth(tok, task):
    tpl = niah.TEMPLATES[task]
    cells = niah.build_samples(tok, tpl, [256, 1024, 4096], [0, 10, 50, 90, 100], 2, seed=3,
                               distractors=3)
    for (length, depth), samples in cells.items():
        for s in samples:
            assert len(s.prompt) == length
            # the tokenizer agrees: decoding and re-encoding gives the same length (the
            # leading EOS is the only token decode drops)
            text = tok.decode(s.prompt)
            assert abs(len(tok.encode(text)) + 1 - length) <= 2, (length, len(tok.encode(text)))
            assert s.prompt[0] == tok.eos_id
            assert s.prompt[s.needle_index:s.needle_index + len(s.needle)] == s.needle
            assert tpl.needle.format(key=s.key) in text and text.endswith(tpl.question)
            assert text.count(s.key) == tpl.needle.count("{key}")  # the key appears only there
            # the needle sits at the sentence boundary nearest to depth · haystack tokens
            head = 1 + (len(tok.encode(tpl.intro)) + 1 if tpl.intro else 0)
            tail = 1 + len(niah.encode_pair(tok, tpl.question, " " + s.key)[0])
            h = length - head - len(s.needle) - tail
            assert s.needle_index - head == round(s.depth_actual * h)
            assert abs(s.depth_actual - depth / 100) <= 80 / h, (length, depth, s.depth_actual)
            assert len(s.distractors) == 3 and all(d != s.answer for d in s.distractors)
    # seeded: the same seed gives the same prompts, another seed different ones
    again = niah.build_samples(tok, tpl, [256], [50], 2, seed=3, distractors=3)
    assert [s.prompt for s in again[(256, 50)]] == [s.prompt for s in cells[(256, 50)]]
    other = niah.build_samples(tok, tpl, [256], [50], 2, seed=4, distractors=3)
    assert [s.prompt for s in other[(256, 50)]] != [s.prompt for s in cells[(256, 50)]]


def test_tiny_model_trained_on_fixed_passkey_prompts_retrieves_the_key(tok):
    rng = np.random.default_rng(0)
    samples = [niah.make_sample(tok, niah.TEMPLATES["passkey"], 160, d, rng, distractors=4)
               for d in (0.0, 0.5, 1.0)]
    assert len({s.key for s in samples}) == 3
    seq = max(len(s.prompt) + len(s.answer) for s in samples)
    batch = np.zeros((len(samples), seq + 1), np.int32)
    for r, s in enumerate(samples):
        ids = s.prompt + s.answer + [tok.eos_id]
        batch[r, :len(ids)] = ids
        batch[r, len(ids):] = tok.eos_id
    cfg = tiny_model_config(vocab_size=tok.vocab_size, d_model=64, n_layers=1, n_heads=4)
    fn, params = init_params(cfg, 0)
    trainer = Trainer(fn, params, lr=1e-2)
    for _ in range(100):
        loss = trainer.step(batch)
    assert float(loss) < 0.05, float(loss)
    model = PlainLM(lambda p, toks: fn.bind(p)(toks), trainer.params, name="tiny")
    got = niah._score_cell(model, tok, samples, batch_size=4, batch_tokens=4096)
    assert got["greedy_acc"] == 1.0, [r["generated"] for r in got["samples"]]
    assert got["rank_acc"] == 1.0 and got["mean_margin"] > 0
