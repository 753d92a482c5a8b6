"""The short table every eval command prints when it is done (the JSON holds everything):
zeroshot task → acc / acc_norm, niah/passkey length × depth accuracy, continual domain → CE.

    print(console_table(doc))   # doc: the JSON document a command wrote

A command without its own formatter gets its numeric metrics as `metric  value` rows;
add one to TABLES for a new command.
"""

from __future__ import annotations

import math


def _f(v, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if math.isfinite(v) else str(v)
    return str(v)


def grid(header: list[str], rows: list[list]) -> str:
    """Left-aligned first column, right-aligned numbers, a rule under the header."""
    cells = [[str(h) for h in header]] + [[_f(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths)]
                     + [line(r) for r in cells[1:]])


def _title(doc: dict) -> str:
    ck = doc.get("checkpoint") or {}
    cfg = doc.get("config") or {}
    where = f"{cfg.get('variant', '?')} @ step {ck.get('step', '?')}" if ck else ""
    return f"{doc.get('command', 'eval')}" + (f": {where}" if where else "")


def zeroshot(doc: dict) -> str:
    m = doc["metrics"]
    mem = any("memorized" in r for r in m["tasks"].values())
    header = ["task", "n", "acc", "acc_norm"] + (["acc (mem.)", "acc_norm (mem.)"] if mem else [])
    rows = []
    for task, r in m["tasks"].items():
        row = [task, r.get("n"), r["acc"], r["acc_norm"]]
        if mem:
            row += [r.get("memorized", {}).get("acc"), r.get("memorized", {}).get("acc_norm")]
        rows.append(row)
    mean = m.get("mean", {})
    row = ["mean", None, mean.get("acc"), mean.get("acc_norm")]
    if mem:
        row += [mean.get("memorized_acc"), mean.get("memorized_acc_norm")]
    rows.append(row)
    return grid(header, rows)


def needle(doc: dict) -> str:
    """Greedy exact-match accuracy per depth (rows) and length (columns), then overall."""
    m = doc["metrics"]
    lengths, depths = m["lengths"], m["depths"]
    acc = {(c["length"], c["depth"]): c for c in m["cells"]}
    out = []
    for key, label in (("greedy_acc", "greedy exact match"), ("rank_acc", "key ranked first")):
        rows = [[f"depth {d}%"] + [acc.get((L, d), {}).get(key) for L in lengths] for d in depths]
        out.append(f"{label} (rows: needle depth, columns: length in tokens)")
        out.append(grid([""] + [str(L) for L in lengths], rows))
    out.append(f"overall: greedy {_f(m['overall_greedy_acc'])}, ranked {_f(m['overall_rank_acc'])}"
               + (f"; memorised: greedy {_f(m['overall_memorized_greedy_acc'])}, ranked "
                  f"{_f(m['overall_memorized_rank_acc'])}"
                  if "overall_memorized_greedy_acc" in m else ""))
    return "\n".join(out)


def continual(doc: dict) -> str:
    """CE per domain: one column per checkpoint (forgetting curve) or per phase (sequential)."""
    m = doc["metrics"]
    if "ce_matrix" in m:
        cols = ["initial" if r == "initial" else f"after {r}" for r in m["rows"]]
        rows = [[d] + [m["ce_matrix"][i][j] for i in range(len(m["rows"]))]
                for j, d in enumerate(m["domains"])]
        return "CE (nats/token) per domain\n" + grid(["domain"] + cols, rows)
    cols = [f"step {e['step']}" for e in m["checkpoints"]]
    rows = [[d] + list(ys) for d, ys in m["ce"].items()]
    return "CE (nats/token) per domain\n" + grid(["domain"] + cols, rows)


def generic(doc: dict) -> str:
    """Numeric metrics (two levels deep) as `metric  value` rows, at most 30."""
    rows = []

    def walk(node, prefix, depth):
        if isinstance(node, dict) and depth < 3:
            for k, v in node.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k), depth + 1)
        elif isinstance(node, (int, float)) and not isinstance(node, bool):
            rows.append([prefix, node])

    walk(doc.get("metrics", {}), "", 0)
    return grid(["metric", "value"], rows[:30]) if rows else "(no numeric metrics)"


def perplexity(doc: dict) -> str:
    from nested_jax.eval.perplexity import table

    return table(doc["metrics"])


TABLES = {"zeroshot": zeroshot, "niah": needle, "passkey": needle, "continual": continual,
          "perplexity": perplexity}


def console_table(doc: dict) -> str:
    """The table for `doc`, under a one-line title."""
    fn = TABLES.get(doc.get("command"), generic)
    try:
        body = fn(doc)
    except (KeyError, TypeError, IndexError, ValueError):  # an unexpected shape: still print
        body = generic(doc)
    return f"{_title(doc)}\n{body}"
