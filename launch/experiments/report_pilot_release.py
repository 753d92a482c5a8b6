"""The pilot_release section of the experiments report: the released checkpoint, the
evaluations bundled with it, the release.json fields and the build / verify checks.
"""

from __future__ import annotations

import os

from report_common import Section, _eval_headline, _f, _read_json, _table


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
