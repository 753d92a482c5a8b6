"""lm-evaluation-harness adapter (nested_jax/lmeval) cross-checked against our own scorers,
with the harness itself (a client no one here wrote) building the requests from the offline
task YAMLs (nested_jax/lmeval_tasks) and computing acc / acc_norm / perplexities:

- multiple choice: the harness's per-item log-likelihoods (log_samples) equal `eval zeroshot`'s
  scorer on the same items (≤ 1e-4), and its acc / acc_norm equal ours item by item;
- WikiText-2: the harness's word perplexity equals `eval perplexity --text wikitext2`;
- generate_until equals the incremental decoder's greedy output; GSM8K 5-shot runs;
- bad --model_args are one clear error naming the argument.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("lm_eval")

from nested_jax.lmeval import register, task_manager  # noqa: E402
from nested_jax.lmeval.model import ModelArgsError, parse_model_args  # noqa: E402
from nested_jax.train.loop import train_and_evaluate  # noqa: E402
from tests.tiny import tiny_config  # noqa: E402


def _trained(variant, wd, steps, train, **fields):
    """A tiny `variant` (width 32, one layer, two heads) trained `steps` steps into `wd`."""
    c = tiny_config(
        variant, d_model=32, n_layers=1, n_heads=2, train=dict(steps=steps, **train),
        optim=dict(warmup_steps=1), checkpoint=dict(every_steps=steps, async_save=False),
        eval=dict(every_steps=100, num_batches=1, batch_size=2),
        logging=dict(progress_bar=False, plot=False), **fields)
    train_and_evaluate(c, wd)
    return wd


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return _trained("transformer", str(tmp_path_factory.mktemp("lmeval") / "run"), 3,
                    dict(batch_size=4, seq_len=64, log_every=1))


def _harness(ckpt, tasks, limit, **kw):
    import lm_eval

    register()
    return lm_eval.simple_evaluate(model="nested_jax", model_args=f"checkpoint={ckpt},batch_size=8",
                                   tasks=tasks, limit=limit, task_manager=task_manager(),
                                   log_samples=True, verbosity="ERROR", **kw)


# harness task nj_<key> ↔ `eval zeroshot` task <value>: the nine vendored sets
MC = {"piqa": "piqa", "arc_easy": "arc_easy", "arc_challenge": "arc_challenge",
      "hellaswag": "hellaswag", "winogrande": "winogrande", "boolq": "boolq", "siqa": "siqa",
      "commonsense_qa": "commonsenseqa", "openbookqa": "openbookqa"}
LIMIT = 50


def test_harness_equals_our_scorers(ckpt):
    """One harness run (one model load, one test: the pytest workers do not both pay for it)
    over the nine multiple-choice sets and WikiText-2."""
    res = _harness(ckpt, [f"nj_{t}" for t in MC] + ["nj_wikitext"], LIMIT)
    for task in MC:
        _check_multiple_choice(ckpt, res, task)
    _check_wikitext(ckpt, res)


def _check_multiple_choice(ckpt, res, task):
    """Per item: the harness built our prompts, its log-likelihoods are our scorer's (≤ 1e-4),
    its acc / acc_norm ours; the task's acc is their mean."""
    from nested_jax.eval import models, restore
    from nested_jax.eval.scoring import encode_pair, pick, score_requests
    from nested_jax.eval.tasks import load_items

    samples = res["samples"][f"nj_{task}"]
    loaded = restore.load(ckpt)
    model, tok = models.from_loaded(loaded), loaded.tokenizer
    items = load_items(MC[task], LIMIT)
    assert len(samples) == len(items) == LIMIT, task
    acc = []
    for s, it in zip(sorted(samples, key=lambda s: s["doc_id"]), items):
        theirs = [float(r[0]) for r in s["filtered_resps"]]
        ctx = [a[0] for a in s["arguments"]]
        assert ctx == list(it.contexts), (task, s["doc_id"])  # the YAML built our prompts
        reqs = [encode_pair(tok, c, x) for c, x in zip(it.contexts, it.continuations)]
        ours = score_requests(model, reqs, max_len=int(loaded.cfg.train.seq_len),
                              prefix=[tok.eos_id]).logprob
        assert np.allclose(theirs, ours, atol=1e-4), (task, s["doc_id"])
        assert s["acc"] == float(pick(ours) == it.gold), (task, s["doc_id"])
        acc.append(pick(ours) == it.gold)
        if "acc_norm" in s:
            assert s["acc_norm"] == float(pick(ours, it.norm_lengths()) == it.gold), task
    assert res["results"][f"nj_{task}"]["acc,none"] == pytest.approx(np.mean(acc)), task


def _check_wikitext(ckpt, res):
    """The harness's WikiText-2 word perplexity is `eval perplexity --text wikitext2`'s."""
    from nested_jax.eval import models, perplexity, restore

    theirs = res["results"]["nj_wikitext"]["word_perplexity,none"]
    loaded = restore.load(ckpt)
    docs = perplexity.read_documents("wikitext2")[:LIMIT]
    ours = perplexity.evaluate(models.from_loaded(loaded), loaded.tokenizer, {"w": docs},
                               max_len=int(loaded.cfg.train.seq_len),
                               stride=int(loaded.cfg.train.seq_len))
    assert math.isclose(theirs, ours["overall"]["word_perplexity"], rel_tol=1e-4)


def test_generate_until_equals_the_decoder_and_gsm8k_runs(ckpt):
    from nested_jax.eval import decode, restore
    from nested_jax.lmeval.model import NestedJaxLM

    lm = NestedJaxLM(checkpoint=ckpt)

    class Req:
        def __init__(self, *args):
            self.args = args

    prompt = "Once upon a time"
    text = lm.generate_until([Req(prompt, {"until": ["\n\n"], "max_gen_toks": 8})],
                             disable_tqdm=True)[0]
    loaded = restore.load(ckpt)
    tok = loaded.tokenizer
    ids = [tok.doc_start_id] + tok.encode(prompt) if tok.doc_start_id is not None else \
        tok.encode(prompt)
    g = decode.Decoder(loaded.fn, loaded.params, max_len=int(loaded.cfg.train.seq_len),
                       eos_id=tok.eos_id).generate(np.asarray([ids], np.int32), 8)
    want = tok.decode([int(x) for x in g.tokens[0, :int(g.n_new[0])] if int(x) != tok.eos_id])
    assert text == want.split("\n\n")[0]
    res = _harness(ckpt, ["nj_gsm8k"], 5, gen_kwargs="max_gen_toks=8")
    assert "exact_match,strict-match" in res["results"]["nj_gsm8k"]
    samples = res["samples"]["nj_gsm8k"]
    assert {s["doc_id"] for s in samples} == set(range(5))  # (one sample per filter)
    assert samples[0]["arguments"][0][0].count("Question:") == 6  # 5 shots + the question


def test_bad_model_args_are_clear_errors(ckpt, capsys):
    from nested_jax.lmeval.__main__ import main

    with pytest.raises(ModelArgsError, match="unknown model_args pretrained"):
        parse_model_args({"checkpoint": ckpt, "pretrained": "gpt2"})
    with pytest.raises(ModelArgsError, match="step='x' is not an integer"):
        parse_model_args({"checkpoint": ckpt, "step": "x"})
    with pytest.raises(ModelArgsError, match="memorize='maybe' is not a boolean"):
        parse_model_args({"checkpoint": ckpt, "memorize": "maybe"})
    assert parse_model_args({"checkpoint": ckpt, "step": "3", "memorize": "False"})["step"] == 3
    rc = main(["--model", "nested_jax", "--model_args", "checkpoint=/nonexistent/run",
               "--tasks", "nj_piqa", "--limit", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "error: model_args checkpoint='/nonexistent/run'" in err


@pytest.mark.slow  # trains a HOPE model (30 s): `pytest -m slow`
def test_memorize_on_a_hope_checkpoint_equals_eval_zeroshot_memorised(tmp_path):
    """HOPE-Attention with memorize=True: each context is memorised (as `eval zeroshot
    --memorize` memorises a prompt), then its choices are read with that fast state."""
    import lm_eval

    from nested_jax.eval import models, restore
    from nested_jax.eval.memo import Memorizer, MemoOptions
    from nested_jax.eval.scoring import encode_pair, score_requests
    from nested_jax.eval.tasks import load_items

    wd = _trained("hope_attention", str(tmp_path / "hope"), 2, dict(batch_size=2, seq_len=64),
                  online=dict(segment_len=16),
                  cms=dict(names=("fast", "mid"), periods=(16, 32), optimizers=("gd", "gd"),
                           lrs=(1e-1, 1e-1)))
    register()
    res = lm_eval.simple_evaluate(model="nested_jax", model_args=f"checkpoint={wd},memorize=True",
                                  tasks=["nj_piqa"], limit=4, task_manager=task_manager(),
                                  log_samples=True, verbosity="ERROR")
    loaded = restore.load(wd)
    model, tok = models.from_loaded(loaded), loaded.tokenizer
    mem = Memorizer(model, MemoOptions(enabled=True, steps=1))
    plain = []
    for s, it in zip(sorted(res["samples"]["nj_piqa"], key=lambda s: s["doc_id"]),
                     load_items("piqa", 4)):
        fast = mem.memorize([tok.eos_id] + tok.encode(it.memo), pad_id=tok.eos_id)
        reqs = [encode_pair(tok, x, y) for x, y in zip(it.contexts, it.continuations)]
        ours = score_requests(model, reqs, max_len=64, prefix=[tok.eos_id], fast=fast).logprob
        assert np.allclose([float(r[0]) for r in s["filtered_resps"]], ours, atol=1e-4)
        plain.extend(score_requests(model, reqs, max_len=64, prefix=[tok.eos_id]).logprob)
    theirs = [float(r[0]) for s in sorted(res["samples"]["nj_piqa"], key=lambda s: s["doc_id"])
              for r in s["filtered_resps"]]
    assert not np.allclose(theirs, plain, atol=1e-4)  # memorising changed the scores


def test_cli_writes_results_and_samples(ckpt, tmp_path):
    from nested_jax.lmeval.__main__ import main

    rc = main(["--model", "nested_jax", "--model_args", f"checkpoint={ckpt}", "--tasks",
               "nj_piqa", "--limit", "2", "--output_path", str(tmp_path / "out"), "--log_samples"])
    files = [p.name for p in (tmp_path / "out").rglob("*.json*")]
    assert rc == 0 and any(f.startswith("results") for f in files)
    assert any(f.startswith("samples_nj_piqa") for f in files)


@pytest.mark.slow  # a checkpoint and a harness run per variant (~1 min each)
@pytest.mark.parametrize("variant", ["titans", "hope", "hope_hybrid"])
def test_harness_equals_our_scorers_for_the_memory_variants(variant, tmp_path):
    """The adapter on the variants with memories (and, for hope / hope_hybrid, CMS levels read
    through the online segment scan): PIQA's per-item log-likelihoods and acc and WikiText-2's
    word perplexity equal our scorers', as for the transformer above."""
    wd = _trained(variant, str(tmp_path / "run"), 2, dict(batch_size=2, log_every=1))
    res = _harness(wd, ["nj_piqa", "nj_wikitext"], LIMIT)
    _check_multiple_choice(wd, res, "piqa")
    _check_wikitext(wd, res)
