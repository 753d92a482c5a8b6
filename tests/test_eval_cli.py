"""Every eval command end to end on tiny smoke checkpoints (CPU), memorisation effects,
and the one-paragraph errors."""

import json
import os
import shutil

import pytest

from nested_jax.eval.__main__ import main
from nested_jax.train.loop import train_and_evaluate
from tests.tiny import tiny_config


def _tiny(variant: str):
    return tiny_config(
        variant, d_model=32, n_layers=1, n_heads=2, online=dict(segment_len=16, teach_scale=1.0),
        cms=dict(names=("fast", "mid"), periods=(16, 16), optimizers=("precond", "precond"),
                 lrs=(1e-2, 1e-2)),
        train=dict(steps=2, batch_size=2, seq_len=32, log_every=1), optim=dict(warmup_steps=1),
        checkpoint=dict(every_steps=1, async_save=False),
        eval=dict(every_steps=100, num_batches=1, batch_size=2),
        logging=dict(progress_bar=False, plot=False))


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory):
    """Tiny trained checkpoints (steps 1 and 2) of a Transformer++ and a HOPE-Attention."""
    root = tmp_path_factory.mktemp("eval_ckpts")
    out = {}
    for variant in ("transformer", "hope_attention"):
        wd = str(root / variant)
        train_and_evaluate(_tiny(variant), wd)
        out[variant] = wd
    return out


def _run(args, out_path):
    rc = main(args + ["--output", str(out_path), "--no-progress"])
    assert rc == 0
    with open(out_path) as f:
        return json.load(f)


def test_zeroshot_all_tasks_and_report(ckpts, tmp_path):
    d = _run(["zeroshot", "--checkpoint", ckpts["transformer"], "--tasks", "all", "--limit", "2"],
             tmp_path / "zs.json")
    assert d["command"] == "zeroshot" and d["checkpoint"]["step"] == 2
    assert d["config"]["variant"] == "transformer" and "zeroshot" in d["command_line"]
    assert set(d["metrics"]["tasks"]) == {"piqa", "hellaswag", "winogrande", "arc_easy",
                                          "arc_challenge", "boolq", "siqa", "commonsenseqa",
                                          "openbookqa"}
    for r in d["metrics"]["tasks"].values():
        assert r["n"] == 2 and 0 <= r["acc"] <= 1 and 0 <= r["acc_norm"] <= 1
    d1 = _run(["zeroshot", "--checkpoint", ckpts["transformer"], "--step", "1", "--tasks",
               "piqa", "--limit", "2"], tmp_path / "zs1.json")
    assert d1["checkpoint"]["step"] == 1
    md = tmp_path / "table.md"
    assert main(["report", "--inputs", str(tmp_path / "zs.json"), str(tmp_path / "zs1.json"),
                 "--output", str(md)]) == 0
    text = md.read_text()
    assert "| metric | zs | zs1 |" in text and "| piqa acc |" in text and "| step | 2 | 1 |" in text


def test_memorisation_changes_hope_scores_and_is_a_noop_for_the_transformer(ckpts, tmp_path):
    args = ["--tasks", "winogrande", "--limit", "2", "--memorize", "--memorize-steps", "2",
            "--memorize-use-correct-answer", "--max-length", "32", "--pad-to-max-length"]
    h = _run(["zeroshot", "--checkpoint", ckpts["hope_attention"]] + args, tmp_path / "h.json")
    r = h["metrics"]["tasks"]["winogrande"]
    assert r["memorize"]["applied"] and r["memorize"]["updates"]["fast"] > 0
    assert r["memorize"]["prompts"] == 2
    assert abs(r["memorized"]["gold_logprob"] - r["gold_logprob"]) > 1e-4
    t = _run(["zeroshot", "--checkpoint", ckpts["transformer"]] + args, tmp_path / "t.json")
    r = t["metrics"]["tasks"]["winogrande"]
    assert not r["memorize"]["applied"] and "no-op" in r["memorize"]["note"]
    assert r["memorized"]["gold_logprob"] == r["gold_logprob"] and r["delta"]["acc"] == 0


@pytest.mark.parametrize("cmd", ["niah", "passkey"])
def test_needle_commands_write_json_and_heatmap(ckpts, tmp_path, cmd):
    lengths = "64" if cmd == "niah" else "160"
    d = _run([cmd, "--checkpoint", ckpts["transformer"], "--lengths", lengths + ",4096",
              "--max-context", "256", "--depths", "0,100", "--samples", "1", "--distractors", "2",
              "--memorize"], tmp_path / f"{cmd}.json")
    m = d["metrics"]
    assert d["settings"]["dropped_lengths"] == [4096]
    assert len(m["cells"]) == 2 * len(m["lengths"])
    for c in m["cells"]:
        assert 0 <= c["greedy_acc"] <= 1 and 0 <= c["rank_acc"] <= 1 and "memorized" in c
        assert len(c["samples"][0]["key"]) == (7 if cmd == "niah" else 5)
    assert os.path.getsize(tmp_path / f"{cmd}.png") > 1000 and d["seeds"] == {"seed": 0}


def test_continual_forgetting_curve_and_sequential_training(ckpts, tmp_path):
    wd = ckpts["transformer"]
    a = _run(["continual", "--checkpoints", wd + "@1", wd + "@2", "--domains", "wikipedia,math",
              "--windows", "2"], tmp_path / "curve.json")
    m = a["metrics"]
    assert [e["step"] for e in m["checkpoints"]] == [1, 2]
    assert set(m["ce"]) == {"wikipedia", "math"} and all(len(v) == 2 for v in m["ce"].values())
    assert os.path.exists(tmp_path / "curve.png")
    b = _run(["continual", "--checkpoint", wd, "--domains", "wikipedia,math", "--phases",
              "wikipedia,math", "--steps-per-phase", "3", "--train-batch-size", "2",
              "--windows", "2", "--lr", "3e-3"], tmp_path / "seq.json")
    m = b["metrics"]
    assert m["rows"] == ["initial", "wikipedia", "math"]
    ce = m["ce_matrix"]
    assert len(ce) == 3 and all(len(r) == 2 for r in ce) and len(m["acc_matrix"]) == 3
    assert ce[1][0] < ce[0][0], "training on wikipedia lowers its CE"
    assert ce[2][1] < ce[1][1], "training on math lowers its CE"
    f = m["forgetting"]["wikipedia"]
    assert f["ce_forgetting"] == pytest.approx(ce[2][0] - ce[1][0])
    assert os.path.exists(tmp_path / "seq.png")


def test_errors_are_one_paragraph_with_the_fix(ckpts, tmp_path, capsys):
    out = str(tmp_path / "x.json")
    base = ["zeroshot", "--tasks", "piqa", "--limit", "1", "--output", out, "--no-progress"]

    def err(args):
        assert main(args) == 2
        text = capsys.readouterr().err
        last = text.strip().splitlines()[-1]  # warnings may come first; the error is one line
        assert last.startswith("error: ") and "Traceback" not in text and "Fix" in last
        return last

    assert "no checkpoint at" in err(base + ["--checkpoint", str(tmp_path / "missing")])
    msg = err(base + ["--checkpoint", ckpts["transformer"], "--step", "7"])
    assert "step 7 not found" in msg and "[1, 2]" in msg
    msg = err(["zeroshot", "--checkpoint", ckpts["transformer"], "--tasks", "piqa,nope",
               "--output", out])
    assert "'nope'" in msg and "piqa, hellaswag, winogrande" in msg
    from nested_jax.data.tokenizer import tokenizer_path

    msg = err(base + ["--checkpoint", ckpts["transformer"], "--tokenizer",
                      str(tokenizer_path("novels_32k"))])
    assert "tokenizer mismatch" in msg
    bad = tmp_path / "corrupt"
    shutil.copytree(ckpts["transformer"], bad)
    for root, _, files in os.walk(bad / "checkpoints" / "2" / "params"):
        for name in files:
            if os.path.basename(root) == "d":  # the array data files
                with open(os.path.join(root, name), "r+b") as fh:
                    fh.truncate(8)
    # the newest step is corrupt: refused when asked for, skipped (and recorded) otherwise
    msg = err(base + ["--checkpoint", str(bad), "--step", "2"])
    assert "step 2" in msg and "corrupt" in msg and "[1, 2]" in msg
    assert not os.path.exists(out)
    assert main(base + ["--checkpoint", str(bad)]) == 0
    assert "skipping corrupt checkpoint step 2" in capsys.readouterr().err
    with open(out) as f:
        d = json.load(f)
    assert d["checkpoint"]["step"] == 1 and d["checkpoint"]["skipped_corrupt_steps"] == [2]
    shutil.rmtree(bad / "checkpoints" / "1" / "params")
    msg = err(base + ["--checkpoint", str(bad)])
    assert "every checkpoint" in msg and "corrupt" in msg


def test_continual_memorisation_on_hope(ckpts, tmp_path):
    d = _run(["continual", "--checkpoints", ckpts["hope_attention"], "--domains", "math",
              "--windows", "2", "--batch-size", "2", "--memorize", "--memorize-no-reset"],
             tmp_path / "hope_curve.json")
    s = d["metrics"]["checkpoints"][0]["domains"]["math"]
    assert d["config"]["variant"] == "hope_attention" and d["settings"]["seq_len"] == 32
    assert s["memorized"]["ce"] != s["ce"] and s["tokens"] == 64
    mem = d["metrics"]["checkpoints"][0]["memorize"]
    assert mem["applied"] and mem["prompts"] == 2 and mem["updates"]["fast"] > 0
