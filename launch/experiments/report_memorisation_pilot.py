"""The memorisation_pilot section of the experiments report: baseline against memorised
scores for each `--memorize` setting and model, and what moved.
"""

from __future__ import annotations

from report_common import Section, _f, _signed, _table, _variant_order
from report_figures import plot_bars


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
