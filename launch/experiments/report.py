"""RESULTS.md and PNG figures from the experiment studies' JSON (launch/experiments).

    python launch/experiments/report.py [DIR] [--output FILE]   # DIR: launch/experiments

Input: every `study.json` under DIR (written by launch/experiments/study.py), with the files
it names next to it: eval JSON copies (`evals/*.json`, written by `python -m nested_jax.eval`)
and training records (`train/<run>/{metrics.jsonl,summary.json,config.json}`). Output:
`DIR/RESULTS.md` (or --output) and `figures/*.png` next to it. Every number in the markdown is
read from one of those files; every table row names its sources (E1, T1, ...), listed under
the section with the JSON path and the command that produced it. No number is typed by hand.

This file finds the studies, writes each section's header, sources and notes, and assembles
RESULTS.md; each study's own section is rendered by report_<study>.py, with the Study and
Section of report_common.py and the figures of report_figures.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from report_common import ReportError, Section, Study, _f, _table
from report_continual_pretraining import section_continual_pretraining
from report_hope_vs_titans import section_hope_vs_titans
from report_memorisation_pilot import section_memorisation
from report_multi_device_smoke import section_multi_device
from report_pilot_release import section_release
from report_teach_scale_sweep import section_teach_sweep

STUDY_ORDER = ("hope_vs_titans", "teach_scale_sweep", "multi_device_smoke", "memorisation_pilot",
               "pilot_release", "continual_pretraining")
PRESET_ORDER = ("cpu", "gpu", "tiny")


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
