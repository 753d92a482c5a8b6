"""What every section of the experiments report (report.py) is written with: the Study (one
study.json and the files it names, each number's source labelled), the Section being
written, number and table formatting, and the helpers more than one section uses.
"""

from __future__ import annotations

import json
import math
import os
import statistics

from nested_jax.train.metrics import read_metrics


class ReportError(Exception):
    """Bad input: one line, exit status 2."""


def _read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


class Study:
    """One study.json with helpers to reach its files."""

    def __init__(self, path: str, doc: dict, out_dir: str):
        self.path, self.doc, self.out_dir = path, doc, out_dir
        self.dir = os.path.dirname(os.path.abspath(path))
        self.tag = doc.get("tag") or doc["study"]
        self.sources: list[tuple[str, str, str]] = []  # (label, path rel to output, command)
        self._labels: dict = {}
        self._evals: dict = {}

    # -- sources -----------------------------------------------------------------------------

    def rel(self, p: str) -> str:
        return os.path.relpath(os.path.join(self.dir, p), self.out_dir)

    def source(self, kind: str, relpath: str, command: str) -> str:
        key = (relpath, command)
        if key not in self._labels:
            n = sum(1 for s in self.sources if s[0].startswith(kind)) + 1
            self._labels[key] = f"{kind}{n}"
            self.sources.append((self._labels[key], relpath, command))
        return self._labels[key]

    # -- evals ---------------------------------------------------------------------------------

    def eval_doc(self, key: str):
        """(eval JSON doc, source label) or (None, '')."""
        rec = self.doc.get("evals", {}).get(key)
        if not rec or "json" not in rec:
            return None, ""
        if key not in self._evals:
            self._evals[key] = _read_json(os.path.join(self.dir, rec["json"]))
        d = self._evals[key]
        if d is None:
            return None, ""
        return d, self.source("E", self.rel(rec["json"]), d.get("command_line", rec.get("command", "")))

    def metrics(self, key: str):
        d, lab = self.eval_doc(key)
        return (d or {}).get("metrics"), lab

    # -- training runs ---------------------------------------------------------------------------

    def run(self, name: str) -> dict | None:
        """Numbers of one training run from its copied summary/metrics/config files."""
        rec = self.doc.get("runs", {}).get(name)
        if not rec:
            return None
        files = rec.get("files", {})
        summ = _read_json(os.path.join(self.dir, files["summary"])) if "summary" in files else None
        mets = read_metrics(os.path.join(self.dir, files["metrics"])) if "metrics" in files else []
        cfg = _read_json(os.path.join(self.dir, files["config"])) if "config" in files else None
        label = ""
        if "summary" in files or "metrics" in files:
            label = self.source("T", self.rel(files.get("summary") or files["metrics"]),
                                rec.get("command", ""))
        train = [m for m in mets if "loss" in m]
        evals = [m for m in mets if "eval_loss" in m]
        tps = [m["tokens_per_sec"] for m in train[1:] if m.get("tokens_per_sec")]
        if not tps:
            tps = [m["tokens_per_sec"] for m in train if m.get("tokens_per_sec")]
        diverged = bool(rec.get("diverged"))
        if diverged:  # stopped on non-finite steps: no summary; the last eval is not final
            summ = None
            evals = [m for m in evals if train and m["step"] >= train[-1]["step"]]
        out = {"name": name, "label": label, "record": rec, "summary": summ or {}, "config": cfg or {},
               "diverged": diverged,
               "train": train, "evals": evals,
               "final_loss": train[-1]["loss"] if train else (summ or {}).get("loss"),
               "final_step": (summ or {}).get("final_step", train[-1]["step"] if train else None),
               "eval_loss": (summ or {}).get("eval_loss", evals[-1]["eval_loss"] if evals else None),
               "ln_vocab": (summ or {}).get("ln_vocab"),
               "tokens_per_sec": statistics.median(tps) if tps else (summ or {}).get("tokens_per_sec"),
               "nonfinite": max([m.get("nonfinite_skipped", 0) or 0 for m in train], default=0),
               "max_grad_norm": max([m["grad_norm"] for m in train if "grad_norm" in m
                                     and _finite(m["grad_norm"])], default=None),
               "min_loss": min([m["loss"] for m in train if _finite(m["loss"])], default=None),
               "wall_s": rec.get("wall_s"), "n_params": rec.get("n_params")}
        t = (cfg or {}).get("train", {})
        if t.get("batch_size") and t.get("seq_len") and out["final_step"] is not None:
            out["tokens"] = int(out["final_step"]) * int(t["batch_size"]) * int(t["seq_len"])
        else:
            out["tokens"] = None
        return out

    # -- header ------------------------------------------------------------------------------------

    def machine_line(self) -> str:
        m = self.doc.get("machine", {})
        parts = []
        if m.get("gpus"):
            parts.append("GPU: " + ", ".join(m["gpus"]))
        elif m.get("backend") == "gpu" and m.get("device_kind"):
            parts.append(f"GPU: {m['device_kind']}")
        parts.append(f"CPU: {m.get('cpu_model', 'unknown')} ({m.get('cpu_count', '?')} cores)")
        if m.get("backend"):
            parts.append(f"JAX backend {m['backend']}, {len(m.get('devices', []))} device(s), "
                         f"jax {m.get('jax', '?')}")
        if m.get("load_avg"):
            end = m.get("load_avg_end")
            parts.append("load average " + "/".join(str(x) for x in m["load_avg"])
                         + (" at start, " + "/".join(str(x) for x in end) + " at end" if end else ""))
        return "; ".join(parts)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _f(x, nd=4) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if not math.isfinite(x):
            return str(x)
        return f"{x:.{nd}f}"
    return str(x)


def _signed(x, nd=4) -> str:
    return "–" if x is None else f"{x:+.{nd}f}"


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        out.append("| " + " | ".join(str(c) for c in r) + " |")
    return out + [""]


def _srcs(*labels) -> str:
    return ", ".join(lab for lab in labels if lab) or "–"


class Section:
    def __init__(self, st: Study, fig_dir: str):
        self.st, self.fig_dir = st, fig_dir
        self.lines: list[str] = []
        self.figures: list[str] = []

    def fig(self, name: str) -> tuple[str, str]:
        """(absolute path to write, path relative to the markdown)."""
        fname = f"{self.st.tag}_{name}.png"
        p = os.path.join(self.fig_dir, fname)
        self.figures.append(p)
        return p, os.path.relpath(p, self.st.out_dir)

    def image(self, name: str, caption: str, draw) -> None:
        p, r = self.fig(name)
        draw(p)
        if os.path.exists(p):
            self.lines += [f"![{caption}]({r})", "", f"*{caption}* (`{r}`)", ""]

    def add(self, *lines) -> None:
        self.lines.extend(lines)


def _final_ce(curve) -> dict:
    if not curve:
        return {}
    return {d: ys[-1] for d, ys in curve.get("ce", {}).items() if ys}


def _variant_order(st: Study) -> list[str]:
    pm = st.doc.get("param_matching", {}).get("variants", {})
    names = list(pm) or [n for n in st.doc.get("runs", {})]
    return [n for n in names if n in st.doc.get("runs", {})]


def _eval_headline(doc: dict) -> str:
    cmd, m = doc.get("command"), doc.get("metrics") or {}
    if cmd == "zeroshot":
        s = f"mean acc {_f(m['mean'].get('acc'), 3)} over {len(m['tasks'])} tasks"
        if "memorized_acc" in m["mean"]:
            s += f"; memorised {_f(m['mean']['memorized_acc'], 3)}"
        return s
    if cmd in ("niah", "passkey"):
        s = (f"greedy {_f(m.get('overall_greedy_acc'), 3)}, key ranked first "
             f"{_f(m.get('overall_rank_acc'), 3)} (lengths {m.get('lengths')})")
        if "overall_memorized_rank_acc" in m:
            s += f"; memorised: greedy {_f(m['overall_memorized_greedy_acc'], 3)}, ranked " \
                 f"{_f(m['overall_memorized_rank_acc'], 3)}"
        return s
    if cmd == "continual":
        if "ce_matrix" in m:
            fg = [v.get("ce_forgetting") for v in m.get("forgetting", {}).values()
                  if v.get("ce_forgetting") is not None]
            return (f"sequential {' → '.join(m['phases'])}: final CE "
                    + ", ".join(f"{d} {_f(c, 3)}" for d, c in zip(m["domains"], m["ce_matrix"][-1]))
                    + (f"; mean forgetting {_signed(sum(fg) / len(fg), 3)}" if fg else ""))
        ce = _final_ce(m)
        return f"{len(m.get('checkpoints', []))} checkpoints; final CE " + ", ".join(
            f"{d} {_f(c, 3)}" for d, c in ce.items())
    return "–"
