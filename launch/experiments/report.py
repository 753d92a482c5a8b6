"""RESULTS.md and PNG figures from the experiment studies' JSON (launch/experiments).

    python launch/experiments/report.py [DIR] [--output FILE]   # DIR: launch/experiments

Input: every `study.json` under DIR (written by launch/experiments/study.py), with the files
it names next to it: eval JSON copies (`evals/*.json`, written by `python -m nested_jax.eval`)
and training records (`train/<run>/{metrics.jsonl,summary.json,config.json}`). Output:
`DIR/RESULTS.md` (or --output) and `figures/*.png` next to it. Every number in the markdown is
read from one of those files; every table row names its sources (E1, T1, ...), listed under
the section with the JSON path and the command that produced it. No number is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys

from nested_jax.train.metrics import read_metrics


class ReportError(Exception):
    """Bad input: one line, exit status 2."""


STUDY_ORDER = ("hope_vs_titans", "teach_scale_sweep", "multi_device_smoke", "memorisation_pilot",
               "pilot_release", "continual_pretraining")
PRESET_ORDER = ("cpu", "gpu", "tiny")
DOMAINS = ("novels", "wikipedia", "math", "code")


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def find_studies(root: str) -> list[tuple[str, dict]]:
    """[(study.json path, doc)] under root, in STUDY_ORDER then preset order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if "study.json" in filenames:
            p = os.path.join(dirpath, "study.json")
            try:
                with open(p) as f:
                    doc = json.load(f)
            except (OSError, ValueError) as e:
                raise ReportError(f"cannot read {p!r} ({type(e).__name__}: {e}).") from None
            if "study" not in doc:
                raise ReportError(f"{p!r} has no 'study' field; it is not a study summary written "
                                "by launch/experiments/study.py.")
            found.append((p, doc))

    def key(item):
        doc = item[1]
        s = doc["study"]
        pr = doc.get("preset", "cpu")
        return (STUDY_ORDER.index(s) if s in STUDY_ORDER else len(STUDY_ORDER), s,
                PRESET_ORDER.index(pr) if pr in PRESET_ORDER else len(PRESET_ORDER), pr)

    return sorted(found, key=key)


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


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)


def plot_loss_curves(runs: list[dict], path: str, title: str, ln_vocab=None) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in runs:
        xs = [m["step"] for m in r["train"] if _finite(m.get("loss"))]
        ys = [m["loss"] for m in r["train"] if _finite(m.get("loss"))]
        line, = ax.plot(xs, ys, label=f"{r['name']} (train)")
        ex = [m["step"] for m in r["evals"]]
        ey = [m["eval_loss"] for m in r["evals"]]
        if ex:
            ax.plot(ex, ey, "o--", color=line.get_color(), ms=4, label=f"{r['name']} (held-out)")
    if ln_vocab:
        ax.axhline(ln_vocab, color="gray", lw=0.8, ls=":", label="ln V (uniform)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_domain_curves(curves: dict, path: str, title: str) -> None:
    """curves: {variant: continual forgetting-curve metrics}."""
    plt = _plt()
    doms = []
    for m in curves.values():
        doms.extend(d for d in m.get("ce", {}) if d not in doms)
    if not doms:
        return
    fig, axes = plt.subplots(1, len(doms), figsize=(3.2 * len(doms), 3.2), squeeze=False)
    for ax, d in zip(axes[0], doms):
        for v, m in curves.items():
            steps = [e["step"] for e in m.get("checkpoints", [])]
            ys = m.get("ce", {}).get(d)
            if ys:
                ax.plot(steps, ys, "o-", ms=3, label=v)
        ax.set_title(d)
        ax.set_xlabel("checkpoint step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("held-out CE (nats/token)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def plot_matrices(mats: dict, path: str, title: str) -> None:
    """mats: {variant: sequential metrics} → one CE heatmap per variant."""
    plt = _plt()
    items = [(v, m) for v, m in mats.items() if m and m.get("ce_matrix")]
    if not items:
        return
    fig, axes = plt.subplots(1, len(items), figsize=(3.8 * len(items), 3.4), squeeze=False)
    for ax, (v, m) in zip(axes[0], items):
        ce = m["ce_matrix"]
        im = ax.imshow(ce, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(m["domains"])), m["domains"], rotation=30, fontsize=7)
        ax.set_yticks(range(len(m["rows"])),
                      [r if r == "initial" else f"after {r}" for r in m["rows"]], fontsize=7)
        for i, row in enumerate(ce):
            for j, val in enumerate(row):
                ax.text(j, i, f"{val:.2f}", ha="center", va="center", fontsize=6, color="w")
        ax.set_title(v, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def plot_bars(groups: list[str], series: dict, path: str, title: str, ylabel: str) -> None:
    """series: {name: [value per group]} → grouped bars."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(groups) + 2), 3.6))
    n = max(1, len(series))
    w = 0.8 / n
    for i, (name, vals) in enumerate(series.items()):
        xs = [g + (i - (n - 1) / 2) * w for g in range(len(groups))]
        ax.bar(xs, [0 if v is None else v for v in vals], width=w, label=name)
    ax.set_xticks(range(len(groups)), groups, rotation=20, fontsize=8)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    _save(fig, path)


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------


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


def _reproduce(script: str) -> str:
    """The study's command line without the flags that only control reuse and reporting."""
    return " ".join(w for w in script.split() if w not in ("--force", "--no-report"))


def _time_note(d: dict) -> str:
    """Sum of the recorded command times, and how many steps this invocation reused."""
    recs = [*d.get("runs", {}).values(), *d.get("evals", {}).values(), *d.get("checks", {}).values()]
    total = sum(r.get("wall_s") or 0 for r in recs)
    reused = sum(1 for r in recs if r.get("reused"))
    out = f"; the recorded commands took {_f(total, 0)} s in total"
    if reused:
        out += f" ({reused} of {len(recs)} reused from an earlier invocation with the same command)"
    return out


def _header(sec: Section) -> None:
    st, d = sec.st, sec.st.doc
    title = d.get("title") or d["study"]
    sec.add(f"## {d['study']} ({d.get('preset', 'cpu')} preset)", "", f"**{title}**", "")
    git = d.get("git", {})
    head = git.get("commit") or ""
    other = sorted({(r.get("git_commit") or "unknown")[:12] for r in d.get("runs", {}).values()
                    if r.get("reused") and r.get("git_commit") != head})
    sec.add(f"- Machine: {st.machine_line()}",
            f"- Date: {d.get('started', '?')} → {d.get('finished', '?')}; wall time "
            f"{_f(d.get('wall_s'), 0)} s" + _time_note(d),
            f"- Code: commit `{(git.get('commit') or 'unknown')[:12]}`"
            + (f" (+{git['dirty_files']} uncommitted tracked files)" if git.get("dirty_files") else "")
            + (f"; reused training runs from commit(s) {', '.join(other)}" if other else ""),
            f"- Reproduce: `{_reproduce(d.get('script', ''))}`",
            f"- Preset: {_preset_line(d)}",
            f"- Study record: [`{st.rel('study.json')}`]({st.rel('study.json')})")
    if d.get("failed"):
        msg = d["failed"].splitlines()[0].replace("`", "'")
        sec.add(f"- **Incomplete: the study stopped with an error:** "
                f"{msg[:300] + ('…' if len(msg) > 300 else '')}")
    elif not d.get("complete"):
        sec.add("- **Incomplete: the study did not finish (no `complete` flag).**")
    sec.add("")


PRESET_KEYS = (("model.variant", "variant"), ("model.d_model", "width"), ("model.n_layers", "layers"),
               ("model.n_heads", "heads"), ("data.tokenizer", "tokenizer"),
               ("train.seq_len", "sequence"), ("train.batch_size", "batch"),
               ("train.steps", "steps"), ("optim.name", "optimizer"), ("optim.lr", "lr"),
               ("model.dtype", "dtype"))


def _preset_line(d: dict) -> str:
    """The model preset (base config + the overrides shared by the study's runs)."""
    mp = d.get("model_preset") or {}
    ov = mp.get("overrides", {})
    parts = [f"{label} {ov[k]}" for k, label in PRESET_KEYS if k in ov]
    return f"`{mp.get('config', '?')}`" + (" with " + ", ".join(parts) if parts else "") + \
        " (full flags per run in the sources below)"


def _sources(sec: Section) -> None:
    if not sec.st.sources:
        return
    sec.add("<details><summary>Sources (JSON file ← command)</summary>", "")
    for lab, path, cmd in sec.st.sources:
        sec.add(f"- **{lab}** [`{path}`]({path}) ← `{cmd}`")
    sec.add("", "</details>", "")


def _needle(m) -> tuple:
    if not m:
        return (None, None, None)
    chance = 1.0 / (1 + m["distractors"]) if m.get("distractors") is not None else None
    return (m.get("overall_greedy_acc"), m.get("overall_rank_acc"), chance)


def _final_ce(curve) -> dict:
    if not curve:
        return {}
    return {d: ys[-1] for d, ys in curve.get("ce", {}).items() if ys}


def _variant_order(st: Study) -> list[str]:
    pm = st.doc.get("param_matching", {}).get("variants", {})
    names = list(pm) or [n for n in st.doc.get("runs", {})]
    return [n for n in names if n in st.doc.get("runs", {})]


def section_hope_vs_titans(sec: Section) -> None:
    st = sec.st
    names = _variant_order(st)
    pm = st.doc.get("param_matching", {})
    runs = [st.run(n) for n in names]
    runs = [r for r in runs if r]
    sec.add("### Training (same data order, seed, steps, batch and sequence length)", "")
    rows = []
    for r in runs:
        info = pm.get("variants", {}).get(r["name"], {})
        zs, _ = st.eval_doc(f"{r['name']}_zeroshot")
        n_params = ((zs or {}).get("config") or {}).get("n_params") or info.get("params")
        rows.append([r["name"], _f(n_params), _f(info.get("d_ff")), _f(r["tokens"]),
                     _f(r["final_loss"]), _f(r["eval_loss"]), _f(r["ln_vocab"]),
                     _f(r["tokens_per_sec"], 0), _f(r["wall_s"], 0), r["label"]])
    sec.add(*_table(["model", "params", "d_ff", "tokens seen", "final train loss",
                     "held-out loss (novels valid)", "ln V", "train tokens/s", "train wall s",
                     "src"], rows))
    if pm:
        sec.add("Parameter matching: the baselines' SwiGLU width `d_ff` is the multiple of 64 "
                "whose parameter count is closest to HOPE's (counted with `jax.eval_shape`); "
                "ratio to HOPE: " + ", ".join(f"{v} {_f(i.get('ratio_to_hope'), 3)}"
                                              for v, i in pm.get("variants", {}).items()) + ".", "")
    learned = [(r["name"], r["eval_loss"], r["ln_vocab"]) for r in runs
               if r["eval_loss"] is not None and r["ln_vocab"]]
    ranked = sorted((e, n) for n, e, _ in learned)
    if len(ranked) > 1:
        sec.add("Held-out loss at the end of training, lowest first: "
                + " < ".join(f"{n} {_f(e)}" for e, n in ranked) + ".", "")
    if learned:
        sec.add("Every model learned? " + "; ".join(
            f"{n}: held-out {_f(e)} vs ln V {_f(v)} ({_f(v - e, 2)} nats below)"
            for n, e, v in learned) + ".", "")

    # held-out CE per domain (final checkpoint) from the forgetting-curve command
    curves, rows = {}, []
    for r in runs:
        m, lab = st.metrics(f"{r['name']}_curve")
        if not m:
            continue
        curves[r["name"]] = m
        ce = _final_ce(m)
        step = m["checkpoints"][-1]["step"] if m.get("checkpoints") else None
        rows.append([r["name"], _f(step)] + [
            f"{_f(ce.get(d), 3)} ({_f(math.exp(ce[d]), 1) if d in ce else '–'})" for d in DOMAINS]
            + [lab])
    if rows:
        sec.add("### Held-out cross-entropy per domain, final checkpoint: CE (perplexity)", "")
        sec.add(*_table(["model", "step"] + list(DOMAINS) + ["src"], rows))
        ranking = {}
        for d in DOMAINS:
            vals = sorted((ce[d], v) for v, ce in ((v, _final_ce(m)) for v, m in curves.items())
                          if d in ce)
            if vals:
                ranking[d] = vals
        if ranking:
            sec.add("Ranking (lowest CE first): " + "; ".join(
                f"{d}: " + " < ".join(f"{v} {_f(c, 3)}" for c, v in vals)
                for d, vals in ranking.items()) + ".", "")
            hope_first = [d for d, vals in ranking.items() if vals[0][1].startswith("hope")]
            hope_in = [d for d, vals in ranking.items() if any(v.startswith("hope") for _, v in vals)]
            if hope_in:
                sec.add(f"HOPE has the lowest CE on {len(hope_first)} of {len(hope_in)} domains"
                        + (f" ({', '.join(hope_first)})" if hope_first else "")
                        + ("; it loses on " + ", ".join(d for d in hope_in if d not in hope_first)
                           if len(hope_first) < len(hope_in) else "") + ".", "")
        sec.image("domain_ce", "Held-out CE per domain at every saved checkpoint",
                  lambda p: plot_domain_curves(curves, p, "held-out CE per domain"))
    sec.image("loss", "Training loss and held-out loss",
              lambda p: plot_loss_curves(runs, p, "training loss",
                                         runs[0]["ln_vocab"] if runs else None))

    # zero-shot
    zs = {r["name"]: st.metrics(f"{r['name']}_zeroshot") for r in runs}
    zs = {k: v for k, v in zs.items() if v[0]}
    if zs:
        tasks = []
        for m, _ in zs.values():
            tasks.extend(t for t in m["tasks"] if t not in tasks)
        sec.add("### Zero-shot accuracy (`acc`; items per task in parentheses)", "")
        rows = []
        for t in tasks:
            n = next((m["tasks"][t]["n"] for m, _ in zs.values() if t in m["tasks"]), None)
            rows.append([f"{t} ({n})"] + [_f(m["tasks"].get(t, {}).get("acc"), 3) for m, _ in zs.values()])
        rows.append(["**mean acc**"] + [f"**{_f(m['mean'].get('acc'), 3)}**" for m, _ in zs.values()])
        rows.append(["mean acc_norm"] + [_f(m["mean"].get("acc_norm"), 3) for m, _ in zs.values()])
        rows.append(["src"] + [lab for _, lab in zs.values()])
        sec.add(*_table(["task"] + list(zs), rows))
        stderr = [m["tasks"][t]["acc_stderr"] for m, _ in zs.values() for t in m["tasks"]
                  if m["tasks"][t].get("acc_stderr") is not None]
        if stderr:
            sec.add(f"Per-task standard errors are {_f(min(stderr), 3)}–{_f(max(stderr), 3)} "
                    "(from the JSON): differences smaller than that are noise.", "")

    # passkey / niah
    rows = []
    for r in runs:
        pk, lp = st.metrics(f"{r['name']}_passkey")
        nh, ln = st.metrics(f"{r['name']}_niah")
        if not (pk or nh):
            continue
        g1, r1, c1 = _needle(pk)
        g2, r2, c2 = _needle(nh)
        rows.append([r["name"], _f(g1, 3), _f(r1, 3), _f(g2, 3), _f(r2, 3), _f(c1 or c2, 3),
                     _srcs(lp, ln)])
    if rows:
        pk0 = next((st.metrics(f"{r['name']}_passkey")[0] for r in runs
                    if st.metrics(f"{r['name']}_passkey")[0]), None)
        nh0 = next((st.metrics(f"{r['name']}_niah")[0] for r in runs
                    if st.metrics(f"{r['name']}_niah")[0]), None)
        desc = []
        if pk0:
            desc.append(f"passkey lengths {pk0['lengths']}, depths {pk0['depths']}, "
                        f"{pk0['samples_per_cell']} per cell")
        if nh0:
            desc.append(f"NIAH lengths {nh0['lengths']}, depths {nh0['depths']}, "
                        f"{nh0['samples_per_cell']} per cell")
        sec.add("### Passkey and needle-in-a-haystack (" + "; ".join(desc) + ")", "")
        sec.add(*_table(["model", "passkey greedy", "passkey key ranked first", "NIAH greedy",
                         "NIAH key ranked first", "ranking chance", "src"], rows))

    # continual matrix
    mats, rows = {}, []
    for r in runs:
        m, lab = st.metrics(f"{r['name']}_sequential")
        if not m:
            continue
        mats[r["name"]] = m
        fg = m.get("forgetting", {})
        vals = [fg.get(d, {}).get("ce_forgetting") for d in m["domains"]]
        fin = [v for v in vals if v is not None]
        rows.append([r["name"]] + [_signed(v, 3) for v in vals]
                    + [_signed(sum(fin) / len(fin), 3) if fin else "–", lab])
        doms = m["domains"]
    if rows:
        m0 = next(iter(mats.values()))
        sec.add(f"### Continual learning: sequential training through {' → '.join(m0['phases'])}",
                "", "Forgetting = CE at the end − CE right after the domain's own phase "
                "(positive = forgot). Phases of "
                f"{(st.eval_doc(next(iter(mats)) + '_sequential')[0] or {}).get('settings', {}).get('steps_per_phase', '?')}"
                " AdamW steps.", "")
        sec.add(*_table(["model"] + [f"{d} forgetting" for d in doms] + ["mean", "src"], rows))
        means = sorted((float(r[-2]), r[0]) for r in rows if r[-2] != "–")
        if len(means) > 1:
            sec.add("Mean forgetting, least first: " + " < ".join(f"{n} {v:+.3f}" for v, n in means)
                    + ". The last phase's domain has 0 by definition.", "")
        sec.image("continual_matrix", "CE matrix: rows = after each phase, columns = domain scored",
                  lambda p: plot_matrices(mats, p, "sequential training CE matrix"))


def section_teach_sweep(sec: Section) -> None:
    st = sec.st
    sw = st.doc.get("sweep", {})
    rows_cfg = sw.get("rows") or [{"run": n} for n in st.doc.get("runs", {})]
    sched = sw.get("schedule", {})
    if sched:
        sec.add("Teach-scale schedule (the experiments report's 60/140/80 of 220 steps, scaled): "
                + ", ".join(f"`{k.split('.')[-1]}={v}`" for k, v in sched.items())
                + f"; variant `{sw.get('variant', '?')}`.", "")
    runs, rows, cache = [], [], {}
    for rc in rows_cfg:
        r = cache.get(rc["run"]) or st.run(rc["run"])
        cache[rc["run"]] = r
        if not r:
            continue
        runs.append((rc, r))
        o = r["config"].get("optim", {})
        lr = o.get("lr")
        lr_s = _f(lr, 4) + (f" (adam {_f(o['adam_lr'], 4)})" if o.get("name") == "muon"
                            and o.get("adam_lr") else "")
        peak = r["config"].get("model", {}).get("online", {}).get("teach_scale", rc.get("teach_scale"))
        tail = [m["loss"] for m in r["train"][-3:] if _finite(m.get("loss"))]
        name = rc["run"] + (f" (seed replicate of {rc['replicate_of']})" if rc.get("replicate_of") else "")
        rows.append([("↳ " if rc.get("optimizer_row") else "") + name,
                     o.get("name", rc.get("optimizer", "?")), lr_s, _f(peak, 2),
                     _f(r["final_loss"]), _f(sum(tail) / len(tail)) if tail else "–",
                     f"**diverged at step {r['final_step']}**" if r["diverged"] else _f(r["eval_loss"]),
                     _f(r["max_grad_norm"], 2), _f(r["nonfinite"]), _f(r["tokens_per_sec"], 0),
                     r["label"]])
    sec.add("### Final losses and stability", "")
    sec.add(*_table(["run", "optimizer", "lr", "peak teach scale", "final train loss",
                     "mean of last 3 logged", "held-out loss", "max grad norm",
                     "non-finite steps skipped", "tokens/s", "src"], rows))
    sweep = [(rc, r) for rc, r in runs if not rc.get("optimizer_row") or rc.get("optimizer") == "adamw"]
    sweep = [(rc, r) for rc, r in sweep if rc.get("optimizer", "adamw") == "adamw"
             and not rc.get("replicate_of")]
    seen, uniq = set(), []
    for rc, r in sweep:
        if r["name"] not in seen:
            seen.add(r["name"])
            uniq.append((rc, r))
    ctrl = next((r for rc, r in uniq if rc.get("teach_scale") == 0), None)
    if ctrl and ctrl["eval_loss"] is not None:
        parts = []
        for rc, r in uniq:
            if r is ctrl or r["eval_loss"] is None:
                continue
            parts.append(f"{_f(rc.get('teach_scale'), 2)}: {_signed(r['eval_loss'] - ctrl['eval_loss'])}")
        if parts:
            sec.add("Held-out loss minus the control (teach scale 0): " + ", ".join(parts)
                    + " (negative = the teach signal helped).", "")
        rep = next(((rc, r) for rc, r in runs if rc.get("replicate_of") == ctrl["name"]), None)
        if rep and rep[1]["eval_loss"] is not None:
            noise = abs(rep[1]["eval_loss"] - ctrl["eval_loss"])
            big = [_f(rc.get("teach_scale"), 2) for rc, r in uniq if r is not ctrl
                   and r["eval_loss"] is not None and abs(r["eval_loss"] - ctrl["eval_loss"]) > noise]
            sec.add(f"Noise floor: the control with another seed (seed replicate: init and data "
                    f"order) moves the held-out loss by |Δ held-out| = {_f(noise)}. Teach scales whose "
                    "difference from the control is larger than the seed-to-seed difference: "
                    + (", ".join(big) if big else "none") + ".", "")
        best = min((r for _, r in uniq if r["eval_loss"] is not None), key=lambda r: r["eval_loss"])
        sec.add(f"Best held-out loss in the sweep: `{best['name']}` ({_f(best['eval_loss'])}). "
                f"Non-finite steps across all runs: "
                f"{sum(r['nonfinite'] or 0 for r in cache.values() if r)}.", "")
    opt = [(rc, r) for rc, r in runs if rc.get("optimizer_row")]
    if opt:
        def lr(r):
            return _f(r["config"].get("optim", {}).get("lr"), 4)

        sec.add("Outer optimizers at teach scale " + _f(opt[0][0].get("teach_scale"), 2) + ": "
                + ", ".join(f"{rc['optimizer']} (lr {lr(r)}) "
                            + ("diverged" if r["diverged"] else _f(r["eval_loss"])) for rc, r in opt)
                + " (held-out loss; learning rates not tuned).", "")
    div = [r["name"] for r in cache.values() if r and r["diverged"]]
    if div:
        sec.add("Diverged (training stopped after `train.max_nonfinite_in_a_row` non-finite steps, "
                "exit status 3): " + ", ".join(f"`{n}`" for n in div) + ".", "")
    sec.image("loss", "Training loss per run (held-out loss dashed)",
              lambda p: plot_loss_curves([r for r in cache.values() if r], p, "teach-scale sweep",
                                         runs[0][1]["ln_vocab"] if runs else None))

    def draw_sched(p):
        plt = _plt()
        fig, ax = plt.subplots(figsize=(6, 3))
        for rc, r in runs:
            xs = [m["step"] for m in r["train"] if "teach_scale" in m]
            ys = [m["teach_scale"] for m in r["train"] if "teach_scale" in m]
            if xs and not rc.get("optimizer_row"):
                ax.plot(xs, ys, label=r["name"])
        ax.set_xlabel("step")
        ax.set_ylabel("teach scale (logged)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        _save(fig, p)

    if any("teach_scale" in m for _, r in runs for m in r["train"]):
        sec.image("schedule", "Teach scale as logged in metrics.jsonl", draw_sched)


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


def section_multi_device(sec: Section) -> None:
    st = sec.st
    d = st.doc
    if d.get("devices"):
        sec.add(f"Devices seen by the training run ({d.get('device_env') or 'all local devices'}): "
                + ", ".join(f"`{x}`" for x in d["devices"]), "")
    runs = [r for r in (st.run(n) for n in d.get("runs", {})) if r]
    rows = [[r["name"], r["record"].get("command", "").split(" python")[0] if r["record"].get(
        "command", "").startswith(("JAX", "XLA")) else "", _f(r["final_step"]), _f(r["final_loss"]),
        _f(r["eval_loss"]), _f(r["nonfinite"]), _f(r["tokens_per_sec"], 0), _f(r["wall_s"], 0),
        r["label"]] for r in runs]
    sec.add("### Training", "")
    sec.add(*_table(["run", "environment", "steps", "final train loss", "held-out loss",
                     "non-finite", "tokens/s", "wall s", "src"], rows))
    by = {r["name"]: r for r in runs}
    if "multi" in by and "single" in by and by["multi"]["eval_loss"] is not None \
            and by["single"]["eval_loss"] is not None:
        dl = abs(by["multi"]["final_loss"] - by["single"]["final_loss"])
        de = abs(by["multi"]["eval_loss"] - by["single"]["eval_loss"])
        one = {m["step"]: m["loss"] for m in by["single"]["train"]}
        diffs = [(m["step"], abs(m["loss"] - one[m["step"]])) for m in by["multi"]["train"]
                 if m["step"] in one and _finite(m["loss"]) and _finite(one[m["step"]])]
        grow = ""
        if len(diffs) >= 2:
            grow = (f" The train-loss gap is {diffs[0][1]:.2e} at step {diffs[0][0]} and "
                    f"{diffs[-1][1]:.2e} at step {diffs[-1][0]}: same algorithm, float32 "
                    "rounding (gradient all-reduce order) compounding over the steps.")
        sec.add(f"Multi-device vs one device on the same global batch: |Δ final train loss| = "
                f"{dl:.2e}, |Δ held-out loss| = {de:.2e}.{grow}", "")
    checks = d.get("checks", {})
    if checks:
        sec.add("### Checks", "")
        sec.add(*_table(["check", "exit status", "wall s", "command"],
                        [[c.get("what", k), c.get("rc"), _f(c.get("wall_s"), 1), f"`{c.get('command')}`"]
                         for k, c in checks.items()]))
    rows = []
    for k, rec in d.get("evals", {}).items():
        doc, lab = st.eval_doc(k)
        if not doc:
            continue
        rows.append([rec.get("label") or k, doc.get("command"), _eval_headline(doc),
                     _f(rec.get("wall_s"), 0), lab])
    if rows:
        sec.add("### Every evaluation on the multi-device checkpoint", "")
        sec.add(*_table(["evaluation", "command", "result", "wall s", "src"], rows))
    if runs:
        sec.image("loss", "Training loss: multi-device vs one device",
                  lambda p: plot_loss_curves(runs, p, "multi-device smoke", runs[0]["ln_vocab"]))


def _memo_numbers(doc: dict) -> dict:
    """Baseline vs memorised numbers of one --memorize eval JSON."""
    m = doc.get("metrics") or {}
    out = {"command": doc.get("command"), "applied": None, "updates": None, "note": None}
    rep = m.get("memorize") or {}
    if not rep and doc.get("command") == "zeroshot":
        reps = [t.get("memorize") for t in m.get("tasks", {}).values() if t.get("memorize")]
        if reps:
            rep = {"applied": any(r.get("applied") for r in reps),
                   "updates_total": sum(r.get("updates_total", 0) for r in reps),
                   "note": next((r.get("note") for r in reps if r.get("note")), None)}
    out["applied"] = rep.get("applied")
    out["updates"] = rep.get("updates_total")
    out["note"] = rep.get("note")
    if doc.get("command") == "zeroshot":
        tasks = m.get("tasks", {})
        out["base"] = m.get("mean", {}).get("acc")
        out["mem"] = m.get("mean", {}).get("memorized_acc")
        glp = [(t["gold_logprob"], t["memorized"]["gold_logprob"]) for t in tasks.values()
               if "memorized" in t and "gold_logprob" in t and "gold_logprob" in t["memorized"]]
        out["cont_base"] = sum(a for a, _ in glp) / len(glp) if glp else None
        out["cont_mem"] = sum(b for _, b in glp) / len(glp) if glp else None
        out["metric"], out["cont_metric"] = "mean acc", "mean gold log-prob"
    else:
        cells = m.get("cells", [])
        out["base"] = m.get("overall_rank_acc")
        out["mem"] = m.get("overall_memorized_rank_acc")
        mg = [(c["mean_margin"], c["memorized"]["mean_margin"]) for c in cells
              if "memorized" in c and "mean_margin" in c["memorized"]]
        out["cont_base"] = sum(a for a, _ in mg) / len(mg) if mg else None
        out["cont_mem"] = sum(b for _, b in mg) / len(mg) if mg else None
        out["greedy_base"] = m.get("overall_greedy_acc")
        out["greedy_mem"] = m.get("overall_memorized_greedy_acc")
        out["metric"], out["cont_metric"] = "key ranked first", "mean log-prob margin"
    return out


def section_memorisation(sec: Section) -> None:
    st = sec.st
    d = st.doc
    labels = {s["key"]: s["label"] for s in d.get("memo_settings", [])}
    rows, bars_zs, bars_pk, noop_notes = [], {}, {}, set()
    variants = _variant_order(st)
    run_rows = []
    pm = d.get("param_matching", {}).get("variants", {})
    for v in variants:
        r = st.run(v)
        if r:
            run_rows.append([v, _f(pm.get(v, {}).get("params")), _f(r["tokens"]), _f(r["eval_loss"]),
                             _f(r["ln_vocab"]), r["label"]])
    if run_rows:
        sec.add("### Checkpoints", "")
        sec.add(*_table(["model", "params", "tokens seen", "held-out loss", "ln V", "src"], run_rows))
    for v in variants:
        for key, lab in labels.items():
            for ev in ("zeroshot", "passkey"):
                doc, src = st.eval_doc(f"{v}_{ev}_{key}")
                if not doc:
                    continue
                n = _memo_numbers(doc)
                dc = (n["cont_mem"] - n["cont_base"]) if n["cont_mem"] is not None and \
                    n["cont_base"] is not None else None
                da = (n["mem"] - n["base"]) if n["mem"] is not None and n["base"] is not None else None
                note = "applied" if n["applied"] else ("no-op" if n["applied"] is False else "–")
                if n["applied"] is False and n["note"]:
                    noop_notes.add(n["note"])
                rows.append([v, ev, lab, n["metric"], _f(n["base"], 3), _f(n["mem"], 3),
                             _signed(da, 3), n["cont_metric"], _f(n["cont_base"], 3),
                             _f(n["cont_mem"], 3), _signed(dc, 4), _f(n["updates"], 1), note, src])
                target = bars_zs if ev == "zeroshot" else bars_pk
                target.setdefault(v, {})[lab] = dc
    if rows:
        sec.add("### Baseline vs memorised (each `--memorize` run scores both)", "")
        sec.add(*_table(["model", "eval", "memorise", "metric", "baseline", "memorised", "Δ",
                         "continuous metric", "baseline", "memorised", "Δ", "CMS level updates",
                         "memorisation", "src"], rows))
        hope = [r for r in rows if r[0].startswith("hope")]
        if hope:
            moved = [r for r in hope if r[10] not in ("–", "+0.0000", "-0.0000")]
            sec.add(f"HOPE: {len(moved)} of {len(hope)} memorisation settings change the continuous "
                    "score at 4 decimals; accuracy deltas: "
                    + ", ".join(f"{r[1]} / {r[2]} {r[6]}" for r in hope) + ".", "")
            best = max((r for r in hope if r[10] != "–"), key=lambda r: float(r[10]), default=None)
            if best:
                sec.add(f"Largest continuous gain: {best[1]} with {best[2]} ({best[7]} {best[10]}; "
                        f"{best[3]} {best[4]} → {best[5]}). Memorising the answer along with the "
                        "prompt leaks it into the fast state, so those rows measure recall of "
                        "what was written, not generalisation.", "")
        noop = [r for r in rows if r[12].startswith("no-op")]
        if noop:
            sec.add("Transformer++ and Titans have no CMS fast state: `--memorize` is a no-op for "
                    "them, and the JSON says so (" + ", ".join(sorted({r[0] for r in noop}))
                    + "; memorised = baseline). Their notes: "
                    + " / ".join(f"\"{x}\"" for x in sorted(noop_notes)) + ".", "")
        groups = list(labels.values())
        for name, bars, ylabel in (("zeroshot", bars_zs, "Δ mean gold log-prob"),
                                   ("passkey", bars_pk, "Δ mean log-prob margin")):
            if bars:
                series = {v: [b.get(g) for g in groups] for v, b in bars.items()}
                sec.image(f"{name}_delta", f"{name}: memorised − baseline ({ylabel})",
                          lambda p, s=series, y=ylabel, nm=name: plot_bars(
                              groups, s, p, f"{nm}: effect of test-time memorisation", y))


def section_release(sec: Section) -> None:
    st = sec.st
    d = st.doc
    r = st.run("pilot")
    if r:
        sec.add("### Checkpoint", "")
        sec.add(*_table(["run", "variant", "steps", "tokens seen", "final train loss", "held-out loss",
                         "ln V", "tokens/s", "src"],
                        [[("given: " if r["record"].get("given") else "") + r["record"].get("workdir", ""),
                          r["config"].get("model", {}).get("variant", "–"), _f(r["final_step"]),
                          _f(r["tokens"]), _f(r["final_loss"]), _f(r["eval_loss"]), _f(r["ln_vocab"]),
                          _f(r["tokens_per_sec"], 0), r["label"]]]))
    rows = []
    for k, rec in d.get("evals", {}).items():
        doc, lab = st.eval_doc(k)
        if doc:
            rows.append([rec.get("label") or k, _eval_headline(doc), _f(rec.get("wall_s"), 0), lab])
    if rows:
        sec.add("### Evaluations bundled with the release", "")
        sec.add(*_table(["evaluation", "result", "wall s", "src"], rows))
    rel_info = d.get("release", {})
    rj = None
    if rel_info.get("copied", {}).get("release"):
        rj = _read_json(os.path.join(st.dir, rel_info["copied"]["release"]))
        lab = st.source("R", st.rel(rel_info["copied"]["release"]),
                        d.get("checks", {}).get("release_build", {}).get("command", ""))
        if rj:
            keep = {k: v for k, v in rj.items() if not isinstance(v, (dict, list))}
            sec.add(f"### Release bundle ({_f(rel_info.get('files'))} files, "
                    f"{_f(rel_info.get('bytes'))} bytes; `{lab}`)", "")
            sec.add(*_table(["field", "value"], [[k, f"`{v}`"] for k, v in keep.items()]))
    checks = d.get("checks", {})
    if checks:
        sec.add("### Build and verify", "")
        rows = []
        for k, c in checks.items():
            want_fail = "tampered" in k
            ok = (c.get("rc") != 0) if want_fail else (c.get("rc") == 0)
            rows.append([c.get("what", k), c.get("rc"), "expected non-zero" if want_fail else "expected 0",
                         "ok" if ok else "**unexpected**", f"`{c.get('command')}`"])
        sec.add(*_table(["step", "exit status", "expectation", "verdict", "command"], rows))


CPT_SAME = 0.05  # nats/token: differences below this are called "the same" (one seed)


def cpt_numbers(st: Study) -> dict:
    """Per method of the continual-pretraining study: its CE matrix (rows: the model before
    the phases, then after each; columns: domains), forgetting, bits per byte and speed."""
    d = st.doc
    proto = d.get("protocol", {})
    phases, domains = proto.get("phases", []), proto.get("domains", [])
    # the CE-matrix row right after each domain's own phase (novels: row 0, pre-training)
    own = {dom: phases.index(dom) + 1 if dom in phases else 0 for dom in domains}
    out = {}
    for method, label in proto.get("methods", {}).items():
        m, lab = st.metrics(f"{method}_matrix")
        if not m or not m.get("ce"):
            continue
        ce = [[m["ce"][dom][i] for dom in domains] for i in range(len(m["ce"][domains[0]]))]
        last = len(ce) - 1
        forget = {dom: ce[last][j] - ce[own[dom]][j] for j, dom in enumerate(domains)
                  if own[dom] < last}
        learned = [ce[own[dom]][j] for j, dom in enumerate(domains) if dom in phases
                   and own[dom] < len(ce)]
        runs = [st.run(f"{method}_{ph}") for ph in phases]
        runs = [r for r in runs if r]
        bpb = {}
        for key in ("wikitext2", "heldout"):
            pm, plab = st.metrics(f"{method}_{key}")
            bpb[key] = ((pm or {}).get("overall", {}).get("bits_per_byte"), plab)
        tps = [r["tokens_per_sec"] for r in runs if r.get("tokens_per_sec")]
        out[method] = {
            "label": label, "src": lab, "ce": ce, "domains": domains,
            "rows": ["before"] + [f"after {p}" for p in phases],
            "forgetting": forget,
            "mean_forgetting": statistics.mean(forget.values()) if forget else None,
            "mean_learned": statistics.mean(learned) if learned else None,
            "final": dict(zip(domains, ce[last])), "mean_final": statistics.mean(ce[last]),
            "bpb": bpb, "wall_s": sum(r.get("wall_s") or 0 for r in runs),
            "tokens": sum(r.get("tokens") or 0 for r in runs),
            "tokens_per_sec": statistics.mean(tps) if tps else None,
            "run_labels": [r["label"] for r in runs]}
    return out


def plot_cpt(nums: dict, path: str, title: str) -> None:
    """One panel per domain: its held-out CE before and after each phase, one line per method;
    and the methods' CE matrices as heatmaps below."""
    plt = _plt()
    items = list(nums.items())
    domains = items[0][1]["domains"]
    rows = items[0][1]["rows"]
    ncol = max(len(domains), len(items))
    fig, axes = plt.subplots(2, ncol, figsize=(3.3 * ncol, 6.6), squeeze=False)
    for ax, dom in zip(axes[0], domains):
        for method, n in items:
            ax.plot(range(len(rows)), [r[n["domains"].index(dom)] for r in n["ce"]], "o-", ms=3,
                    label=n["label"])
        ax.set_xticks(range(len(rows)), [r.replace("after ", "") for r in rows], fontsize=7)
        ax.set_title(f"{dom} (held-out)", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("CE (nats/token)")
    axes[0][0].legend(fontsize=6)
    lo = min(min(min(r) for r in n["ce"]) for _, n in items)
    hi = max(max(max(r) for r in n["ce"]) for _, n in items)
    for ax, (method, n) in zip(axes[1], items):
        im = ax.imshow(n["ce"], cmap="viridis", aspect="auto", vmin=lo, vmax=hi)
        ax.set_xticks(range(len(domains)), domains, fontsize=7)
        ax.set_yticks(range(len(rows)), rows, fontsize=7)
        for (i, row) in enumerate(n["ce"]):
            for j, val in enumerate(row):
                ax.text(j, i, f"{val:.2f}", ha="center", va="center", fontsize=6, color="w")
        ax.set_title(n["label"], fontsize=8)
    fig.colorbar(im, ax=list(axes[1]), fraction=0.02)
    for ax in [*axes[0][len(domains):], *axes[1][len(items):]]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def section_continual_pretraining(sec: Section) -> None:
    st = sec.st
    d = st.doc
    proto = d.get("protocol", {})
    pre = st.run("pretrain")
    stk = d.get("stack", {})
    if pre:
        sec.add(f"Pre-training: a transformer on novels, {_f(pre['final_step'])} steps "
                f"({_f(pre['tokens'])} tokens, held-out loss {_f(pre['eval_loss'])}, "
                f"{_f(pre['tokens_per_sec'], 0)} tokens/s; {pre['label']}). Then three phases, "
                f"{' → '.join(proto.get('phases', []))}, of {_f(proto.get('steps_per_phase'))} "
                f"steps each ({_f(proto.get('tokens_per_phase'))} tokens per phase, the same for "
                f"every method), AdamW lr {proto.get('lr')} with {proto.get('warmup_steps')} "
                "warm-up steps and a fresh optimizer per phase, each phase a `train` run from the "
                f"previous one (`train.init_from`) on one domain of `{proto.get('manifest')}`. "
                f"(b) and (c) start from `convert stack` of the pre-trained model (CMS periods "
                f"{tuple(stk.get('periods', ()))}, inner lr {stk.get('inner_lr')}; at that point "
                "it computes the transformer's function up to the levels' in-context updates); "
                f"(c) freezes `{', '.join(proto.get('frozen_backbone', []))}`, so only the CMS "
                "levels (the stacked MLPs) train. CE: held-out windows of each domain scored by "
                "`eval continual` (HOPE-Attention reads with its levels learning within each "
                "window, as it trains).", "")
    nums = cpt_numbers(st)
    if not nums:
        sec.add("(no results yet)", "")
        return
    for method, n in nums.items():
        sec.add(f"**{n['label']}** ({n['src']})", "")
        sec.add(*_table(["", *n["domains"]],
                        [[r, *[_f(v, 3) for v in row]] for r, row in zip(n["rows"], n["ce"])]))
    doms = nums[next(iter(nums))]["domains"]
    rows = []
    for method, n in nums.items():
        (w, wl), (h, hl) = n["bpb"]["wikitext2"], n["bpb"]["heldout"]
        rows.append([n["label"], _signed(n["mean_forgetting"], 3), _f(n["mean_learned"], 3),
                     *[_f(n["final"][dm], 3) for dm in doms], _f(n["mean_final"], 3), _f(w, 3),
                     _f(h, 3), _f(n["wall_s"], 0), _f(n["tokens"]), _f(n["tokens_per_sec"], 0),
                     _srcs(n["src"], wl, hl, *n["run_labels"])])
    pre_bpb = [st.metrics(f"pretrain_{k}") for k in ("wikitext2", "heldout")]
    if pre and any(m for m, _ in pre_bpb):
        rows.insert(0, ["pre-trained transformer (before the phases)", "–", "–",
                        *["–" for _ in doms], "–",
                        *[_f((m or {}).get("overall", {}).get("bits_per_byte"), 3) for m, _ in pre_bpb],
                        "–", "–", "–", _srcs(*[lab for _, lab in pre_bpb])])
    sec.add("Mean forgetting: over the domains learned before the last phase (novels in "
            "pre-training, then wikipedia, math), CE at the end minus CE right after that "
            "domain's own phase (> 0: forgot); CE after own phase: the mean over the phase "
            "domains of CE right after their own phase (how much each phase was learned: a "
            "method that learns less has less to forget). Wall time: the three phase runs (start-up and "
            "compilation included); tokens/s: the runs' median step rate, averaged.", "")
    sec.add(*_table(["method", "mean forgetting", "CE after own phase",
                     *[f"final CE {dm}" for dm in doms],
                     "mean final CE", "bpb WikiText-2", "bpb WikiText-2 held-out", "wall s",
                     "tokens", "tokens/s", "src"], rows))
    ft = nums.get("finetune")
    best = min(nums, key=lambda k: nums[k]["mean_forgetting"])
    b = nums[best]
    verdict = [f"Least forgetting: {b['label']} (mean forgetting "
               f"{_signed(b['mean_forgetting'], 3)} nats/token; " + ", ".join(
                   f"{n['label']} {_signed(n['mean_forgetting'], 3)}"
                   for k, n in nums.items() if k != best) + ")."]
    if ft:
        for k, n in nums.items():
            if k == "finetune":
                continue
            df = n["mean_forgetting"] - ft["mean_forgetting"]
            dl = (n["mean_learned"] - ft["mean_learned"]
                  if n.get("mean_learned") is not None and ft.get("mean_learned") is not None else None)
            how = ("forgets less than" if df < -CPT_SAME else "forgets more than" if df > CPT_SAME
                   else f"forgets as much as (within {CPT_SAME} nats, which one seed cannot "
                        "separate)")
            line = (f"{n['label']} {how} fine-tuning (mean forgetting {_signed(df, 3)} vs (a))")
            if dl is not None:
                line += (f", {'learns each phase better' if dl < -CPT_SAME else 'learns each phase less' if dl > CPT_SAME else 'learns each phase as well'}"
                         f" (CE after own phase {_signed(dl, 3)})")
            line += f" and ends at mean final CE {_signed(n['mean_final'] - ft['mean_final'], 3)}"
            if n.get("tokens_per_sec") and ft.get("tokens_per_sec"):
                line += (f"; it costs {_f(ft['tokens_per_sec'] / n['tokens_per_sec'], 2)}× the "
                         f"fine-tune's time per token ({_f(n['tokens_per_sec'], 0)} vs "
                         f"{_f(ft['tokens_per_sec'], 0)} tokens/s on this machine)")
            verdict.append(line + ".")
        stacked = nums.get("stacked")
        if stacked and stacked["mean_forgetting"] >= ft["mean_forgetting"] - CPT_SAME:
            fr = nums.get("stacked_frozen")
            tail = ""
            if fr and fr["mean_forgetting"] < ft["mean_forgetting"] - CPT_SAME:
                tail = ("; freezing the backbone does" + (
                    ", by learning less" if (fr.get("mean_learned") or 0) > (
                        ft.get("mean_learned") or 0) + CPT_SAME else ""))
            verdict.append("At this scale level stacking with online CMS updates does not reduce "
                           f"forgetting{tail}.")
    verdict = " ".join(verdict)
    sec.add(verdict, "")
    sec.image("ce", "Held-out CE per domain before and after each phase, per method (top); "
              "the CE matrices (bottom)",
              lambda p: plot_cpt(nums, p, "continual pre-training: novels → " +
                                 " → ".join(proto.get("phases", []))))


RENDER = {"hope_vs_titans": section_hope_vs_titans, "teach_scale_sweep": section_teach_sweep,
          "multi_device_smoke": section_multi_device, "memorisation_pilot": section_memorisation,
          "pilot_release": section_release, "continual_pretraining": section_continual_pretraining}


def _overview(studies: list[Study]) -> list[str]:
    rows = []
    for st in studies:
        d = st.doc
        status = "complete" if d.get("complete") else ("failed" if d.get("failed") else "incomplete")
        m = d.get("machine", {})
        mach = (", ".join(m["gpus"]) if m.get("gpus") else
                f"{m.get('cpu_model', '?')} ({m.get('cpu_count', '?')} cores)")
        rows.append([f"[{d['study']}](#{_anchor(d)})", d.get("preset", "cpu"), mach,
                     (d.get("started") or "?")[:10], _f(d.get("wall_s"), 0), status])
    return _table(["study", "preset", "machine", "date", "wall s", "status"], rows)


def _anchor(d: dict) -> str:
    title = f"{d['study']} ({d.get('preset', 'cpu')} preset)"
    return "".join(c for c in title.lower().replace(" ", "-") if c.isalnum() or c in "-_")


def generate(root: str, output: str | None = None) -> dict:
    """Write RESULTS.md (+ figures/) from every study.json under root. Returns
    {"output": path, "figures": [paths], "studies": n}."""
    root = os.path.abspath(root)
    if not os.path.isdir(root):
        raise ReportError(f"{root!r} is not a directory. Fix: pass the folder that "
                        "holds results/<study>/study.json (launch/experiments).")
    found = find_studies(root)
    if not found:
        raise ReportError(f"no study.json under {root!r}. Fix: run a study first, e.g. "
                        "`bash launch/experiments/hope_vs_titans.sh`.")
    output = os.path.abspath(output or os.path.join(root, "RESULTS.md"))
    out_dir = os.path.dirname(output)
    fig_dir = os.path.join(out_dir, "figures")
    os.makedirs(fig_dir, exist_ok=True)
    studies = [Study(p, doc, out_dir) for p, doc in found]
    lines = ["# Experiment results", "",
             "Generated by `python launch/experiments/report.py "
             f"{os.path.relpath(root, os.getcwd()) if root.startswith(os.getcwd()) else root}` "
             "from the studies' JSON files: do not edit by hand. Each study is run by "
             "`bash launch/experiments/<study>.sh` (CPU preset; `--gpu` for one H100) and writes "
             "`results/<study>/study.json`; every table row names its sources (E = eval JSON, "
             "T = training run, R = release), listed with the command that produced them under "
             "each section.", "",
             "The CPU presets are tiny models trained for a few hundred steps (each section names "
             "its preset) so that each study finishes in minutes on a shared CPU: they show that "
             "the pipeline works end to end and how the models compare at that scale, not "
             "paper-scale quality; zero-shot and retrieval accuracies at this size are expected "
             "near chance.", ""]
    lines += _overview(studies)
    figures = []
    for st in studies:
        sec = Section(st, fig_dir)
        _header(sec)
        render = RENDER.get(st.doc["study"])
        if render is None:
            sec.add(f"(no renderer for study {st.doc['study']!r})", "")
        else:
            render(sec)
        notes = st.doc.get("notes") or []
        if notes:
            sec.add("Notes:", "", *[f"- {n}" for n in notes], "")
        _sources(sec)
        lines += sec.lines
        figures += [f for f in sec.figures if os.path.exists(f)]
    text = "\n".join(lines).rstrip() + "\n"
    with open(output, "w") as f:
        f.write(text)
    return {"output": output, "figures": figures, "studies": len(studies)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python launch/experiments/report.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", nargs="?", default=os.path.dirname(os.path.abspath(__file__)),
                   help="folder with results/<study>/study.json (default launch/experiments)")
    p.add_argument("--output", default=None, help="markdown file (default DIR/RESULTS.md)")
    a = p.parse_args(argv)
    try:
        res = generate(a.dir, a.output)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {res['output']} ({res['studies']} studies, {len(res['figures'])} figures)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
