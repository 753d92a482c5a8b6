"""The teach_scale_sweep section of the experiments report: final losses and stability per
teach scale, the difference from the control against its seed-to-seed noise, and the
outer optimizers at one teach scale.
"""

from __future__ import annotations

from report_common import Section, _f, _finite, _signed, _table
from report_figures import _plt, _save, plot_loss_curves


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
