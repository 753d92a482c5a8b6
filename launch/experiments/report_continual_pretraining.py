"""The continual_pretraining section of the experiments report: per method, the CE matrix
over the phases, forgetting, bits per byte, speed and the verdict, with its figure.
"""

from __future__ import annotations

import os
import statistics

from report_common import Section, Study, _f, _signed, _srcs, _table
from report_figures import _plt

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
