"""The experiment studies (launch/experiments: study.py plans each study's commands,
driver.py runs them and skips the finished ones, report.py writes RESULTS.md + figures).

Fast: the driver on trivial commands; the report on small synthetic study JSONs (every study
type) → RESULTS.md + PNGs; every study's planned commands (dry run).
Slow: one study script end to end with the tiniest sizes (train → eval → report).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "launch" / "experiments"))  # the tool's scripts import each other
import driver  # noqa: E402
import recipes  # noqa: E402
import report  # noqa: E402
import study  # noqa: E402
import study_base  # noqa: E402

DOMAINS = ["novels", "wikipedia", "math", "code"]


# ---------------------------------------------------------------------------------------------
# Synthetic study folders (same layout and JSON shapes as launch/experiments/study.py writes)
# ---------------------------------------------------------------------------------------------


def _w(path: Path, doc) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


def _run(sdir: Path, name: str, *, loss0=7.6, loss1=5.0, eval_loss=5.2, variant="hope",
         steps=20, nonfinite=0, teach=0.1, optim="adamw", n_params=1000) -> dict:
    recs = [{"step": 0, "eval_loss": 7.6}]
    for s in range(2, steps + 1, 2):
        frac = s / steps
        recs.append({"step": s, "loss": loss0 + (loss1 - loss0) * frac, "grad_norm": 1.0 + frac,
                     "lr": 1e-3, "teach_scale": teach * min(1.0, 2 * frac),
                     "nonfinite_skipped": nonfinite if s == steps else 0,
                     "tokens_per_sec": 1000.0 + s})
    recs.append({"step": steps, "eval_loss": eval_loss})
    d = sdir / "train" / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    _w(d / "summary.json", {"final_step": steps, "loss": loss1, "eval_loss": eval_loss,
                            "ln_vocab": math.log(2048), "tokens_per_sec": 1000.0})
    _w(d / "config.json", {"model": {"variant": variant, "online": {"teach_scale": teach}},
                           "train": {"batch_size": 4, "seq_len": 32},
                           "optim": {"name": optim, "lr": 1e-3}})
    return {"command": f"python -m nested_jax.train --config configs/smoke.py --workdir runs/x/{name}",
            "workdir": f"runs/x/{name}", "n_params": n_params, "wall_s": 12.5,
            "files": {"metrics": f"train/{name}/metrics.jsonl", "summary": f"train/{name}/summary.json",
                      "config": f"train/{name}/config.json"}}


def _eval(sdir: Path, key: str, command: str, metrics: dict, *, n_params=1000, variant="hope",
          argv_extra="") -> dict:
    doc = {"command": command,
           "command_line": f"python -m nested_jax.eval {command} --checkpoint runs/x {argv_extra}"
                           f"--output runs/x/evals/{key}.json",
           "config": {"variant": variant, "n_params": n_params},
           "checkpoint": {"step": 20}, "metrics": metrics}
    _w(sdir / "evals" / f"{key}.json", doc)
    return {"run": key.split("_")[0], "command": command, "json": f"evals/{key}.json", "wall_s": 3.0,
            "label": command}


def _zs(acc, mem=None, glp=-10.0, mem_glp=None, applied=True):
    tasks = {}
    for i, t in enumerate(["piqa", "arc_easy"]):
        r = {"n": 4, "acc": acc, "acc_stderr": 0.2, "acc_norm": acc, "acc_norm_stderr": 0.2,
             "gold_logprob": glp - i, "truncated": 0}
        if mem is not None:
            r["memorized"] = {"n": 4, "acc": mem, "acc_norm": mem, "gold_logprob": mem_glp - i}
            r["delta"] = {"acc": mem - acc, "acc_norm": mem - acc}
            r["memorize"] = {"applied": applied, "updates_total": 3.0 if applied else 0.0,
                             **({} if applied else {"note": "variant has no CMS levels: no-op"})}
        tasks[t] = r
    mean = {"acc": acc, "acc_norm": acc}
    if mem is not None:
        mean.update(memorized_acc=mem, memorized_acc_norm=mem)
    return {"tasks": tasks, "mean": mean}


def _needle(rank, mem_rank=None, margin=0.5, mem_margin=None, applied=True):
    cell = {"length": 64, "depth": 50, "n": 2, "greedy_acc": 0.0, "rank_acc": rank,
            "mean_margin": margin, "samples": []}
    m = {"lengths": [64], "depths": [50], "samples_per_cell": 2, "distractors": 4,
         "overall_greedy_acc": 0.0, "overall_rank_acc": rank,
         "by_length": {"64": {"greedy_acc": 0.0, "rank_acc": rank}}}
    if mem_rank is not None:
        cell["memorized"] = {"n": 2, "greedy_acc": 0.0, "rank_acc": mem_rank,
                             "mean_margin": mem_margin, "samples": []}
        m.update(overall_memorized_greedy_acc=0.0, overall_memorized_rank_acc=mem_rank,
                 memorize={"applied": applied, "updates_total": 2.0 if applied else 0.0,
                           **({} if applied else {"note": "no CMS levels: no-op"})})
    m["cells"] = [cell]
    return m


def _curve(ces):
    return {"checkpoints": [{"step": 10}, {"step": 20}],
            "ce": {d: [c + 0.5, c] for d, c in zip(DOMAINS, ces)},
            "acc": {d: [0.1, 0.2] for d in DOMAINS}}


def _seq(base):
    rows = ["initial"] + DOMAINS
    ce = [[base + 0.1 * i + 0.01 * j for j in range(4)] for i in range(5)]
    return {"phases": DOMAINS, "domains": DOMAINS, "rows": rows, "ce_matrix": ce,
            "acc_matrix": [[0.1] * 4] * 5, "train_loss": [],
            "forgetting": {d: {"ce_final": ce[-1][j], "ce_forgetting": 0.05 * (3 - j),
                               "ce_increase_from_best": 0.1} for j, d in enumerate(DOMAINS)}}


MACHINE = {"cpu_model": "Synthetic CPU 9000", "cpu_count": 2, "backend": "cpu",
           "devices": ["TFRT_CPU_0"], "jax": "0.0", "load_avg": [1.0, 1.0, 1.0]}


def _study(sdir: Path, name: str, **kw) -> None:
    doc = {"study": name, "preset": "cpu", "tag": name, "title": f"{name} title",
           "script": f"bash launch/experiments/{name}.sh", "started": "2025-01-02T03:04:05+00:00",
           "finished": "2025-01-02T03:10:00+00:00", "wall_s": 355.0,
           "git": {"commit": "0123456789abcdef", "dirty_files": 0}, "machine": MACHINE,
           "runs": {}, "evals": {}, "checks": {}, "notes": [], "complete": True, **kw}
    _w(sdir / "study.json", doc)


def build_synthetic(root: Path) -> None:
    res = root / "results"
    # hope_vs_titans
    s = res / "hope_vs_titans"
    runs, evals = {}, {}
    for i, v in enumerate(["hope", "titans", "transformer"]):
        runs[v] = _run(s, v, variant=v, eval_loss=5.1 + 0.1 * i, n_params=1000 + i)
        evals[f"{v}_curve"] = _eval(s, f"{v}_curve", "continual", _curve([5.0 + 0.1 * i] * 4), variant=v)
        evals[f"{v}_zeroshot"] = _eval(s, f"{v}_zeroshot", "zeroshot", _zs(0.25 + 0.25 * i), variant=v)
        evals[f"{v}_passkey"] = _eval(s, f"{v}_passkey", "passkey", _needle(0.5), variant=v)
        evals[f"{v}_niah"] = _eval(s, f"{v}_niah", "niah", _needle(0.25), variant=v)
        evals[f"{v}_sequential"] = _eval(s, f"{v}_sequential", "continual", _seq(5.0 + i), variant=v)
    _study(s, "hope_vs_titans", runs=runs, evals=evals,
           param_matching={"target_variant": "hope", "target_params": 1000, "variants": {
               v: {"params": 1000 + i, "d_ff": 64 * (i + 1), "ratio_to_hope": 1 + i / 1000}
               for i, v in enumerate(["hope", "titans", "transformer"])}},
           notes=["synthetic note"])
    # teach_scale_sweep
    s = res / "teach_scale_sweep"
    runs, rows = {}, []
    for i, ts in enumerate([0.0, 0.05, 0.1, 0.2]):
        n = f"ts{ts:.2f}_adamw"
        runs[n] = _run(s, n, teach=ts, eval_loss=5.3 - 0.05 * i, nonfinite=1 if ts == 0.2 else 0)
        rows.append({"run": n, "teach_scale": ts, "optimizer": "adamw"})
    runs["ts0.00_adamw_seed1"] = _run(s, "ts0.00_adamw_seed1", teach=0.0, eval_loss=5.32)
    rows.append({"run": "ts0.00_adamw_seed1", "teach_scale": 0.0, "optimizer": "adamw",
                 "replicate_of": "ts0.00_adamw", "seed": 1})
    rows.append({"run": "ts0.10_adamw", "teach_scale": 0.1, "optimizer": "adamw", "optimizer_row": True})
    for opt in ("muon", "m3"):
        n = f"ts0.10_{opt}"
        runs[n] = _run(s, n, teach=0.1, optim=opt, eval_loss=5.4)
        rows.append({"run": n, "teach_scale": 0.1, "optimizer": opt, "optimizer_row": True})
    n = "ts0.10_m3_big"  # diverged: no summary.json, metrics stop at step 8
    runs[n] = _run(s, n, teach=0.1, optim="m3", steps=8, nonfinite=5)
    (s / "train" / n / "summary.json").unlink()
    del runs[n]["files"]["summary"]
    runs[n].update(diverged=True, exit_status=3)
    rows.append({"run": n, "teach_scale": 0.1, "optimizer": "m3_big", "optimizer_row": True})
    _study(s, "teach_scale_sweep", runs=runs,
           sweep={"variant": "hope", "schedule": {"model.online.teach_warmup_steps": 5},
                  "scales": [0, 0.05, 0.1, 0.2], "optimizer_row_scale": 0.1, "rows": rows})
    # multi_device_smoke
    s = res / "multi_device_smoke"
    runs = {"multi": _run(s, "multi", eval_loss=5.2), "single": _run(s, "single", eval_loss=5.2)}
    runs["multi"]["command"] = "JAX_PLATFORMS=cpu XLA_FLAGS=--x=2 " + runs["multi"]["command"]
    evals = {"multi_zeroshot": _eval(s, "multi_zeroshot", "zeroshot", _zs(0.5)),
             "multi_passkey": _eval(s, "multi_passkey", "passkey", _needle(0.5)),
             "multi_curve": _eval(s, "multi_curve", "continual", _curve([5.0] * 4)),
             "multi_sequential": _eval(s, "multi_sequential", "continual", _seq(5.0))}
    _study(s, "multi_device_smoke", runs=runs, evals=evals, devices=["cpu:0", "cpu:1"],
           device_env="XLA_FLAGS=--xla_force_host_platform_device_count=2",
           checks={"checkpoint_verify": {"command": "python -m nested_jax.checkpoint verify runs/x",
                                         "what": "checkpoint verify", "rc": 0, "wall_s": 2.0}})
    # memorisation_pilot
    s = res / "memorisation_pilot"
    runs, evals = {}, {}
    settings = [{"key": "prompt_1", "label": "prompt, 1 step", "flags": "--memorize"},
                {"key": "answer_1", "label": "prompt + answer, 1 step", "flags": "--memorize ..."}]
    for v in ("hope", "transformer"):
        runs[v] = _run(s, v, variant=v)
        for st in settings if v == "hope" else settings[:1]:
            k = st["key"]
            applied = v == "hope"
            evals[f"{v}_zeroshot_{k}"] = _eval(
                s, f"{v}_zeroshot_{k}", "zeroshot",
                _zs(0.5, 0.75 if applied else 0.5, -10.0, -9.5 if applied else -10.0, applied), variant=v)
            evals[f"{v}_passkey_{k}"] = _eval(
                s, f"{v}_passkey_{k}", "passkey",
                _needle(0.5, 1.0 if applied else 0.5, 0.5, 0.9 if applied else 0.5, applied), variant=v)
    _study(s, "memorisation_pilot", runs=runs, evals=evals, memo_settings=settings,
           param_matching={"variants": {"hope": {"params": 1000}, "transformer": {"params": 990}}})
    # pilot_release
    s = res / "pilot_release"
    _w(s / "release" / "release.json", {"step": 20, "tokens_seen": 2560, "n_params": 12345})
    _study(s, "pilot_release", runs={"pilot": _run(s, "pilot", variant="hope_hybrid")},
           evals={"pilot_zeroshot": _eval(s, "pilot_zeroshot", "zeroshot", _zs(0.5))},
           release={"dir": "runs/x/release", "files": 12, "bytes": 34567,
                    "copied": {"release": "release/release.json"}},
           checks={"release_build": {"command": "python -m nested_jax.release --checkpoint runs/x",
                                     "what": "release bundle", "rc": 0, "wall_s": 1.0},
                   "release_verify": {"command": "python -m nested_jax.release verify runs/x/release",
                                      "what": "release verify", "rc": 0, "wall_s": 1.0},
                   "release_verify_tampered": {"command": "python -m nested_jax.release verify t",
                                               "what": "tamper", "rc": 1, "wall_s": 1.0}})
    build_cpt(res)


CPT_METHODS = {"finetune": "(a) fine-tune the transformer", "stacked": "(b) stacked",
               "stacked_frozen": "(c) frozen backbone"}


def _cpt_matrix(f):
    """A forgetting-curve result over 4 checkpoints (before, after wikipedia, math, code) whose
    mean forgetting over novels, wikipedia, math is 0.8·f."""
    ce = {"novels": [5.0, 5 + 0.5 * f, 5 + 0.8 * f, 5 + f],
          "wikipedia": [6.0, 4.0, 4 + 0.6 * f, 4 + 0.8 * f],
          "math": [7.0, 6.5, 3.0, 3 + 0.6 * f], "code": [8.0, 7.5, 7.0, 3.0]}
    return {"checkpoints": [{"step": s} for s in (300, 100, 100, 100)], "ce": ce,
            "acc": {d: [0.1] * 4 for d in DOMAINS}}


def build_cpt(res: Path) -> None:
    s = res / "continual_pretraining"
    runs = {"pretrain": _run(s, "pretrain", variant="transformer")}
    evals = {}
    for m, f in zip(CPT_METHODS, (1.0, 0.5, 0.25)):
        for ph in ("wikipedia", "math", "code"):
            runs[f"{m}_{ph}"] = _run(s, f"{m}_{ph}", variant="transformer" if m == "finetune"
                                     else "hope_attention")
        evals[f"{m}_matrix"] = _eval(s, f"{m}_matrix", "continual", _cpt_matrix(f))
    for i, m in enumerate(["pretrain", *CPT_METHODS]):
        for k in ("wikitext2", "heldout"):
            evals[f"{m}_{k}"] = _eval(s, f"{m}_{k}", "perplexity",
                                      {"overall": {"bits_per_byte": 3.0 + 0.1 * i + (k == "heldout")}})
    _study(s, "continual_pretraining", runs=runs, evals=evals,
           stack={"command": "python -m nested_jax.convert stack", "periods": [32, 64, 96],
                  "inner_lr": 0.01},
           protocol={"phases": ["wikipedia", "math", "code"], "domains": DOMAINS,
                     "steps_per_phase": 100, "tokens_per_phase": 204800, "lr": 1e-3,
                     "warmup_steps": 10, "manifest": "m.py", "frozen_backbone": ["embed.*"],
                     "methods": CPT_METHODS})


def test_report_experiments_synthetic(tmp_path):
    build_synthetic(tmp_path)
    assert report.main([str(tmp_path)]) == 0
    md = (tmp_path / "RESULTS.md").read_text()
    # every study has a section, in the fixed order, with machine and date
    heads = [m.group(1) for m in re.finditer(r"^## (\w+) \(cpu preset\)$", md, re.M)]
    assert heads == list(report.STUDY_ORDER)
    assert md.count("Synthetic CPU 9000 (2 cores)") >= 5
    assert "2025-01-02T03:04:05+00:00" in md
    assert "do not edit by hand" in md
    # numbers come from the JSON files (formatted), with sources
    assert "| hope | 1,000 |" in md  # n_params from the eval JSON config
    assert "5.1000" in md and "5.3000" in md  # held-out losses (hope; titans)
    assert "5.000 (148.4)" in md  # final CE (perplexity exp(5.0)) on a domain
    assert "HOPE has the lowest CE on 4 of 4 domains" in md
    assert "novels: hope 5.000 < titans 5.100 < transformer 5.200" in md
    assert "+0.150" in md  # forgetting of the first domain
    # every source label used in a table is listed with its file and command
    used = set(re.findall(r"\| ([ETR]\d+(?:, [ETR]\d+)*) \|", md))
    labels = {x for u in used for x in u.split(", ")}
    assert labels and all(f"**{lab}**" in md for lab in labels)
    assert "python -m nested_jax.eval zeroshot --checkpoint runs/x" in md
    assert "python -m nested_jax.train --config configs/smoke.py" in md
    # teach sweep: control delta, non-finite count, optimizer row
    assert "Held-out loss minus the control (teach scale 0)" in md
    assert "0.20: -0.1500" in md
    assert "seed replicate" in md and "|Δ held-out| = 0.0200" in md
    assert "larger than the seed-to-seed difference: 0.05, 0.10, 0.20" in md
    assert "Non-finite steps across all runs: 6" in md
    assert "muon (lr 0.0010) 5.4000" in md and "m3 (lr 0.0010) 5.4000" in md
    assert "m3_big (lr 0.0010) diverged" in md and "**diverged at step 8**" in md
    assert "Diverged (training stopped" in md and "`ts0.10_m3_big`" in md
    # multi-device parity, checks, evals
    assert "|Δ held-out loss| = 0.00e+00" in md
    assert "cpu:0" in md and "checkpoint verify" in md
    # memorisation: applied vs no-op, deltas
    assert "+0.250" in md and "+0.5000" in md  # zero-shot acc and gold log-prob deltas
    assert "no-op" in md and "Transformer++ and Titans have no CMS fast state" in md
    # release: checks with expectations, release.json fields
    assert "expected non-zero" in md and "**unexpected**" not in md
    assert "`12345`" in md
    # notes
    assert "synthetic note" in md
    # continual pre-training: matrices, forgetting, bits per byte, the verdict
    assert "| after math | 5.800 | 4.600 | 3.000 | 7.000 |" in md  # (a)'s CE matrix row
    assert "| (a) fine-tune the transformer | +0.800 | 3.333 |" in md
    assert "Least forgetting: (c) frozen backbone (mean forgetting +0.200" in md
    assert "| pre-trained transformer (before the phases) |" in md and "| 4.000 |" in md
    assert "continual_pretraining_ce.png" in md
    # figures: referenced from the markdown, exist, are PNGs
    figs = re.findall(r"!\[[^\]]*\]\((figures/[^)]+\.png)\)", md)
    assert len(figs) >= 8
    for f in figs:
        data = (tmp_path / f).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    names = {os.path.basename(f) for f in figs}
    assert {"hope_vs_titans_loss.png", "hope_vs_titans_domain_ce.png",
            "hope_vs_titans_continual_matrix.png", "teach_scale_sweep_loss.png",
            "memorisation_pilot_zeroshot_delta.png"} <= names


def test_report_experiments_output_and_errors(tmp_path, capsys):
    build_synthetic(tmp_path / "exp")
    out = tmp_path / "elsewhere" / "R.md"
    res = report.generate(str(tmp_path / "exp"), str(out))
    assert res["studies"] == 6 and out.exists()
    assert all(f.startswith(str(tmp_path / "elsewhere" / "figures")) for f in res["figures"])
    # links are relative to the markdown
    assert "](../exp/results/hope_vs_titans/evals/hope_zeroshot.json)" in out.read_text()
    # an incomplete study is flagged, not hidden
    sj = tmp_path / "exp" / "results" / "pilot_release" / "study.json"
    d = json.loads(sj.read_text())
    d.pop("complete")
    d["failed"] = "release_build: exit 1"
    sj.write_text(json.dumps(d))
    report.generate(str(tmp_path / "exp"), str(out))
    assert "Incomplete: the study stopped with an error" in out.read_text()
    # bad input: one-line error, exit 2
    assert report.main([str(tmp_path / "nothing")]) == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.slow
def test_study_script_end_to_end(tmp_path):
    """hope_vs_titans with the tiniest sizes (Transformer++ only): train → every eval → report,
    through the bash entry point."""
    env = dict(os.environ, PYTHON=sys.executable,
               JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jaxcache"))
    r = subprocess.run(["bash", "launch/experiments/hope_vs_titans.sh", "--tiny",
                        "--variants", "transformer", "--out", str(tmp_path / "exp"),
                        "--runs", str(tmp_path / "runs")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    study = json.loads((tmp_path / "exp" / "results" / "hope_vs_titans-tiny" / "study.json").read_text())
    assert study["complete"] and study["preset"] == "tiny"
    assert set(study["evals"]) == {f"transformer_{k}" for k in
                                   ("curve", "zeroshot", "passkey", "niah", "sequential")}
    for rec in study["evals"].values():
        doc = json.loads((tmp_path / "exp" / "results" / "hope_vs_titans-tiny" / rec["json"]).read_text())
        assert doc["metrics"]
    md = (tmp_path / "exp" / "RESULTS.md").read_text()
    assert "## hope_vs_titans (tiny preset)" in md
    assert (tmp_path / "exp" / "figures" / "hope_vs_titans-tiny_loss.png").exists()
    assert (tmp_path / "runs" / "train" / "transformer" / "checkpoints").is_dir()
    # a rerun reuses the finished training run and eval files
    r2 = subprocess.run(["bash", "launch/experiments/hope_vs_titans.sh", "--tiny",
                         "--variants", "transformer", "--out", str(tmp_path / "exp"),
                         "--runs", str(tmp_path / "runs"), "--no-report"],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r2.returncode == 0, r2.stdout[-3000:] + r2.stderr[-3000:]
    assert "train_transformer: reusing the finished run" in r2.stdout
    assert "eval_transformer_zeroshot: reusing the finished run" in r2.stdout


def test_study_scripts_dry_run(capsys):
    """Every study plans its commands for the CPU and GPU presets (nothing runs): real CLI
    calls, param-matched baselines, the multi-device environment, the release steps."""
    for name in study.STUDIES:
        for extra in ([], ["--gpu"]):
            assert study.main([name, "--dry-run", *extra]) == 0
            out = capsys.readouterr().out
            lines = out.splitlines()
            assert lines and all("python -m nested_jax." in x for x in lines), (name, extra)
            preset = "gpu" if extra else "cpu"
            assert f"runs/experiments/{name}/{preset}/" in out
            if name == "hope_vs_titans":
                assert "--config.model.variant=titans --config.model.d_ff=" in out
                assert out.count("python -m nested_jax.eval ") == 15
            if name == "multi_device_smoke" and not extra:
                assert "XLA_FLAGS=--xla_force_host_platform_device_count=2" in out
            if name == "teach_scale_sweep":
                assert out.count("python -m nested_jax.train") == 8  # + seed replicate, M3 at lr/30
                assert "--config.optim.name=m3" in out and "--config.optim.name=muon" in out
                # M3 at the preset's lr / 30: 3e-3 (CPU preset), 2.5e-4 (configs/pilot.py)
                assert f"--config.optim.lr={'8.33e-06' if extra else '0.0001'}" in out
            if name == "pilot_release":
                assert "nested_jax.release verify" in out


def test_study_flags_merge_in_place():
    """A study's flags replace the preset's flag of the same key where it stands (new keys go
    last), so a command reads as the preset plus what the study changes."""
    preset = study_base.load_preset("cpu")
    assert preset["config"] == "configs/smoke.py"
    assert "--config.model.cms.periods=(16,32,48)" in preset["train"]
    merged = study_base.merge(preset["train"], ["--config.optim.lr=0.0001", "--config.seed=2"])
    assert len(merged) == len(preset["train"]) + 1 and merged[-1] == "--config.seed=2"
    assert merged[preset["train"].index("--config.optim.lr=0.003")] == "--config.optim.lr=0.0001"
    c = study_base.load_config(preset["config"], merged)  # the trainer's parser
    assert c.optim.lr == 1e-4 and c.seed == 2 and c.model.cms.periods == (16, 32, 48)
    assert study_base.overrides(merged)["model.d_model"] == "64"
    for name in ("cpu", "gpu", "tiny"):  # every evaluation of a study has its flags
        assert set(study_base.load_preset(name)["eval"]) == {"curve", "zeroshot", "passkey",
                                                             "niah", "sequential", "memo_zeroshot"}


def test_driver_skips_finished_commands(tmp_path, capsys):
    """Run → skip the same command → rerun a changed one (its old output removed) → --force;
    a failure raises and is not reused; an interrupted run keeps its output (a trainer
    resumes); a check (no output) always runs and any exit status is its result."""
    out = tmp_path / "out"

    def cmd(text, rc=0):
        return [sys.executable, "-c", f"import pathlib, sys; pathlib.Path({str(out)!r}).mkdir("
                f"exist_ok=True); (pathlib.Path({str(out)!r}) / {text!r}).write_text('x'); "
                f"print({text!r}); sys.exit({rc})"]

    d = driver.Driver(tmp_path / "runs", env=dict(os.environ), name="t")
    r = d.run("a", cmd("one"), creates=out)
    assert r["rc"] == 0 and not r["reused"] and (out / "one").exists()
    assert "one" in (tmp_path / "runs" / "logs" / "a.log").read_text()
    assert d.run("a", cmd("one"), creates=out)["reused"]
    r = d.run("a", cmd("two"), creates=out)  # another command: the old output goes first
    assert not r["reused"] and (out / "two").exists() and not (out / "one").exists()
    with pytest.raises(driver.Failed, match="exit 5"):
        d.run("a", cmd("three", 5), creates=out)
    assert not d.run("a", cmd("three"), creates=out)["reused"]  # a failed run is redone
    assert (out / "three").exists() and not (out / "two").exists()
    assert d.run("b", cmd("diverged", 3), creates=out, ok=(0, 3))["rc"] == 3
    assert d.run("b", cmd("diverged", 3), creates=out, ok=(0, 3))["reused"]
    rec = tmp_path / "runs" / "logs" / "a.json"  # interrupted: the record says running
    rec.write_text(json.dumps({"command": d.command(cmd("three")), "status": "running"}))
    (out / "checkpoint").write_text("kept")
    assert not d.run("a", cmd("three"), creates=out)["reused"] and (out / "checkpoint").exists()
    forced = driver.Driver(tmp_path / "runs", env=dict(os.environ), force=True)
    assert not forced.run("a", cmd("three"), creates=out)["reused"]
    assert not (out / "checkpoint").exists()
    assert [d.run("c", cmd("check", 1), ok=None)["reused"] for _ in range(2)] == [False, False]
    # a step that names an input under the runs folder reruns once that input changes
    inp = tmp_path / "runs" / "ckpt"
    inp.mkdir()
    (inp / "w").write_text("1")
    with_input = [*cmd("four"), f"--config.train.init_from={inp}"]  # ignored by the script
    assert not d.run("d", with_input, creates=out)["reused"]
    assert d.run("d", with_input, creates=out)["reused"]
    time.sleep(0.05)
    os.utime(inp / "w")  # modified now: after the step finished
    assert not d.run("d", with_input, creates=out)["reused"]
    assert d.run("d", with_input, creates=out)["reused"]
    dry = driver.Driver(tmp_path / "dry", env=dict(os.environ), dry_run=True)
    dry.run("x", [sys.executable, "-m", "nested_jax.eval"], env={"XLA_FLAGS": "--n=2"})
    assert capsys.readouterr().out.endswith("XLA_FLAGS=--n=2 python -m nested_jax.eval\n")
    assert not (tmp_path / "dry").exists()


def test_every_study_records_what_the_report_reads(tmp_path, monkeypatch):
    """Each study's bookkeeping without running anything: a fake driver writes what each
    command would (training files, eval JSON, the release bundle), then the report renders
    every study from the study.json files the studies wrote."""
    def fake_run(self, key, argv, *, env=None, creates=None, ok=(0,)):
        cmd = self.command(argv, env)
        if "nested_jax.train" in argv:
            wd = ROOT / argv[argv.index("--workdir") + 1]
            _run(wd.parents[1] / "fake", wd.name)
            (wd.parent).mkdir(parents=True, exist_ok=True)
            shutil.copytree(wd.parents[1] / "fake" / "train" / wd.name, wd, dirs_exist_ok=True)
        elif "nested_jax.convert" in argv:  # stack: the workdir's config.py is what is read
            out = ROOT / argv[argv.index("--output") + 1]
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.py").write_text(
                "from nested_jax.configs.smoke import get_config as _g\n\n\ndef get_config():\n"
                "    c = _g()\n    c.model.variant = 'hope_attention'\n    return c\n")
        elif "nested_jax.eval" in argv:
            kind, memo = argv[3], "--memorize" in argv
            n_ck = len(argv[argv.index("--checkpoints") + 1:argv.index("--domains")]) \
                if "--domains" in argv else 2
            m = {"zeroshot": _zs(0.5, 0.75 if memo else None, -10.0, -9.5),
                 "passkey": _needle(0.5, 1.0 if memo else None, 0.5, 0.9),
                 "niah": _needle(0.25),
                 "perplexity": {"overall": {"bits_per_byte": 3.5}},
                 "continual": (_cpt_matrix(1.0) if n_ck == 4 else _curve([5.0] * 4))
                 if "--checkpoints" in argv else _seq(5.0)}[kind]
            _w(ROOT / argv[argv.index("--output") + 1], {"command": kind, "command_line": cmd,
                                                          "config": {"n_params": 1000},
                                                          "metrics": m})
        elif "nested_jax.release" in argv and "verify" not in argv:
            out = ROOT / argv[argv.index("--output") + 1]
            for f in ("release.json", "MANIFEST.json", "MODEL_CARD.md"):
                _w(out / f, {"step": 6})
        rc = 1 if "release_tampered" in cmd else 0
        return {"command": cmd, "rc": rc, "wall_s": 1.0, "tail": "", "reused": False,
                "git_commit": "abc"}

    monkeypatch.setattr(driver.Driver, "run", fake_run)
    for module in (study_base, recipes):  # the study record, multi_device_smoke's devices
        monkeypatch.setattr(module, "machine_info", lambda env: dict(MACHINE))
    runs = Path(os.path.relpath(tmp_path / "runs", ROOT))  # inside or outside the repo
    for name in study.STUDIES:
        assert study.main([name, "--tiny", "--out", str(tmp_path / "exp"), "--no-report",
                           "--runs", str(runs / name)]) == 0
    assert report.main([str(tmp_path / "exp")]) == 0
    md = (tmp_path / "exp" / "RESULTS.md").read_text()
    heads = [m.group(1) for m in re.finditer(r"^## (\w+) \(tiny preset\)$", md, re.M)]
    assert heads == list(report.STUDY_ORDER) and "Incomplete" not in md
    assert "HOPE has the lowest CE" in md and "Held-out loss minus the control" in md
    assert "ts0.10_m3_lr_div30" in md and "Multi-device vs one device" in md
    assert "applied" in md and "expected non-zero" in md and "**unexpected**" not in md
    assert "Least forgetting:" in md and "--config.model.freeze=" in md
    sweep = json.loads((tmp_path / "exp" / "results" / "teach_scale_sweep-tiny" / "study.json")
                       .read_text())
    assert sweep["complete"] and len(sweep["runs"]) == 8 and len(sweep["sweep"]["rows"]) == 9
    assert sweep["runs"]["ts0.10_m3_lr_div30"]["overrides"]["optim.lr"] == "0.0001"
    assert sweep["model_preset"]["overrides"]["train.steps"] == "6"
