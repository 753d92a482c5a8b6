"""Driver of the experiment studies (GitHub issue 9). Each `launch/experiments/<study>.sh`
runs `python launch/experiments/studies.py <study> [flags]`: train → evaluate → write the
study's JSON → regenerate RESULTS.md (`python -m nested_jax.eval report --experiments`).

    bash launch/experiments/hope_vs_titans.sh            # CPU preset (minutes)
    bash launch/experiments/hope_vs_titans.sh --gpu      # one H100: pilot shape, seq 2048
    bash launch/experiments/hope_vs_titans.sh --dry-run  # print the commands only

Every command is a real CLI call (`python -m nested_jax.train|eval|release|checkpoint`),
run from the repository root; its stdout/stderr go to `<runs>/logs/<key>.log`.
Outputs: `runs/experiments/<study>/<preset>/` (checkpoints, eval JSON, logs; gitignored).
Results: `<out>/results/<study>[-gpu]/` (default out = launch/experiments): `study.json`
(machine, date, commit, every command with its wall time), copies of the eval JSON files and
of each training run's metrics.jsonl / summary.json / config.json. The report is built only
from these files. A rerun reuses finished training runs and eval files whose command is
unchanged (`--force` redoes everything).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STUDIES = ("hope_vs_titans", "teach_scale_sweep", "multi_device_smoke", "memorisation_pilot",
           "pilot_release")

# --------------------------------------------------------------------------------------------
# Presets. A model preset = base config file + overrides (dotted keys → values); eval presets
# size every evaluation. "cpu" finishes each study in minutes on 2 cores; "gpu" is sized for one
# H100 (pilot shape 512×12, seq 2048, bf16); "tiny" is for the end-to-end test.
# --------------------------------------------------------------------------------------------

MODEL = {
    "cpu": {
        "config": "configs/smoke.py",
        "overrides": {
            "model.d_model": 64, "model.n_layers": 2, "model.n_heads": 4,
            "model.titans.chunk_size": 16, "model.selfmod.chunk_size": 8,
            "model.selfmod.chunk_size_mem": 32, "model.online.segment_len": 16,
            "model.cms.periods": (16, 32, 48), "data.tokenizer": "novels_2k",
            "train.seq_len": 64, "train.batch_size": 8, "train.steps": 200, "train.log_every": 10,
            "optim.lr": 3e-3, "optim.warmup_steps": 20, "checkpoint.every_steps": 50,
            "checkpoint.max_to_keep": 10, "eval.every_steps": 50, "eval.num_batches": 4,
            "eval.batch_size": 16, "logging.progress_bar": False,
        },
    },
    "gpu": {
        "config": "configs/pilot.py",  # hope_hybrid 512×12×8, seq 2048, 32k vocab, bf16, Muon
        "overrides": {
            "train.steps": 2000, "train.batch_size": 8, "train.log_every": 20,
            "optim.warmup_steps": 200, "model.online.teach_warmup_steps": 200,
            "model.online.teach_decay_start": 0, "model.online.teach_decay_duration": 0,
            "checkpoint.every_steps": 500, "checkpoint.max_to_keep": 10,
            "eval.every_steps": 500, "eval.num_batches": 8, "eval.batch_size": 8,
            "logging.progress_bar": False,
        },
    },
    "tiny": {
        "config": "configs/smoke.py",
        "overrides": {
            "model.d_model": 32, "model.n_layers": 1, "model.n_heads": 2,
            "model.titans.chunk_size": 8, "model.selfmod.chunk_size": 8,
            "model.selfmod.chunk_size_mem": 16, "model.online.segment_len": 16,
            "model.cms.periods": (16, 16, 16), "data.tokenizer": "novels_2k",
            "train.seq_len": 32, "train.batch_size": 4, "train.steps": 6, "train.log_every": 2,
            "optim.lr": 3e-3, "optim.warmup_steps": 2, "checkpoint.every_steps": 3,
            "checkpoint.max_to_keep": 10, "eval.every_steps": 3, "eval.num_batches": 1,
            "eval.batch_size": 4, "logging.progress_bar": False,
        },
    },
}

EVAL = {
    "cpu": {"zs_tasks": "all", "zs_limit": 50, "passkey": [256], "niah": [512],
            "depths": [0, 50, 100], "samples": 3, "windows": 8, "seq_steps": 20,
            "seq_batch": 8, "seq_lr": 1e-3, "memo_tasks": "piqa,arc_easy",
            "memo_limit": 12, "batch_size": 16},
    "gpu": {"zs_tasks": "all", "zs_limit": 500, "passkey": [2048, 4096, 8192],
            "niah": [2048, 4096, 8192], "depths": [0, 25, 50, 75, 100], "samples": 4,
            "windows": 32, "seq_steps": 200, "seq_batch": 8, "seq_lr": 1e-4,
            "memo_tasks": "all", "memo_limit": 200, "batch_size": 16},
    "tiny": {"zs_tasks": "piqa", "zs_limit": 2, "passkey": [128], "niah": [128], "depths": [50],
             "samples": 1, "windows": 2, "seq_steps": 2, "seq_batch": 2, "seq_lr": 1e-3,
             "memo_tasks": "piqa", "memo_limit": 2, "batch_size": 8},
}

TEACH_SCALES = (0.0, 0.05, 0.10, 0.20)
OPTIMIZER_ROW_SCALE = 0.10
# Outer optimizers compared at one teach scale, all at the preset's lr (untuned). Muon's
# orthogonalised matrix step has RMS ~1/sqrt(width), so it would usually get a larger lr on
# matrices with `optim.adam_lr` = the AdamW lr for the rest; here it runs with one lr like
# M3 (whose step is not comparable with AdamW's either, m3.py), untuned.
OPTIMIZERS = {
    "adamw": {},
    "muon": {"optim.name": "muon"},
    "m3": {"optim.name": "m3"},
    # M3's first steps are ~lr·0.125/|g| per element (|g| ~ 1e-3 here), so at the AdamW lr
    # they are ~80x larger than AdamW's; this row divides the lr by 30.
    "m3_lr_div30": {"optim.name": "m3", "optim.lr": "BASE_LR/30"},
}
OPTIMIZER_NOTE = ("AdamW, Muon and M3 run at the preset's learning rate, untuned, plus M3 at a "
                  "30x smaller lr (its AdaGrad-like step is ~1/|g| per element). Muon would "
                  "normally take a larger matrix lr plus `optim.adam_lr` for the other "
                  "parameters; here it has one lr.")
VARIANTS = ("hope", "titans", "transformer")
MEMO_SETTINGS = (  # (key, label, flags)
    ("prompt_1", "prompt, 1 step", ["--memorize", "--memorize-steps", "1"]),
    ("prompt_2", "prompt, 2 steps", ["--memorize", "--memorize-steps", "2"]),
    ("answer_1", "prompt + answer, 1 step",
     ["--memorize", "--memorize-steps", "1", "--memorize-use-correct-answer"]),
    ("answer_2", "prompt + answer, 2 steps",
     ["--memorize", "--memorize-steps", "2", "--memorize-use-correct-answer"]),
)


def fmt_value(v) -> str:
    if isinstance(v, bool):
        return "True" if v else "False"
    if isinstance(v, tuple):
        return "(" + ",".join(fmt_value(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    return str(v)


def config_flags(overrides: dict) -> list[str]:
    return [f"--config.{k}={fmt_value(v)}" for k, v in overrides.items()]


def shown(argv: list[str]) -> str:
    """The command as recorded: `python` for this interpreter, paths relative to the repo."""
    out = []
    for a in argv:
        a = "python" if a == sys.executable else a
        out.append(a.replace(str(ROOT) + os.sep, ""))
    return shlex.join(out)


def rel(p: Path | str, start: Path | str) -> str:
    return os.path.relpath(os.path.abspath(p), os.path.abspath(start))


def disp(p: Path | str) -> str:
    """A path as commands show it: relative to the repo root inside it, absolute outside."""
    a = os.path.abspath(p)
    return rel(a, ROOT) if a.startswith(str(ROOT) + os.sep) else a


def machine_info(env: dict | None = None) -> dict:
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
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=env or os.environ.copy(), cwd=ROOT)
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


# --------------------------------------------------------------------------------------------


class StudyFailed(RuntimeError):
    pass


class Study:
    """Runs commands, records them, and writes <results>/study.json."""

    def __init__(self, name: str, a):
        self.name, self.a = name, a
        self.preset = "tiny" if a.tiny else ("gpu" if a.gpu else "cpu")
        tag = name + ("" if self.preset == "cpu" else f"-{self.preset}")
        self.out = Path(a.out).resolve()
        self.results = self.out / "results" / tag
        self.runs = Path(a.runs or f"runs/experiments/{name}/{self.preset}")
        if not self.runs.is_absolute():
            self.runs = ROOT / self.runs
        self.model = json.loads(json.dumps(MODEL[self.preset]))  # deep copy
        self.model["overrides"] = dict(MODEL[self.preset]["overrides"])
        if a.steps:
            self.model["overrides"]["train.steps"] = a.steps
        self.ev = dict(EVAL[self.preset])
        self.env = os.environ.copy()
        if not a.no_compile_cache:
            self.env.setdefault("JAX_COMPILATION_CACHE_DIR",
                                str(ROOT / "runs" / "experiments" / ".jax_cache"))
            self.env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
        self.env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        self.t0 = time.time()
        self.doc = {
            "study": name, "preset": self.preset, "tag": tag,
            "script": " ".join([f"bash launch/experiments/{name}.sh", *a.argv_passed]),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "git": git_state(), "model_preset": self.model, "eval_preset": self.ev,
            "runs": {}, "evals": {}, "checks": {}, "notes": [],
        }
        if not a.dry_run:
            if a.force and self.results.exists():
                shutil.rmtree(self.results)
            (self.results / "evals").mkdir(parents=True, exist_ok=True)
            (self.runs / "logs").mkdir(parents=True, exist_ok=True)
            self.doc["machine"] = machine_info(self.env)

    # ---- primitives ----------------------------------------------------------------------

    def say(self, msg: str) -> None:
        el = time.time() - self.t0
        print(f"[experiments {self.name} {el:6.0f}s] {msg}", flush=True)

    def sh(self, key: str, argv: list[str], env: dict | None = None, check: bool = True) -> dict:
        """Run argv from the repo root; log to <runs>/logs/<key>.log; return rc, wall, tail."""
        if self.a.dry_run:
            print(("" if env is None else " ".join(f"{k}={v}" for k, v in env.items()
                                                   if os.environ.get(k) != v and k.startswith(("XLA", "JAX_PLAT")))
                   + " ") + shown(argv))
            return {"rc": 0, "wall_s": 0.0, "tail": ""}
        log = self.runs / "logs" / f"{key}.log"
        t = time.perf_counter()
        with open(log, "w") as f:
            f.write(f"$ {shown(argv)}\n")
            f.flush()
            r = subprocess.run(argv, cwd=ROOT, env=env or self.env, stdout=f,
                               stderr=subprocess.STDOUT)
        wall = round(time.perf_counter() - t, 1)
        tail = "".join(open(log, errors="replace").readlines()[-15:])
        if check and r.returncode != 0:
            raise StudyFailed(f"{key}: exit {r.returncode} after {wall}s; `{shown(argv)}`; "
                              f"log {log}:\n{tail}")
        return {"rc": r.returncode, "wall_s": wall, "tail": tail}

    def model_flags(self, extra: dict | None = None, config: str | None = None,
                    base: dict | None = None) -> tuple[str, dict]:
        ov = dict(self.model["overrides"] if base is None else base)
        base_lr = ov.get("optim.lr", 3e-4)  # "BASE_LR": the preset's lr, before `extra`
        ov.update(extra or {})
        for k, v in list(ov.items()):
            if isinstance(v, str) and v.startswith("BASE_LR"):  # "BASE_LR" or "BASE_LR/30"
                div = float(v.split("/", 1)[1]) if "/" in v else 1.0
                ov[k] = float(f"{base_lr / div:.3g}")
        return config or self.model["config"], ov

    def train(self, run: str, extra: dict | None = None, *, config: str | None = None,
              base: dict | None = None, env: dict | None = None, env_note: str = "",
              allow_diverge: bool = False) -> dict:
        """Train one run (or reuse it). allow_diverge: a run that stops on non-finite steps
        (exit 3) is recorded as diverged instead of failing the study."""
        config, ov = self.model_flags(extra, config, base)
        workdir = self.runs / "train" / run
        argv = [sys.executable, "-m", "nested_jax.train", "--config", config,
                "--workdir", disp(workdir),
                *config_flags(ov)]
        cmd = (env_note + " " if env_note else "") + shown(argv)
        rec = {"command": cmd, "workdir": disp(workdir), "config": config,
               "overrides": {k: fmt_value(v) for k, v in ov.items()}}
        if not self.a.dry_run:
            rec["n_params"] = count_params(config, ov)
        steps = int(ov.get("train.steps", 0)) or None
        stamp = workdir / "experiment_command.txt"
        record = workdir / "experiment_record.json"
        prev = json.loads(record.read_text()) if record.exists() else {}
        done = (not self.a.force and stamp.exists() and stamp.read_text() == cmd
                and (((workdir / "summary.json").exists()
                      and json.loads((workdir / "summary.json").read_text()).get("final_step") == steps)
                     or (allow_diverge and prev.get("diverged"))))
        if self.a.dry_run:
            self.doc["runs"][run] = rec
            self.sh(f"train_{run}", argv, env=env)
            return rec
        if self.a.force and workdir.exists():
            shutil.rmtree(workdir)
        if done:
            self.say(f"train {run}: reusing the finished run in {rec['workdir']}")
            rec["reused"] = True
            rec["wall_s"] = prev.get("wall_s")
            rec["git_commit"] = prev.get("git_commit")
            if prev.get("diverged"):
                rec.update(diverged=True, exit_status=prev.get("exit_status"))
        else:
            interrupted = stamp.exists() and stamp.read_text() == cmd and prev.get("status") == "running"
            if workdir.exists() and not interrupted:
                shutil.rmtree(workdir)  # another command's or a failed run's leftovers
            workdir.mkdir(parents=True, exist_ok=True)  # (an interrupted run resumes)
            stamp.write_text(cmd)
            rec["git_commit"] = self.doc["git"].get("commit")
            record.write_text(json.dumps({"status": "running", "git_commit": rec["git_commit"]}))
            self.say(f"train {run}: {cmd}")
            r = self.sh(f"train_{run}", argv, env=env, check=False)
            if r["rc"] == 3 and allow_diverge:  # train.max_nonfinite_in_a_row non-finite in a row
                rec.update(diverged=True, exit_status=3)
            elif r["rc"] != 0:
                record.write_text(json.dumps({"status": "failed", "exit_status": r["rc"]}))
                raise StudyFailed(f"train_{run}: exit {r['rc']} after {r['wall_s']}s; "
                                  f"`{shown(argv)}`:\n{r['tail']}")
            rec["wall_s"] = r["wall_s"]
            record.write_text(json.dumps({"status": "finished", "wall_s": r["wall_s"],
                                          "git_commit": rec["git_commit"],
                                          "diverged": rec.get("diverged", False),
                                          "exit_status": r["rc"]}))
        dst = self.results / "train" / run
        dst.mkdir(parents=True, exist_ok=True)
        for f in ("metrics.jsonl", "summary.json", "config.json"):
            if (workdir / f).exists():
                shutil.copy(workdir / f, dst / f)
        rec["files"] = {f.split(".")[0]: rel(dst / f, self.results)
                        for f in ("metrics.jsonl", "summary.json", "config.json") if (dst / f).exists()}
        if rec.get("diverged"):
            self.say(f"train {run}: diverged (non-finite steps, exit 3) after {rec['wall_s']}s; "
                     "recorded as such")
        else:
            s = json.loads((workdir / "summary.json").read_text())
            self.say(f"train {run}: done in {rec['wall_s']}s, held-out loss "
                     f"{s.get('eval_loss'):.4f} (ln V = {s.get('ln_vocab'):.4f})")
        self.doc["runs"][run] = rec
        self.save()
        return rec

    def evaluate(self, key: str, run: str, command: str, args: list, *, checkpoint=True,
                 env: dict | None = None, label: str = "", env_note: str = "") -> dict:
        out = self.runs / "evals" / f"{key}.json"
        ck = ["--checkpoint", self.doc["runs"][run]["workdir"]] if checkpoint else []
        argv = [sys.executable, "-m", "nested_jax.eval", command, *ck, *[str(x) for x in args],
                "--no-progress", "--output", disp(out)]
        if self.a.dry_run:
            self.sh(f"eval_{key}", argv, env=env)
            return {}
        prev_ok = False
        if out.exists() and not self.a.force:
            try:
                prev_ok = json.loads(out.read_text()).get("argv") == argv[3:]
            except ValueError:
                prev_ok = False
        rec = {"run": run, "command": command, "label": label}
        if prev_ok and (self.runs / "logs" / f"eval_{key}.wall").exists():
            rec["wall_s"] = float((self.runs / "logs" / f"eval_{key}.wall").read_text())
            rec["reused"] = True
            self.say(f"eval {key}: reusing {disp(out)}")
        else:
            self.say(f"eval {key}: {shown(argv)}")
            r = self.sh(f"eval_{key}", argv, env=env)
            rec["wall_s"] = r["wall_s"]
            (self.runs / "logs" / f"eval_{key}.wall").write_text(str(r["wall_s"]))
        dst = self.results / "evals" / f"{key}.json"
        shutil.copy(out, dst)
        rec["json"] = rel(dst, self.results)
        if env_note:
            rec["env"] = env_note
        self.doc["evals"][key] = rec
        self.say(f"eval {key}: {rec['wall_s']}s")
        self.save()
        return rec

    def check(self, key: str, argv: list[str], what: str, env: dict | None = None) -> dict:
        r = self.sh(f"check_{key}", argv, env=env, check=False)
        if self.a.dry_run:
            return r
        rec = {"command": shown(argv), "what": what, "rc": r["rc"], "wall_s": r["wall_s"],
               "output_tail": r["tail"][-2000:]}
        self.doc["checks"][key] = rec
        self.say(f"check {key}: exit {r['rc']} ({r['wall_s']}s)")
        self.save()
        return rec

    def save(self) -> None:
        if self.a.dry_run:
            return
        self.doc["wall_s"] = round(time.time() - self.t0, 1)
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
        if self.a.dry_run or self.a.no_report:
            return
        argv = [sys.executable, "-m", "nested_jax.eval", "report", "--experiments", str(self.out)]
        r = subprocess.run(argv, cwd=ROOT, env=self.env)
        if r.returncode != 0:
            raise StudyFailed(f"report generator failed: `{shown(argv)}`")

    # ---- shared evaluation suites ----------------------------------------------------------

    def needle_args(self, lengths) -> list:
        e = self.ev
        return ["--lengths", ",".join(map(str, lengths)), "--depths", ",".join(map(str, e["depths"])),
                "--samples", e["samples"], "--batch-size", e["batch_size"]]

    def eval_suite(self, run: str, *, sequential=True, env=None, env_note=""):
        e = self.ev
        kw = {"env": env, "env_note": env_note}
        self.evaluate(f"{run}_curve", run, "continual",
                      ["--checkpoints", self.doc["runs"][run]["workdir"], "--all-steps",
                       "--windows", e["windows"], "--batch-size", e["batch_size"]],
                      checkpoint=False, label="held-out CE per domain over checkpoints", **kw)
        self.evaluate(f"{run}_zeroshot", run, "zeroshot",
                      ["--tasks", e["zs_tasks"], "--limit", e["zs_limit"],
                       "--batch-size", e["batch_size"]], label="zero-shot", **kw)
        self.evaluate(f"{run}_passkey", run, "passkey", self.needle_args(e["passkey"]),
                      label="passkey", **kw)
        self.evaluate(f"{run}_niah", run, "niah", self.needle_args(e["niah"]), label="NIAH", **kw)
        if sequential:
            wd = self.doc["runs"][run]["workdir"]
            self.evaluate(f"{run}_sequential", run, "continual",
                          ["--checkpoint", wd, "--steps-per-phase", e["seq_steps"],
                           "--train-batch-size", e["seq_batch"], "--lr", e["seq_lr"],
                           "--windows", e["windows"], "--batch-size", e["batch_size"]],
                          checkpoint=False, label="continual matrix (sequential training)", **kw)


# --------------------------------------------------------------------------------------------
# Parameter matching (hope_vs_titans): baselines' SwiGLU width d_ff is chosen so that their
# parameter count is closest to HOPE's (counted with jax.eval_shape, no memory).
# --------------------------------------------------------------------------------------------


def _load_config(path: str, overrides: dict):
    import importlib.util

    sys.path.insert(0, str(ROOT))
    spec = importlib.util.spec_from_file_location("cfg_" + Path(path).stem, ROOT / path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    for k, v in overrides.items():
        node = c
        *parents, last = k.split(".")
        for p in parents:
            node = node[p]
        node[last] = v
    return c


def count_params(config: str, overrides: dict) -> int:
    import jax
    import numpy as np
    from flax import nnx

    from nested_jax.data import loader
    from nested_jax.model.lm import build_model

    c = _load_config(config, overrides)
    c.model.vocab_size = loader.tokenizer_for(c.data).vocab_size
    shapes = jax.eval_shape(lambda: nnx.to_pure_dict(nnx.split(build_model(c.model, 0))[1]))
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(shapes)))


def match_d_ff(config: str, base: dict, variant: str, target: int) -> tuple[int, int]:
    """(d_ff, params) with d_ff a multiple of 64 whose count is closest to target (the count
    is linear in d_ff: solve from two points, then check the neighbours)."""
    d = int(base.get("model.d_model", 512))

    def n(dff):
        return count_params(config, {**base, "model.variant": variant, "model.d_ff": dff})

    lo = max(64, -(-d // 64) * 64)
    n0, n1 = n(lo), n(lo + 64)
    per = (n1 - n0) / 64
    guess = lo + (target - n0) / per if per > 0 else lo
    centre = max(lo, int(round(guess / 64)) * 64)
    cands = [(abs(n(x) - target), x) for x in sorted({max(lo, centre + k * 64) for k in (-1, 0, 1)})]
    _, best = min(cands)
    return best, n(best)


# --------------------------------------------------------------------------------------------
# The studies
# --------------------------------------------------------------------------------------------


def variants_of(a) -> list[str]:
    vs = [v.strip() for v in (a.variants or ",".join(VARIANTS)).split(",") if v.strip()]
    bad = [v for v in vs if v not in VARIANTS]
    if bad:
        raise SystemExit(f"error: --variants {bad} unknown; choose from {VARIANTS}.")
    return vs


def matched_runs(st: Study, variants: list[str]) -> dict:
    """{variant: overrides} at HOPE's parameter count (the baselines' d_ff is matched)."""
    config, base = st.model_flags()
    target = count_params(config, {**base, "model.variant": "hope"})
    st.doc["param_matching"] = {"target_variant": "hope", "target_params": target, "variants": {}}
    out = {}
    for v in variants:
        ov = {"model.variant": v}
        if v != "hope":
            dff, n = match_d_ff(config, base, v, target)
            ov["model.d_ff"] = dff
        else:
            n = target
        st.doc["param_matching"]["variants"][v] = {"params": n, "d_ff": ov.get("model.d_ff", "default"),
                                                   "ratio_to_hope": round(n / target, 4)}
        out[v] = ov
    return out


def study_hope_vs_titans(st: Study) -> None:
    st.doc["title"] = "HOPE vs Titans vs Transformer++ at a matched token budget and parameter count"
    runs = matched_runs(st, variants_of(st.a))
    for v, ov in runs.items():
        st.train(v, ov)
    for v in runs:
        st.eval_suite(v)


def teach_schedule(steps: int) -> dict:
    """The experiments report's 220-step schedule (warm-up 60, decay start 140, duration 80),
    scaled to `steps`."""
    return {"model.online.teach_warmup_steps": max(1, round(steps * 60 / 220)),
            "model.online.teach_decay_start": max(1, round(steps * 140 / 220)),
            "model.online.teach_decay_duration": max(1, round(steps * 80 / 220))}


def study_teach_scale_sweep(st: Study) -> None:
    st.doc["title"] = "Teach-scale sweep (HOPE) and outer optimizers at one teach scale"
    variant = st.a.variant or "hope"
    if st.preset == "gpu" and not st.a.steps:  # 7 runs: half the GPU preset's steps each
        st.model["overrides"]["train.steps"] = 1000
    steps = int(st.model["overrides"]["train.steps"])
    sched = teach_schedule(steps)
    if OPTIMIZER_NOTE not in st.doc["notes"]:
        st.doc["notes"].append(OPTIMIZER_NOTE)
    st.doc["sweep"] = {"variant": variant, "schedule": sched, "scales": list(TEACH_SCALES),
                       "optimizer_row_scale": OPTIMIZER_ROW_SCALE, "rows": []}
    for s in TEACH_SCALES:
        run = f"ts{s:.2f}_adamw"
        st.train(run, {"model.variant": variant, "model.online.teach_scale": s, **sched},
                 allow_diverge=True)
        st.doc["sweep"]["rows"].append({"run": run, "teach_scale": s, "optimizer": "adamw"})
    # seed replicate of the control: how far two seeds (init + data order) move the losses
    seed = int(_load_config(st.model["config"], {}).seed) + 1
    run = f"ts0.00_adamw_seed{seed}"
    st.train(run, {"model.variant": variant, "model.online.teach_scale": 0.0, **sched, "seed": seed},
             allow_diverge=True)
    st.doc["sweep"]["rows"].append({"run": run, "teach_scale": 0.0, "optimizer": "adamw",
                                    "replicate_of": f"ts{0.0:.2f}_adamw", "seed": seed})
    for name, ov in OPTIMIZERS.items():
        run = f"ts{OPTIMIZER_ROW_SCALE:.2f}_{name}"
        if name != "adamw":
            st.train(run, {"model.variant": variant, "model.online.teach_scale": OPTIMIZER_ROW_SCALE,
                           **sched, **ov}, allow_diverge=True)
            st.doc["sweep"]["rows"].append({"run": run, "teach_scale": OPTIMIZER_ROW_SCALE,
                                            "optimizer": name, "optimizer_row": True})
        else:
            st.doc["sweep"]["rows"].append({"run": run, "teach_scale": OPTIMIZER_ROW_SCALE,
                                            "optimizer": name, "optimizer_row": True})
    st.save()


def study_multi_device_smoke(st: Study) -> None:
    st.doc["title"] = "Multi-device smoke: the smoke model on every local device, then every evaluation"
    variant = st.a.variant or "hope"
    env, note = dict(st.env), ""
    if st.preset != "gpu":
        n = st.a.devices or 2
        env["JAX_PLATFORMS"] = "cpu"
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n} " + env.get("XLA_FLAGS", "")
        env["XLA_FLAGS"] = env["XLA_FLAGS"].strip()
        note = f"JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count={n}"
    steps = int(st.model["overrides"]["train.steps"])
    if st.preset != "tiny" and not st.a.steps:  # a smoke: half the preset's steps (CPU), 200 (GPU)
        steps = 100 if st.preset == "cpu" else 200
        st.model["overrides"]["train.steps"] = steps
    extra = {"model.variant": variant, "train.steps": steps, "mesh.data": -1}
    if not st.a.dry_run:
        st.doc["devices"] = machine_info(env).get("devices")
        st.doc["device_env"] = note
    st.train("multi", extra, env=env, env_note=note)
    # The same run on one device: HOPE's per-sequence online algorithm gives the same
    # parameters on 1 and N devices (tests/test_distributed.py); here we compare the losses.
    if st.preset != "gpu":
        one = dict(st.env, JAX_PLATFORMS="cpu")
        st.train("single", extra, env=one, env_note="JAX_PLATFORMS=cpu")
    st.check("checkpoint_verify", [sys.executable, "-m", "nested_jax.checkpoint", "verify",
                                   st.doc["runs"]["multi"]["workdir"]], "checkpoint verify", env=env)
    st.eval_suite("multi", env=env, env_note=note)
    e = st.ev
    st.evaluate("multi_zeroshot_memorize", "multi", "zeroshot",
                ["--tasks", e["memo_tasks"], "--limit", e["memo_limit"], "--batch-size", e["batch_size"],
                 "--memorize"], env=env, env_note=note, label="zero-shot, memorised prompt")
    st.evaluate("multi_passkey_memorize", "multi", "passkey",
                [*st.needle_args(e["passkey"]), "--memorize"], env=env, env_note=note,
                label="passkey, memorised prompt")


def study_memorisation_pilot(st: Study) -> None:
    st.doc["title"] = "Test-time memorisation pilot: zero-shot and passkey with and without --memorize"
    runs = matched_runs(st, variants_of(st.a))
    for v, ov in runs.items():
        st.train(v, ov)
    e = st.ev
    zs = ["--tasks", e["memo_tasks"], "--limit", e["memo_limit"], "--batch-size", e["batch_size"]]
    pk = st.needle_args(e["passkey"])
    st.doc["memo_settings"] = [{"key": k, "label": lab, "flags": " ".join(f)}
                               for k, lab, f in MEMO_SETTINGS]
    for v in runs:
        # every --memorize run also reports the baseline (no memorisation) side by side;
        # for transformer/titans one run documents the no-op
        settings = MEMO_SETTINGS if v.startswith("hope") else MEMO_SETTINGS[:1]
        for k, lab, flags in settings:
            st.evaluate(f"{v}_zeroshot_{k}", v, "zeroshot", [*zs, *flags], label=f"zero-shot, {lab}")
            st.evaluate(f"{v}_passkey_{k}", v, "passkey", [*pk, *flags], label=f"passkey, {lab}")


def study_pilot_release(st: Study) -> None:
    st.doc["title"] = "Pilot release: train (or take) a checkpoint, evaluate, bundle, verify"
    e = st.ev
    if st.a.checkpoint:
        wd = st.a.checkpoint
        st.doc["runs"]["pilot"] = {"command": "(given with --checkpoint)", "workdir": wd,
                                   "given": True}
        for f in ("metrics.jsonl", "summary.json", "config.json"):
            src = Path(wd) / f
            if src.exists() and not st.a.dry_run:
                dst = st.results / "train" / "pilot"
                dst.mkdir(parents=True, exist_ok=True)
                shutil.copy(src, dst / f)
                st.doc["runs"]["pilot"].setdefault("files", {})[f.split(".")[0]] = rel(dst / f, st.results)
    else:
        if st.preset == "gpu":
            base = {k: v for k, v in MODEL["gpu"]["overrides"].items()}
            if st.a.steps:
                base["train.steps"] = st.a.steps
            st.train("pilot", {}, config="configs/pilot.py", base=base)
        elif st.preset == "tiny":
            st.train("pilot", {"model.variant": "hope_hybrid"})
        else:
            steps = st.a.steps or 60
            base = {"train.steps": steps, "checkpoint.every_steps": steps // 2,
                    "checkpoint.max_to_keep": 10, "eval.every_steps": steps // 2,
                    "logging.progress_bar": False}
            st.doc["model_preset"] = {"config": "configs/pilot_smoke.py", "overrides": base}
            st.train("pilot", {}, config="configs/pilot_smoke.py", base=base)
    st.eval_suite("pilot", sequential=False)
    bundle = st.runs / "release"
    ev_files = [str(st.runs / "evals" / f"pilot_{k}.json") for k in ("zeroshot", "passkey", "niah", "curve")]
    ev_files = [disp(p) for p in ev_files]
    out = disp(bundle)
    st.check("release_build", [sys.executable, "-m", "nested_jax.release", "--checkpoint",
                               st.doc["runs"]["pilot"]["workdir"], "--evals", *ev_files,
                               "--output", out, "--force"], "release bundle")
    st.check("release_verify", [sys.executable, "-m", "nested_jax.release", "verify", out],
             "release verify")
    if st.a.dry_run:
        return
    # Tamper test on a copy: verify must fail when one bundled file changes.
    tam = st.runs / "release_tampered"
    if tam.exists():
        shutil.rmtree(tam)
    shutil.copytree(bundle, tam)
    card = tam / "MODEL_CARD.md"
    card.write_text(card.read_text() + "\ntampered\n")
    st.check("release_verify_tampered", [sys.executable, "-m", "nested_jax.release", "verify",
                                         disp(tam)],
             "release verify after appending a line to MODEL_CARD.md (must fail)")
    shutil.rmtree(tam)
    rel_dir = st.results / "release"
    rel_dir.mkdir(exist_ok=True)
    for f in ("release.json", "MANIFEST.json", "MODEL_CARD.md"):
        if (bundle / f).exists():
            shutil.copy(bundle / f, rel_dir / f)
    files = [p for p in bundle.rglob("*") if p.is_file()]
    st.doc["release"] = {"dir": out, "files": len(files),
                         "bytes": sum(p.stat().st_size for p in files),
                         "copied": {f.split(".")[0]: rel(rel_dir / f, st.results)
                                    for f in ("release.json", "MANIFEST.json", "MODEL_CARD.md")
                                    if (rel_dir / f).exists()}}
    st.save()


RUNNERS = {"hope_vs_titans": study_hope_vs_titans, "teach_scale_sweep": study_teach_scale_sweep,
           "multi_device_smoke": study_multi_device_smoke,
           "memorisation_pilot": study_memorisation_pilot, "pilot_release": study_pilot_release}


def parse(argv):
    p = argparse.ArgumentParser(prog="launch/experiments/<study>.sh", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", choices=STUDIES)
    p.add_argument("--gpu", action="store_true",
                   help="presets sized for one H100 (pilot shape 512×12, seq 2048, bf16, 32k vocab)")
    p.add_argument("--tiny", action="store_true", help="the tiniest sizes (end-to-end test)")
    p.add_argument("--steps", type=int, default=0, help="override train.steps")
    p.add_argument("--variants", default=None,
                   help="hope_vs_titans / memorisation_pilot: comma list of hope,titans,transformer")
    p.add_argument("--variant", default=None,
                   help="teach_scale_sweep / multi_device_smoke: the HOPE variant (default hope)")
    p.add_argument("--devices", type=int, default=0,
                   help="multi_device_smoke on CPU: simulated devices (default 2)")
    p.add_argument("--checkpoint", default=None, help="pilot_release: release this workdir")
    p.add_argument("--out", default=str(ROOT / "launch" / "experiments"),
                   help="results/<study>/ and RESULTS.md + figures/ go here")
    p.add_argument("--runs", default=None, help="outputs (default runs/experiments/<study>/<preset>)")
    p.add_argument("--force", action="store_true", help="redo every step (no reuse)")
    p.add_argument("--no-report", action="store_true", help="do not regenerate RESULTS.md")
    p.add_argument("--no-compile-cache", action="store_true",
                   help="no persistent JAX compilation cache (runs/experiments/.jax_cache)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    a = p.parse_args(argv)
    a.argv_passed = argv[1:]
    if a.gpu and a.tiny:
        p.error("--gpu and --tiny exclude each other")
    return a


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse(argv)
    st = Study(a.study, a)
    try:
        RUNNERS[a.study](st)
    except StudyFailed as e:
        st.doc["failed"] = str(e)
        st.save()
        print(f"error: {e}", file=sys.stderr)
        return 1
    st.doc["complete"] = True
    st.save()
    st.report()
    if not a.dry_run:
        st.say(f"done in {st.doc['wall_s']}s; results in {disp(st.results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
