"""Evaluation prints what it measured, and treats a checkpoint whose bytes fail their recorded
sha256 as training does.

Both use the shared reference run (tests/test_reliability_resume.py: checkpoints 12, 18, 24).
"""

import json
import os
import shutil

import pytest

from nested_jax import release
from nested_jax.checkpoint import Checkpointer
from nested_jax.checkpoint.io import step_dirs
from nested_jax.eval import restore
from nested_jax.eval.__main__ import main
from tests.test_reliability_resume import reference_run  # noqa: F401 - shared fixture


def _flip_a_byte(step_dir):
    """Same size, different bytes: only the sha256 record can tell."""
    for dp, _, files in sorted(os.walk(os.path.join(step_dir, "params"))):
        for name in sorted(files):
            path = os.path.join(dp, name)
            if os.path.getsize(path) > 256:
                with open(path, "r+b") as f:
                    f.seek(200)
                    b = f.read(1)
                    f.seek(200)
                    f.write(bytes([b[0] ^ 0x5A]))
                return path
    raise AssertionError("no params file to corrupt")


def test_eval_and_release_treat_a_sha256_mismatch_as_training_does(reference_run, tmp_path,
                                                                    capsys):
    wd = str(tmp_path / "run")
    shutil.copytree(reference_run, wd)
    _flip_a_byte(os.path.join(wd, "checkpoints", "24"))

    # Evaluation: the newest intact step instead (warning, recorded), an explicit one refused.
    loaded = restore.load(wd)
    assert loaded.step == 18 and loaded.skipped_steps == [24]
    assert "skipping corrupt checkpoint step 24" in capsys.readouterr().err
    out = str(tmp_path / "zs.json")
    assert main(["zeroshot", "--checkpoint", wd, "--step", "24", "--tasks", "piqa", "--limit",
                 "1", "--output", out, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "error: checkpoint step 24" in err and "sha256" in err and "Traceback" not in err
    assert not os.path.exists(out)

    # Release: the same (the bundle says which step it skipped).
    info = release.build(wd, str(tmp_path / "rel"), log=lambda *_: None)
    assert info["step"] == 18 and info["source"]["skipped_corrupt_steps"] == [24]
    assert release.main(["--checkpoint", wd, "--step", "24", "--output",
                         str(tmp_path / "rel24")]) == 2
    assert "not intact" in capsys.readouterr().err

    # Training (a writable open) resumes from the same step, moving 24 aside.
    ck = Checkpointer(os.path.join(wd, "checkpoints"))
    assert ck.latest_step() == 18
    ck.close()
    assert step_dirs(os.path.join(wd, "checkpoints"))["quarantined"] == ["24.corrupt"]


def test_every_eval_command_ends_with_a_table(reference_run, tmp_path, capsys):
    common = ["--checkpoint", reference_run, "--no-progress", "--batch-size", "4"]
    assert main(["zeroshot", *common, "--tasks", "piqa,boolq", "--limit", "2", "--out",
                 str(tmp_path / "zs.json")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "zeroshot: transformer @ step 24"
    assert out[1].split() == ["task", "n", "acc", "acc_norm"]
    doc = json.load(open(tmp_path / "zs.json"))
    piqa = doc["metrics"]["tasks"]["piqa"]
    assert out[3].split() == ["piqa", "2", f"{piqa['acc']:.4f}", f"{piqa['acc_norm']:.4f}"]
    assert out[5].split()[0] == "mean"

    assert main(["passkey", *common, "--lengths", "128", "--depths", "0,100", "--samples", "1",
                 "--distractors", "1", "--output", str(tmp_path / "pk.json")]) == 0
    out = capsys.readouterr().out
    assert "greedy exact match (rows: needle depth, columns: length in tokens)" in out
    assert "depth 0%" in out and "depth 100%" in out and "overall: greedy" in out

    assert main(["continual", "--checkpoints", f"{reference_run}@18", f"{reference_run}@24",
                 "--domains", "math", "--windows", "1", "--no-progress", "--output",
                 str(tmp_path / "c.json")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "CE (nats/token) per domain"
    assert out[2].split() == ["domain", "step", "18", "step", "24"]
    assert out[4].split()[0] == "math" and len(out[4].split()) == 3

    assert main(["report", "--inputs", str(tmp_path / "zs.json"), "--output",
                 str(tmp_path / "t.md")]) == 0
    assert "| piqa acc |" in capsys.readouterr().out


def test_a_command_without_its_own_table_prints_its_numbers():
    from nested_jax.eval.tables import console_table

    text = console_table({"command": "perplexity", "checkpoint": {"step": 3},
                          "config": {"variant": "hope"},
                          "metrics": {"overall": {"word_perplexity": 12.5, "bits_per_byte": 1.25},
                                      "files": {"a.txt": {"tokens": 40}}}})
    lines = text.splitlines()
    assert lines[0] == "perplexity: hope @ step 3"
    assert ["overall.word_perplexity", "12.5000"] in [l.split() for l in lines]
    assert ["files.a.txt.tokens", "40"] in [l.split() for l in lines]
