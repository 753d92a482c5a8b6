"""The hope_vs_titans section of the experiments report: the matched models' training,
held-out CE per domain, zero-shot accuracy, passkey / needle-in-a-haystack and the
continual-learning matrix.
"""

from __future__ import annotations

import math

from report_common import Section, _f, _final_ce, _signed, _srcs, _table, _variant_order
from report_figures import plot_domain_curves, plot_loss_curves, plot_matrices

DOMAINS = ("novels", "wikipedia", "math", "code")


def _needle(m) -> tuple:
    if not m:
        return (None, None, None)
    chance = 1.0 / (1 + m["distractors"]) if m.get("distractors") is not None else None
    return (m.get("overall_greedy_acc"), m.get("overall_rank_acc"), chance)


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
