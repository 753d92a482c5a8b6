"""The framework of the experiment studies (study.py runs them, recipes.py defines them):
the presets and their `--config` flags, parameter counts and matching, the machine and git
record, and the Study class that runs a study's commands through the driver (driver.py) and
writes its `study.json`.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from driver import ROOT, Driver, Failed, disp, shown

HERE = Path(__file__).resolve().parent


# ---- flags ----------------------------------------------------------------------------------


def merge(*flag_lists) -> list[str]:
    """`--config.k=v` flags in order, a later flag of the same key replacing the earlier one in
    its place."""
    out = {}
    for flags in flag_lists:
        for f in flags:
            out[f.partition("=")[0]] = f
    return list(out.values())


def overrides(flags: list[str]) -> dict:
    """{"model.d_model": "64", ...} of `--config.model.d_model=64 ...`."""
    return {k.removeprefix("--config."): v for k, _, v in (f.partition("=") for f in flags)}


def load_preset(name: str) -> dict:
    with open(HERE / "presets" / f"{name}.toml", "rb") as f:
        p = tomllib.load(f)
    return {"config": p["config"], "train": shlex.split(p["train"]), "eval": p["eval"]}


def load_config(config: str, flags: list[str]):
    """The config the trainer builds from `--config config flags` (same parser)."""
    from absl import flags as absl_flags
    from ml_collections import config_flags

    from nested_jax.configs import preset_path

    argv = ["study", "--config=" + preset_path(str(ROOT / config)), *flags]
    fv = absl_flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True,
                                    sys_argv=argv)
    fv(argv)
    return fv.config


def count_params(config: str, flags: list[str]) -> int:
    import jax
    import numpy as np
    from flax import nnx

    from nested_jax.data import loader
    from nested_jax.model.lm import build_model

    c = load_config(config, flags)
    c.model.vocab_size = loader.tokenizer_for(c.data).vocab_size
    shapes = jax.eval_shape(lambda: nnx.to_pure_dict(nnx.split(build_model(c.model, 0))[1]))
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(shapes)))


def match_d_ff(config: str, base: list[str], variant: str, target: int) -> tuple[int, int]:
    """(d_ff, params) with d_ff a multiple of 64 whose count is closest to target (the count
    is linear in d_ff: solve from two points, then check the neighbours)."""
    d = int(load_config(config, base).model.d_model)

    def n(dff):
        return count_params(config, merge(base, [f"--config.model.variant={variant}",
                                                 f"--config.model.d_ff={dff}"]))

    lo = max(64, -(-d // 64) * 64)
    n0, n1 = n(lo), n(lo + 64)
    per = (n1 - n0) / 64
    guess = lo + (target - n0) / per if per > 0 else lo
    centre = max(lo, int(round(guess / 64)) * 64)
    cands = [(abs(n(x) - target), x) for x in sorted({max(lo, centre + k * 64) for k in (-1, 0, 1)})]
    _, best = min(cands)
    return best, n(best)


# ---- the study record -----------------------------------------------------------------------


def machine_info(env: dict) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count()}
    try:
        for line in open("/proc/cpuinfo"):
            if line.lower().startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        info["cpu_model"] = platform.processor() or "unknown"
    try:
        info["load_avg"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    if shutil.which("nvidia-smi"):
        r = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                           capture_output=True, text=True)
        if r.returncode == 0 and r.stdout.strip():
            info["gpus"] = [x.strip() for x in r.stdout.strip().splitlines()]
    code = ("import jax, json; d = jax.devices(); print(json.dumps({'backend': "
            "jax.default_backend(), 'devices': [str(x) for x in d], 'device_kind': "
            "d[0].device_kind, 'jax': jax.__version__}))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       cwd=ROOT)
    if r.returncode == 0:
        try:
            info.update(json.loads(r.stdout.strip().splitlines()[-1]))
        except (ValueError, IndexError):
            pass
    return info


def git_state() -> dict:
    def git(*a):
        r = subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else None

    # Only code counts as dirty: the studies' own outputs (results, figures, RESULTS.md) are
    # rewritten by every --force run and say nothing about the code that produced them.
    outputs = [f":(exclude)launch/experiments/{p}" for p in ("results", "figures", "RESULTS.md")]
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".", *outputs) or ""
    return {"commit": git("rev-parse", "HEAD"), "dirty_files": len(status.splitlines())}


class Study:
    """One study: its preset, its commands (through the driver) and `study.json`."""

    def __init__(self, name: str, a):
        self.name, self.a = name, a
        self.preset = "tiny" if a.tiny else ("gpu" if a.gpu else "cpu")
        tag = name + ("" if self.preset == "cpu" else f"-{self.preset}")
        self.out = Path(a.out).resolve()
        self.results = self.out / "results" / tag
        runs = Path(a.runs or f"runs/experiments/{name}/{self.preset}")
        self.runs = runs if runs.is_absolute() else ROOT / runs
        p = load_preset(self.preset)
        self.config, self.flags, self.ev = p["config"], p["train"], p["eval"]
        self.env = os.environ.copy()
        if not a.no_compile_cache:
            self.env.setdefault("JAX_COMPILATION_CACHE_DIR",
                                str(ROOT / "runs" / "experiments" / ".jax_cache"))
            self.env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
        self.env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        self.dry = a.dry_run
        self.doc = {
            "study": name, "preset": self.preset, "tag": tag,
            "script": " ".join([f"bash launch/experiments/{name}.sh", *a.argv_passed]),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "git": {} if self.dry else git_state(), "model_preset": {}, "eval_preset": self.ev,
            "runs": {}, "evals": {}, "checks": {}, "notes": [],
        }
        self.set_flags([f"--config.train.steps={a.steps}"] if a.steps else [])
        if not self.dry:
            if a.force and self.results.exists():
                shutil.rmtree(self.results)
            (self.results / "evals").mkdir(parents=True, exist_ok=True)
            self.doc["machine"] = machine_info(self.env)
        self.drv = Driver(self.runs, env=self.env, force=a.force, dry_run=self.dry, name=name)
        self.say = self.drv.say

    def set_flags(self, flags: list[str], config: str | None = None) -> None:
        """Change the study's model preset (recorded in study.json): add flags, or start from
        another config file with only these flags."""
        if config:
            self.config, self.flags = config, []
        self.flags = merge(self.flags, flags)
        self.doc["model_preset"] = {"config": self.config, "overrides": overrides(self.flags)}

    def train(self, run: str, extra: list[str], *, env: dict | None = None,
              allow_diverge=False, config: str | None = None,
              base: list[str] | None = None) -> dict:
        """Train one run (or reuse it). allow_diverge: a run that stops on non-finite steps
        (exit 3) is recorded as diverged instead of failing the study. config/base: another
        config file and the flags under `extra` (default: the study's model preset)."""
        config = config or self.config
        flags = merge(self.flags if base is None else base, extra)
        workdir = self.runs / "train" / run
        argv = [sys.executable, "-m", "nested_jax.train", "--config", config,
                "--workdir", disp(workdir), *flags]
        rec = {"command": self.drv.command(argv, env), "workdir": disp(workdir),
               "config": config, "overrides": overrides(flags)}
        if not self.dry:
            rec["n_params"] = count_params(config, flags)
        r = self.drv.run(f"train_{run}", argv, env=env, creates=workdir,
                         ok=(0, 3) if allow_diverge else (0,))
        self.doc["runs"][run] = rec
        if self.dry:
            return rec
        rec.update(wall_s=r["wall_s"], git_commit=r.get("git_commit"))
        if r["reused"]:
            rec["reused"] = True
        if r["rc"] == 3:  # train.max_nonfinite_in_a_row non-finite steps in a row
            rec.update(diverged=True, exit_status=3)
        rec["files"] = self.copy(workdir, f"train/{run}", ("metrics.jsonl", "summary.json", "config.json"))
        if rec.get("diverged"):
            self.say(f"train {run}: diverged (non-finite steps, exit 3); recorded as such")
        else:
            s = json.loads((workdir / "summary.json").read_text())
            self.say(f"train {run}: held-out loss {s.get('eval_loss'):.4f} "
                     f"(ln V = {s.get('ln_vocab'):.4f})")
        self.save()
        return rec

    def copy(self, src: Path, dst: str, names) -> dict:
        """Copy the files that exist into results/<dst>/: {"metrics": "<dst>/metrics.jsonl", ...}."""
        out = {}
        for f in names:
            if (src / f).exists():
                (self.results / dst).mkdir(parents=True, exist_ok=True)
                shutil.copy(src / f, self.results / dst / f)
                out[f.split(".")[0]] = f"{dst}/{f}"
        return out

    def evaluate(self, key: str, run: str, command: str, args: list[str], *, checkpoint=True,
                 env: dict | None = None, label: str = "") -> None:
        out = self.runs / "evals" / f"{key}.json"
        ck = ["--checkpoint", self.doc["runs"][run]["workdir"]] if checkpoint else []
        argv = [sys.executable, "-m", "nested_jax.eval", command, *ck, *args, "--no-progress",
                "--output", disp(out)]
        r = self.drv.run(f"eval_{key}", argv, env=env, creates=out)
        if self.dry:
            return
        shutil.copy(out, self.results / "evals" / f"{key}.json")
        rec = {"run": run, "command": command, "label": label, "wall_s": r["wall_s"],
               "json": f"evals/{key}.json"}
        if r["reused"]:
            rec["reused"] = True
        if env:
            rec["env"] = " ".join(f"{k}={v}" for k, v in env.items())
        self.doc["evals"][key] = rec
        self.save()

    def check(self, key: str, argv: list[str], what: str, env: dict | None = None) -> None:
        """A command whose exit status is the result (recorded, never reused)."""
        r = self.drv.run(f"check_{key}", argv, env=env, ok=None)
        if not self.dry:
            self.doc["checks"][key] = {"command": shown(argv), "what": what, "rc": r["rc"],
                                       "wall_s": r["wall_s"], "output_tail": r["tail"][-2000:]}
            self.save()

    def save(self) -> None:
        if self.dry:
            return
        self.doc["wall_s"] = round(time.time() - self.drv.t0, 1)
        self.doc["finished"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        try:
            self.doc.setdefault("machine", {})["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
        except OSError:
            pass
        path = self.results / "study.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.doc, indent=2) + "\n")
        os.replace(tmp, path)

    def report(self) -> None:
        if self.dry or self.a.no_report:
            return
        argv = [sys.executable, str(HERE / "report.py"), disp(self.out)]
        if subprocess.run(argv, cwd=ROOT, env=self.env).returncode != 0:
            raise Failed(f"report failed: `{shown(argv)}`")

    # ---- the evaluations every trained model gets ---------------------------------------------

    def ev_args(self, name: str) -> list[str]:
        return shlex.split(self.ev[name])

    def eval_suite(self, run: str, *, sequential=True, env=None) -> None:
        wd = self.doc["runs"][run]["workdir"]
        self.evaluate(f"{run}_curve", run, "continual",
                      ["--checkpoints", wd, "--all-steps", *self.ev_args("curve")],
                      checkpoint=False, label="held-out CE per domain over checkpoints", env=env)
        self.evaluate(f"{run}_zeroshot", run, "zeroshot", self.ev_args("zeroshot"),
                      label="zero-shot", env=env)
        self.evaluate(f"{run}_passkey", run, "passkey", self.ev_args("passkey"), label="passkey",
                      env=env)
        self.evaluate(f"{run}_niah", run, "niah", self.ev_args("niah"), label="NIAH", env=env)
        if sequential:
            self.evaluate(f"{run}_sequential", run, "continual",
                          ["--checkpoint", wd, *self.ev_args("sequential")], checkpoint=False,
                          label="continual matrix (sequential training)", env=env)
