"""Release bundle: checkpoint, config, tokenizer, evals, logs, metadata, model card,
MANIFEST.json + SHA256SUMS; `verify` re-checks every hash."""

import json
import os
import shutil
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest

from nested_jax import release
from nested_jax.checkpoint import Checkpointer
from nested_jax.data.tokenizer import tokenizer_path
from tests.test_reliability_resume import (  # noqa: F401 - the shared reference run fixture
    REPO,
    STEPS,
    final_params,
    reference_run,
)

ZEROSHOT = {"command": "zeroshot", "checkpoint": {"step": STEPS}, "config": {},
            "metrics": {"tasks": {"piqa": {"acc": 0.5125, "acc_norm": 0.5031}},
                        "mean": {"acc": 0.5125, "acc_norm": 0.5031}}}
OTHER = {"command": "custom_probe", "metrics": {"ppl": 1234.5, "detail": {"n": 16}}}


@pytest.fixture
def bundle(tmp_path, reference_run):
    evals = []
    for name, doc in (("zeroshot_piqa", ZEROSHOT), ("probe", OTHER)):
        p = tmp_path / f"{name}.json"
        p.write_text(json.dumps(doc))
        evals.append(str(p))
    out = str(tmp_path / "release")
    info = release.build(reference_run, out, evals=evals, log=lambda s: None)
    return out, info


def test_bundle_has_everything_and_verifies(bundle, reference_run):
    out, info = bundle
    for rel in ("MODEL_CARD.md", "release.json", "config.json", "MANIFEST.json", "SHA256SUMS",
                "tokenizer/novels_2k.model", "tokenizer/novels_2k.vocab",
                "evals/zeroshot_piqa.json", "evals/probe.json", "logs/metrics.jsonl",
                "logs/loss_curve.png", f"checkpoints/{STEPS}/params",
                f"checkpoints/{STEPS}/meta/metadata"):
        assert os.path.exists(os.path.join(out, rel)), rel
    assert info["step"] == STEPS and info["tokens_seen"] == STEPS * 4 * 32
    assert info["n_params"] == sum(np.size(x) for x in jax.tree.leaves(final_params(out)[0]))
    assert info["tokenizer"]["sha256"] == release.file_sha256(str(tokenizer_path("novels_2k")))
    assert len(info["git_commit"]) == 40 and info["final_eval_loss"] > 0
    meta = json.load(open(os.path.join(out, "release.json")))
    assert meta == json.loads(json.dumps(info))
    card = open(os.path.join(out, "MODEL_CARD.md")).read()
    for want in (f"# nested_jax transformer — step {STEPS}", f"{info['n_params']:,}",
                 "| piqa acc | 0.5125 |", "| mean acc_norm | 0.5031 |", "| ppl | 1234.5000 |",
                 "| detail.n | 16 |", "## Limitations", "novels_2k", "## Training data",
                 "tokens seen", "python -m nested_jax.release verify ."):
        assert want in card, want
    lines = open(os.path.join(out, "SHA256SUMS")).read().splitlines()
    listed = {l.split("  ", 1)[1] for l in lines}
    manifest = json.load(open(os.path.join(out, "MANIFEST.json")))["files"]
    assert listed == set(manifest) | {"MANIFEST.json"}
    assert release.verify(out, log=lambda s: None) == 0
    if shutil.which("sha256sum"):
        r = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=out,
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
    # The bundled checkpoint restores on its own, identical to the training run's.
    got, _ = final_params(out)
    want, _ = final_params(reference_run)
    chex.assert_trees_all_equal(got, want)
    ck = Checkpointer(os.path.join(out, "checkpoints"), read_only=True)
    assert ck.all_steps() == [STEPS]
    ck.manager.close()
    r = subprocess.run([sys.executable, "-m", "nested_jax.release", "verify", out], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "OK: the release is intact." in r.stdout, r.stdout + r.stderr


def test_verify_catches_changed_missing_and_extra_files(bundle):
    out, _ = bundle
    with open(os.path.join(out, "evals", "probe.json"), "a") as f:
        f.write(" ")
    os.remove(os.path.join(out, "tokenizer", "novels_2k.vocab"))
    with open(os.path.join(out, "notes.txt"), "w") as f:
        f.write("x")
    msgs = []
    assert release.verify(out, log=msgs.append) == 1
    text = "\n".join(msgs)
    assert "FAIL changed: evals/probe.json" in text
    assert "FAIL missing: tokenizer/novels_2k.vocab" in text
    assert "FAIL not listed in SHA256SUMS: notes.txt" in text


def test_release_errors_are_clear(tmp_path, reference_run, capsys):
    out = str(tmp_path / "r")
    os.makedirs(out)
    open(os.path.join(out, "x"), "w").close()
    assert release.main(["--checkpoint", reference_run, "--output", out]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert release.main(["--checkpoint", reference_run, "--evals", str(bad), "--output",
                         str(tmp_path / "r2")]) == 2
    assert "cannot read eval result" in capsys.readouterr().err
    assert release.main(["--checkpoint", str(tmp_path / "nope"), "--output",
                         str(tmp_path / "r3")]) == 2
    assert "no checkpoint folder" in capsys.readouterr().err
    assert release.main(["--checkpoint", reference_run, "--step", "7", "--output",
                         str(tmp_path / "r4")]) == 2
    assert "step 7 not found" in capsys.readouterr().err
    assert release.main(["verify", str(tmp_path)]) == 2
    assert "has no SHA256SUMS" in capsys.readouterr().err
