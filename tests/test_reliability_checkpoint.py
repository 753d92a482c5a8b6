"""Corrupt and truncated checkpoints are skipped with a warning, the previous intact step is
resumed (and the run still ends bit-identical), and `python -m nested_jax.checkpoint
verify` reports every step."""

import io
import os
import shutil
import subprocess
import sys

import chex

from nested_jax.checkpoint.io import SUMS_FILE, Checkpointer, inspect_step, step_dirs
from nested_jax.checkpoint.verify import verify
from nested_jax.train.loop import train_and_evaluate
from tests.test_reliability_resume import (  # noqa: F401 - the shared reference run fixture
    REPO,
    final_params,
    records,
    reference_run,
    tiny_config,
)


def _largest_file(step_dir, item="params"):
    files = [os.path.join(dp, f) for dp, _, fs in os.walk(os.path.join(step_dir, item))
             for f in fs]
    return max(files, key=os.path.getsize)


def _verify_output(path, **kw):
    buf = io.StringIO()
    rc = verify(path, out=lambda s: buf.write(s + "\n"), **kw)
    return rc, buf.getvalue()


def test_every_saved_step_records_sha256_sums_and_verifies(reference_run):
    ckpts = os.path.join(reference_run, "checkpoints")
    for step in (12, 18, 24):
        rep = inspect_step(os.path.join(ckpts, str(step)))
        assert rep.ok and rep.has_sums and rep.hashed_files > 10, rep
        assert set(rep.items) == {"params", "opt", "data", "meta"}
    rc, out = _verify_output(reference_run)
    assert rc == 0, out
    assert "3 of 3 steps intact; training resumes from step 24." in out
    assert out.count("novels_2k: ok") == 3 and "complete" in out and "ok: params" in out


def test_truncated_and_corrupt_steps_are_skipped_and_resume_stays_exact(tmp_path, reference_run,
                                                                        capfd):
    wd = str(tmp_path / "run")
    shutil.copytree(reference_run, wd)
    ckpts = os.path.join(wd, "checkpoints")
    victim = _largest_file(os.path.join(ckpts, "24"))  # truncated: a crash during a copy
    with open(victim, "r+b") as f:
        f.truncate(os.path.getsize(victim) // 2)
    victim = _largest_file(os.path.join(ckpts, "18"), "opt")  # same size, flipped bytes
    with open(victim, "r+b") as f:
        f.seek(os.path.getsize(victim) // 2)
        chunk = f.read(8)
        f.seek(os.path.getsize(victim) // 2)
        f.write(bytes(b ^ 0xFF for b in chunk))
    os.makedirs(os.path.join(ckpts, "30.orbax-checkpoint-tmp-123", "params"))  # a killed save

    rc, out = _verify_output(wd)
    assert rc == 1, out
    assert "INCOMPLETE" in out and "ignored: killed mid-write" in out
    assert "step 24: file params/" in out and "truncated" in out
    assert "step 18: file opt/" in out and "does not match its recorded sha256" in out
    assert "1 of 3 steps intact; training resumes from step 12." in out
    r = subprocess.run([sys.executable, "-m", "nested_jax.checkpoint", "verify", wd,
                        "--no-read"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "FAIL" in r.stdout and "Traceback" not in r.stderr, r.stderr

    capfd.readouterr()
    summary = train_and_evaluate(tiny_config(), wd)  # the same run, rerun
    err = capfd.readouterr().err
    assert "step 30 in" in err and "cut mid-write" in err
    assert "checkpoint step 24" in err and "corrupt or truncated" in err
    assert "checkpoint step 18" in err and "using the previous step instead" in err
    assert summary["start_step"] == 12 and summary["final_step"] == 24
    found = step_dirs(ckpts)
    assert found["quarantined"] == ["18.corrupt", "24.corrupt"] and not found["tmp"], found
    assert found["steps"] == [12, 18, 24]

    got, _ = final_params(wd)
    want, _ = final_params(reference_run)
    chex.assert_trees_all_equal(got, want)
    assert records(wd) == records(reference_run)
    rc, out = _verify_output(wd, read=False)
    assert rc == 0 and "QUARANTINED" in out, out


def test_read_only_open_skips_a_corrupt_latest_step(tmp_path, reference_run, capfd):
    d = str(tmp_path / "checkpoints")
    shutil.copytree(os.path.join(reference_run, "checkpoints"), d)
    os.remove(os.path.join(d, "24", "meta", "metadata"))
    ck = Checkpointer(d, read_only=True)
    assert ck.resolve_step(None) == 18  # evaluation of "latest" falls back too
    ck.manager.close()
    assert "skipping corrupt checkpoint step 24" in capfd.readouterr().err
    assert os.path.isdir(os.path.join(d, "24")), "read-only opens never move anything"
    assert os.path.isfile(os.path.join(d, "18", SUMS_FILE))
