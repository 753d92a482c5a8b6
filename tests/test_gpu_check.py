"""launch/gpu_check.sh from a fresh copy of the repository (tracked + untracked files that
git does not ignore, so no .venv, .whl or earlier outputs): --dry-run prints every step's
command and runs nothing; --cpu-smoke runs every step at toy sizes and writes the report."""

import json
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def fresh_copy(tmp_path_factory):
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    dst = tmp_path_factory.mktemp("clone")
    for rel in filter(None, files):
        src = os.path.join(REPO, rel)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
            shutil.copy2(src, os.path.join(dst, rel))
    return dst


def _run(repo, *args, timeout):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    env["PYTHON"] = sys.executable  # the fresh copy has no .venv
    return subprocess.run(["bash", "launch/gpu_check.sh", *args], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_dry_run_prints_every_step(fresh_copy, tmp_path):
    out_dir = tmp_path / "gc"
    res = _run(fresh_copy, "--dry-run", "--output", str(out_dir), timeout=60)
    assert res.returncode == 0, res.stderr
    for needle in ("nested_jax.doctor", "benchmarks.train_throughput --preset pilot",
                   "--variants hope_hybrid", "nested_jax.train --config configs/pilot_smoke.py",
                   "benchmarks.scan_chunks --preset full --chunks 16,64",
                   "--memories linear,mlp,hope --dtype bfloat16", "benchmarks.cost_model --preset pilot",
                   "benchmarks.scaling", "benchmarks.gpu_check_report", "pip install"):
        assert needle in res.stdout, needle
    assert not out_dir.exists()  # commands only
    bad = _run(fresh_copy, "--no-such-flag", timeout=60)
    assert bad.returncode == 2 and "unknown argument" in bad.stderr
    # --unrolled: the pilot's online steps as configs/pilot.py has them, and nothing else
    unrolled = _run(fresh_copy, "--dry-run", "--unrolled", timeout=60)
    assert unrolled.returncode == 0, unrolled.stderr
    steps = [ln.split(" (")[0] for ln in unrolled.stdout.splitlines() if " (≤ " in ln]
    assert steps == ["doctor", "throughput_hope_attention", "throughput_hope_hybrid",
                     "throughput_hope"]
    assert "unroll_segments" not in unrolled.stdout and "gpu_check_unrolled" in unrolled.stdout
    both = _run(fresh_copy, "--unrolled", "--cpu-smoke", timeout=60)
    assert both.returncode == 2 and "--unrolled" in both.stderr


@pytest.mark.slow
def test_cpu_smoke_runs_every_step(fresh_copy, tmp_path):
    out_dir = tmp_path / "gc"
    res = _run(fresh_copy, "--cpu-smoke", "--output", str(out_dir), timeout=1500)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    with open(out_dir / "summary.json") as f:
        s = json.load(f)
    assert s["kind"] == "cpu_smoke"
    assert [st["name"] for st in s["steps"]] == [
        "doctor", "throughput_transformer", "throughput_hope_attention", "train", "scan_chunks",
        "cost_model", "scaling"]
    assert all(st["status"] == "ok" for st in s["steps"]), s["steps"]
    assert s["training"]["ok"] and s["training"]["nonfinite_steps"] == 0
    assert [r["variant"] for r in s["throughput"]] == ["transformer", "hope_attention"]
    for r in s["throughput"]:
        assert r["tokens_per_sec"] > 0 and r["measured_over_projected"] > 0
    assert {r["memory"] for r in s["scan_chunks"]} == {"linear", "mlp", "hope"}
    assert len(s["scaling"]) == 2
    md = (out_dir / "results_section.md").read_text()
    assert "not a GPU result" in md and "measured ÷ projected" in md
    assert (out_dir / "bundle.tgz").stat().st_size > 0
