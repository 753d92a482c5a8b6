"""The multi_device_smoke section of the experiments report: the run on every local device
against the same run on one device, the checks, and every evaluation of its checkpoint.
"""

from __future__ import annotations

from report_common import Section, _eval_headline, _f, _finite, _table
from report_figures import plot_loss_curves


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
