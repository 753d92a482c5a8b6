"""Run a list of commands from the repository root and skip the finished ones.

Each command is a step with a key: its output goes to `<runs>/logs/<key>.log` and, once it
exits with an accepted status, `<runs>/logs/<key>.json` records the command line, the exit
status and the wall time. A rerun skips a step whose record holds the same command line while
the file or folder the step creates is still there; `force` redoes every step. A step that
names no output (a check) always runs. Nothing here knows what the commands do.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class Failed(RuntimeError):
    """A step exited with a status it does not accept."""


def shown(argv: list[str]) -> str:
    """A command as recorded: `python` for this interpreter, paths relative to the repo."""
    return shlex.join("python" if a == sys.executable else a.replace(str(ROOT) + os.sep, "")
                      for a in argv)


def disp(p: Path | str) -> str:
    """A path as commands show it: relative to the repo root inside it, absolute outside."""
    a = os.path.abspath(p)
    return os.path.relpath(a, ROOT) if a.startswith(str(ROOT) + os.sep) else a


class Driver:
    def __init__(self, runs: Path, *, env: dict, force=False, dry_run=False, name=""):
        self.runs, self.env, self.force, self.dry_run, self.name = runs, env, force, dry_run, name
        self.t0 = time.time()
        self.commit = None if dry_run else git_commit()
        if not dry_run:
            (runs / "logs").mkdir(parents=True, exist_ok=True)

    def say(self, msg: str) -> None:
        print(f"[experiments {self.name} {time.time() - self.t0:6.0f}s] {msg}", flush=True)

    def command(self, argv: list[str], env: dict | None = None) -> str:
        """The command line with the environment variables that differ from ours."""
        pre = [f"{k}={v}" for k, v in (env or {}).items() if os.environ.get(k) != v]
        return " ".join([*pre, shown(argv)])

    def run(self, key: str, argv: list[str], *, env: dict | None = None, creates=None,
            ok: tuple | None = (0,)) -> dict:
        """Run argv (environment: ours plus `env`) unless it already finished.

        creates: the file or folder the command writes. The step is skipped when its record
          holds this command line, `creates` exists and none of its inputs changed since it
          finished (inputs: the paths under the runs folder that argv names, as an argument
          or a flag's `=value`: a checkpoint another step trained); before a fresh run `creates` is
          removed, unless the last run of this same command was interrupted (a trainer resumes
          from its checkpoints). None: the step always runs.
        ok: exit statuses that finish the step (others raise Failed); None accepts any status
          and records none (a check whose status is its result).
        Returns {"command", "rc", "wall_s", "tail", "reused", "git_commit"}.
        """
        cmd = self.command(argv, env)
        if self.dry_run:
            print(cmd)
            return {"command": cmd, "rc": 0, "wall_s": 0.0, "tail": "", "reused": False}
        record = self.runs / "logs" / f"{key}.json"
        prev = json.loads(record.read_text()) if creates and record.exists() else {}
        same = prev.get("command") == cmd and not self.force
        out = Path(creates) if creates else None
        if same and prev.get("status") == "finished" and out.exists():
            changed = self._changed_inputs(argv, out, prev.get("finished_at"))
            if not changed:
                self.say(f"{key}: reusing the finished run ({disp(out)})")
                return {**prev, "reused": True}
            self.say(f"{key}: rerunning: {disp(changed)} changed since it finished")
        if out and out.exists() and not (same and prev.get("status") == "running"):
            shutil.rmtree(out) if out.is_dir() else out.unlink()  # leftovers of another run
        if out:
            record.write_text(json.dumps({"command": cmd, "status": "running"}))
        log = self.runs / "logs" / f"{key}.log"
        self.say(f"{key}: {cmd}")
        t = time.perf_counter()
        with open(log, "w") as f:
            f.write(f"$ {shown(argv)}\n")
            f.flush()
            r = subprocess.run(argv, cwd=ROOT, env={**self.env, **(env or {})}, stdout=f,
                               stderr=subprocess.STDOUT)
        wall = round(time.perf_counter() - t, 1)
        tail = "".join(open(log, errors="replace").readlines()[-15:])
        res = {"command": cmd, "rc": r.returncode, "wall_s": wall, "tail": tail, "reused": False,
               "git_commit": self.commit}
        self.say(f"{key}: exit {r.returncode} after {wall}s")
        if ok is not None and r.returncode not in ok:
            if out:
                record.write_text(json.dumps({"command": cmd, "status": "failed", "rc": r.returncode}))
            raise Failed(f"{key}: exit {r.returncode} after {wall}s; `{shown(argv)}`; "
                         f"log {log}:\n{tail}")
        if out:
            record.write_text(json.dumps({**res, "status": "finished", "finished_at": time.time()}))
        return res

    def _changed_inputs(self, argv: list[str], out: Path, finished_at) -> Path | None:
        """The first input of argv (a path under the runs folder, not the output) modified
        after `finished_at` (every input counts as changed when the record has no time)."""
        runs = self.runs.resolve()
        for a in argv:
            for v in {a, a.partition("=")[2]} - {""}:
                p = (ROOT / v) if not os.path.isabs(v) else Path(v)
                try:
                    p = p.resolve()
                    inside = p.is_relative_to(runs) and p != out.resolve() and p.exists()
                except (OSError, ValueError):
                    continue
                if inside and (finished_at is None or _newest_mtime(p) > finished_at):
                    return p
        return None


def _newest_mtime(p: Path) -> float:
    if not p.is_dir():
        return p.stat().st_mtime
    newest = p.stat().st_mtime
    for d, _, files in os.walk(p):
        for f in files:
            try:
                newest = max(newest, os.stat(os.path.join(d, f)).st_mtime)
            except OSError:
                pass
    return newest


def git_commit() -> str | None:
    from nested_jax.git_info import git_commit as head

    commit = head()
    return None if commit == "unknown" else commit
