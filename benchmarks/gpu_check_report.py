"""Summary of one `launch/gpu_check.sh` run: DIR/summary.json and DIR/results_section.md
(a markdown section ready to paste into benchmarks/RESULTS.md).

    python -m benchmarks.gpu_check_report --output DIR --command "bash launch/gpu_check.sh ..."

Reads what the script's steps wrote under DIR (steps.jsonl, doctor log, throughput/<variant>/,
train_pilot_smoke/, scan_chunks/, scaling/, cost_model/ or the committed projection
benchmarks/out/cost_pilot/results.json) and puts the cost model's projection, re-projected on
this card's peak and bandwidth, next to each measured tokens/s. Imports no JAX backend
(the GPU stays free); missing parts are reported as missing, never fatal.
"""

from __future__ import annotations

import datetime
import glob
import json
import os
import platform
import subprocess

from benchmarks import common
from nested_jax.git_info import git_commit

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMITTED_PROJECTION = os.path.join(HERE, "benchmarks", "out", "cost_pilot", "results.json")


def _load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _jsonl(path):
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError):
        return []


def card_info() -> dict:
    """GPU name, driver and memory from nvidia-smi (None on a machine without one)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
        lines = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    except (OSError, subprocess.SubprocessError):
        lines = []
    if not lines:
        return {"name": None, "count": 0}
    name, driver, mem = (x.strip() for x in lines[0].split(","))
    return {"name": name, "driver": driver, "memory": mem, "count": len(lines)}


def device_key(card: dict) -> str | None:
    name = (card.get("name") or "").upper()
    return "h200" if "H200" in name else "h100" if "H100" in name else None


def projection(out_dir: str, card: dict, committed: bool) -> tuple[dict, dict | None, str | None]:
    """({variant: projected row on this card}, device spec, source file): the run's own
    cost model output, else (`committed`) the projection committed for the pilot preset."""
    from benchmarks import cost_model

    path = os.path.join(out_dir, "cost_model", "results.json")
    res = _load(path)
    if res is None and committed:
        path, res = COMMITTED_PROJECTION, _load(COMMITTED_PROJECTION)
    if res is None:
        return {}, None, None
    dev = cost_model.DEVICES.get(device_key(card) or "", res["device_spec"])
    rows = {}
    for r in res["rows"]:
        costs = {"flops": r["flops_per_step"], "bytes": r["bytes_per_step"],
                 "kernels": r.get("kernels_per_step", 0.0)}
        rows[r["variant"]] = dict(r, **cost_model.project(costs, r["tokens_per_step"],
                                                          r["model_flops_per_token"], dev,
                                                          r.get("launch_s")))
        rows[r["variant"]]["preset"] = res["preset"]
    return rows, dev, os.path.relpath(path, HERE) if path.startswith(HERE) else path


def throughput(out_dir: str) -> tuple[list[dict], dict | None]:
    from benchmarks.train_throughput import VARIANTS

    rows, info = [], None
    for path in glob.glob(os.path.join(out_dir, "throughput", "*", "results.json")):
        res = _load(path)
        if res:
            info = info or {"device": res.get("device"), "matmul_peak": res.get("matmul_peak"),
                            "preset": res.get("preset")}
            rows += res.get("rows", [])
    order = {v: i for i, v in enumerate(VARIANTS)}
    return sorted(rows, key=lambda r: order.get(r["variant"], len(order))), info


def training(out_dir: str) -> dict | None:
    recs = _jsonl(os.path.join(out_dir, "train_pilot_smoke", "metrics.jsonl"))
    losses = [(r["step"], r["loss"]) for r in recs if "loss" in r]
    if not losses:
        return None
    evals = [(r["step"], r["eval_loss"]) for r in recs if "eval_loss" in r]
    nonfinite = max([r.get("nonfinite_skipped", 0) for r in recs] +
                    [sum(r.get("nonfinite", 0) for r in recs)])
    tps = [r["tokens_per_sec"] for r in recs if r.get("tokens_per_sec")]
    first, last = losses[0][1], losses[-1][1]
    return {"steps": losses[-1][0], "loss_first": first, "loss_last": last,
            "eval_first": evals[0][1] if evals else None, "eval_last": evals[-1][1] if evals else None,
            "nonfinite_steps": nonfinite, "tokens_per_sec_last": tps[-1] if tps else None,
            "loss_falls": last < first, "ok": last < first and nonfinite == 0}


def scan_chunks(out_dir: str) -> list[dict]:
    res = _load(os.path.join(out_dir, "scan_chunks", "results.json")) or []
    table = {}
    for r in res:
        if r.get("tokens_per_sec") is None:
            continue
        key = (r["memory"], r["mode"])
        t = table.setdefault(key, {"memory": r["memory"], "mode": r["mode"], "dtype": r.get("dtype"),
                                   "shape": f"B{r['B']} H{r['H']} T{r['T']}"})
        if r["impl"] == "token_loop":
            t["token_loop"] = r["tokens_per_sec"]
        else:
            t[f"C{r['chunk_size']}"] = r["tokens_per_sec"]
            t[f"C{r['chunk_size']}_speedup"] = r.get("speedup_vs_token_loop")
    return list(table.values())


def build(out_dir: str, command: str, cpu_smoke: bool) -> dict:
    card = card_info()
    steps = _jsonl(os.path.join(out_dir, "steps.jsonl"))
    tp_rows, tp_info = throughput(out_dir)
    proj, dev, proj_src = projection(out_dir, card, committed=not cpu_smoke)
    for r in tp_rows:
        p = proj.get(r["variant"])
        if p and p.get("seq_len") == r.get("seq_len") and p.get("d_model") == r.get("d_model"):
            r["projected_tokens_per_sec"] = p["projected_tokens_per_sec"]
            r["measured_over_projected"] = r["tokens_per_sec"] / p["projected_tokens_per_sec"]
            r["projected_bound"] = p["bound"]
        if dev and not cpu_smoke:  # MFU against the card's nominal dense bf16 peak
            r["mfu_nominal_peak"] = r["model_flops_per_token"] * r["tokens_per_sec"] / dev["peak_flops"]
    scaling = _load(os.path.join(out_dir, "scaling", "results.json"))
    doctor = ""
    try:
        with open(os.path.join(out_dir, "logs", "doctor.log")) as f:
            doctor = next((line.split(None, 1)[1].strip() for line in f
                           if line.startswith("status")), "")
    except OSError:
        pass
    jax_version = (tp_info or {}).get("device", {}) or {}
    return {
        "kind": "cpu_smoke" if cpu_smoke else "gpu",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command, "commit": git_commit(short=True), "host": platform.node(), "card": card,
        "jax_version": jax_version.get("jax_version"), "backend": jax_version.get("backend"),
        "device_kind": jax_version.get("device_kind"), "doctor": doctor, "steps": steps,
        "throughput": tp_rows, "matmul_peak": (tp_info or {}).get("matmul_peak"),
        "projection_source": proj_src, "projection_device": dev,
        "training": training(out_dir), "scan_chunks": scan_chunks(out_dir),
        "scaling": (scaling or {}).get("rows"),
    }


def _f(x, spec):
    return "–" if x is None else format(x, spec)


def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def markdown(s: dict) -> str:
    card = s["card"]
    what = ("CPU smoke of the GPU check (toy sizes; not a GPU result)" if s["kind"] == "cpu_smoke"
            else f"GPU check on {card.get('name')}")
    lines = [f"## {what}, {s['date']}", "", "```", s["command"], "```", ""]
    machine = (f"{card['count']} × {card['name']} ({card.get('memory')}), driver {card.get('driver')}"
               if card.get("name") else f"no GPU ({s.get('device_kind')})")
    lines.append(f"Machine: {machine}; host {s['host']}; jax {s['jax_version']} "
                 f"({s['backend']}); commit {s['commit']}; doctor: {s['doctor'] or '–'}.")
    took = ", ".join(f"{st['name']} {st['status']} {st['seconds']:.0f} s" for st in s["steps"])
    lines += [f"Steps: {took}.", ""]
    tp = s["throughput"]
    if tp:
        r0 = tp[0]
        peak = s.get("matmul_peak") or {}
        lines += [f"### Training throughput: width {r0.get('d_model')} × {r0.get('n_layers')} layers, "
                  f"seq {r0.get('seq_len')}, batch {r0.get('batch')}",
                  "",
                  f"MFU = model FLOPs (6·N + attention) × tokens/s ÷ peak; measured peak: "
                  f"{peak.get('n')}² {peak.get('dtype')} matmul at "
                  f"{_f((peak.get('flops_per_sec') or 0) / 1e9, ',.0f')} GFLOP/s. "
                  "Projected: the cost model's FLOPs and bytes per step (from the CPU compilation) "
                  f"on the roofline of {(s['projection_device'] or {}).get('name', '–')} "
                  f"({s['projection_source'] or 'no projection found'}).", "",
                  "| variant | params (M) | tokens/s | step ms | MFU (measured peak) | "
                  "MFU (nominal bf16 peak) | peak memory MiB | compile s | projected tokens/s | "
                  "measured ÷ projected |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in tp:
            lines.append(_row([
                r["variant"], _f(r.get("params_M"), ".1f"), _f(r.get("tokens_per_sec"), ",.0f"),
                _f((r.get("step_s") or 0) * 1e3, ".1f"), _f(r.get("mfu"), ".3f"),
                _f(r.get("mfu_nominal_peak"), ".3f"), _f(r.get("peak_memory_MB"), ",.0f"),
                _f(r.get("compile_s"), ".0f"), _f(r.get("projected_tokens_per_sec"), ",.0f"),
                _f(r.get("measured_over_projected"), ".2f")]))
        lines.append("")
    sc = s["scan_chunks"]
    if sc:
        chunks = sorted({k for r in sc for k in r if k.startswith("C") and "_" not in k},
                        key=lambda k: int(k[1:]))
        lines += [f"### Chunked memories against the token loop ({sc[0]['shape']}, "
                  f"{sc[0]['dtype']} inputs), tokens/s", "",
                  _row(["memory", "mode", "token loop"] + [f"chunk {c[1:]} (× loop)" for c in chunks]),
                  "|---|---|---|" + "---|" * len(chunks)]
        for r in sc:
            lines.append(_row([r["memory"], r["mode"], _f(r.get("token_loop"), ",.0f")] + [
                f"{_f(r.get(c), ',.0f')} ({_f(r.get(c + '_speedup'), '.1f')}×)" for c in chunks]))
        lines.append("")
    tr = s["training"]
    if tr:
        lines += ["### Short training (`configs/pilot_smoke.py`)", "",
                  f"{tr['steps']} steps: training loss {tr['loss_first']:.3f} → {tr['loss_last']:.3f}, "
                  f"held-out {_f(tr['eval_first'], '.3f')} → {_f(tr['eval_last'], '.3f')}, "
                  f"{tr['nonfinite_steps']} non-finite steps, "
                  f"{_f(tr['tokens_per_sec_last'], ',.0f')} tokens/s at the end: "
                  f"{'loss falls, all steps finite' if tr['ok'] else 'CHECK FAILED'}.", ""]
    if s["scaling"]:
        lines += ["### Data parallel against one device", "",
                  "| variant | devices | tokens/s | speed-up | efficiency |", "|---|---|---|---|---|"]
        for r in s["scaling"]:
            lines.append(_row([r["variant"], r["devices"], _f(r.get("tokens_per_sec"), ",.0f"),
                               _f(r.get("speedup"), ".2f"), _f(r.get("efficiency"), ".2f")]))
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = common.parser(__doc__, "gpu_check_report")
    ap.add_argument("--output", required=True)
    ap.add_argument("--command", default="bash launch/gpu_check.sh")
    ap.add_argument("--cpu-smoke", action="store_true")
    args = ap.parse_args(argv)
    summary = build(args.output, args.command, args.cpu_smoke)
    md = markdown(summary)
    summary["markdown"] = md
    common.write_json(summary, os.path.join(args.output, "summary.json"))
    with open(os.path.join(args.output, "results_section.md"), "w") as f:
        f.write(md + "\n")
    print(md)
    print(f"wrote {args.output}/summary.json and results_section.md")
    return summary


if __name__ == "__main__":
    common.run_script(main, "gpu_check_report")
