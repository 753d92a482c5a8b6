"""`report`: a markdown table comparing eval runs (one column per JSON file)."""

from __future__ import annotations

import json
import os

from nested_jax.eval.errors import EvalError


def _zeroshot(m: dict) -> dict:
    out = {}
    for task, r in m["tasks"].items():
        out[f"{task} acc"] = r["acc"]
        out[f"{task} acc_norm"] = r["acc_norm"]
        if "memorized" in r:
            out[f"{task} acc (memorised)"] = r["memorized"]["acc"]
            out[f"{task} acc_norm (memorised)"] = r["memorized"]["acc_norm"]
    for k, v in m["mean"].items():
        out[f"mean {k}"] = v
    return out


def _needle(m: dict) -> dict:
    out = {"greedy exact match": m["overall_greedy_acc"], "key ranked first": m["overall_rank_acc"]}
    for k in ("greedy_acc", "rank_acc"):
        if f"overall_memorized_{k}" in m:
            out[f"{k} (memorised)"] = m[f"overall_memorized_{k}"]
    for L, r in m["by_length"].items():
        out[f"len {L} greedy"] = r["greedy_acc"]
        out[f"len {L} ranked"] = r["rank_acc"]
    return out


def _continual(m: dict) -> dict:
    out = {}
    if "ce_matrix" in m:
        for j, d in enumerate(m["domains"]):
            out[f"{d} CE initial"] = m["ce_matrix"][0][j]
            out[f"{d} CE final"] = m["ce_matrix"][-1][j]
            f = m["forgetting"][d]
            if "ce_forgetting" in f:
                out[f"{d} CE forgetting"] = f["ce_forgetting"]
    else:
        for d, ys in m["ce"].items():
            for e, y in zip(m["checkpoints"], ys):
                out[f"{d} CE @ step {e['step']}"] = y
    return out


EXTRACT = {"zeroshot": _zeroshot, "niah": _needle, "passkey": _needle, "continual": _continual}


def summarize(doc: dict) -> dict:
    """Flat {metric name: number} of one run."""
    fn = EXTRACT.get(doc.get("command"))
    if fn is None:
        raise EvalError(f"cannot summarise command {doc.get('command')!r}; known: {sorted(EXTRACT)}.")
    return fn(doc["metrics"])


def load_runs(paths: list[str]) -> list[tuple[str, dict]]:
    runs = []
    for p in paths:
        try:
            with open(p) as f:
                doc = json.load(f)
        except (OSError, ValueError) as e:
            raise EvalError(f"cannot read eval result {p!r} ({type(e).__name__}: {e}). Fix: pass "
                            "JSON files written by `python -m nested_jax.eval <command>`.") from None
        if "metrics" not in doc or "command" not in doc:
            raise EvalError(f"{p!r} is not an eval result (no 'command'/'metrics'). Fix: pass JSON "
                            "files written by `python -m nested_jax.eval <command>`.")
        runs.append((os.path.splitext(os.path.basename(p))[0], doc))
    return runs


def _fmt(v) -> str:
    if v is None:
        return "–"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def markdown(runs: list[tuple[str, dict]]) -> str:
    """One table per command: rows are metrics, columns are runs."""
    lines = ["# Eval comparison", ""]
    by_cmd: dict = {}
    for name, doc in runs:
        by_cmd.setdefault(doc["command"], []).append((name, doc))
    for cmd, group in by_cmd.items():
        cols = [n for n, _ in group]
        sums = [summarize(d) for _, d in group]
        keys: list = []
        for s in sums:
            keys.extend(k for k in s if k not in keys)
        lines += [f"## {cmd}", ""]
        lines.append("| metric | " + " | ".join(cols) + " |")
        lines.append("|---|" + "---|" * len(cols))
        info = [("variant", lambda d: d.get("config", {}).get("variant")),
                ("step", lambda d: d.get("checkpoint", {}).get("step"))]
        for label, get in info:
            lines.append(f"| {label} | " + " | ".join(_fmt(get(d)) for _, d in group) + " |")
        for k in keys:
            lines.append(f"| {k} | " + " | ".join(_fmt(s.get(k)) for s in sums) + " |")
        lines.append("")
    return "\n".join(lines)
