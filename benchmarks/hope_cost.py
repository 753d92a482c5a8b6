"""What HOPE costs per token, and why (issue 16, item 5): the compiled step's FLOPs/token
ratio hope : transformer next to the measured step-time ratio, per component, at the
`configs/smoke.py` shape (width 128, 2 layers, 4 heads, seq 128, batch 16, online segment
32, CMS periods 32/64/96, novels_2k tokenizer, float32).

    python -m benchmarks.hope_cost --budget 120 --output benchmarks/out/hope_cost

Components come from a chain of cumulative ablations, from `hope` down to a model whose
only difference from the transformer is the self-modifying branch (in place of attention)
and one CMS level (in place of SwiGLU):

    hope                                   the full model
    − teach-signal vjp and CMS updates     cms.periods = 0 (levels read their meta weights)
    − DGD chunk solves                     selfmod.dgd = False (plain GD with retention)
    − CMS levels 3 → 1                     one outer-only level
    − segment scan                         online.segment_len = seq_len (one segment; the
                                           memory scan then has 16 chunks: a loop, not
                                           unrolled like the segment's 4)
    transformer

For each case: FLOPs, bytes and kernels per step of the real train step
(`nested_jax.train.parallel.jit_train_step` on one device, counted through every loop by
`benchmarks.hlo_cost`), and its step time, every case timed interleaved in one run
(`common.time_interleaved`, median of rounds). A component's share of a ratio is its
case's drop over the transformer's value, so hope : transformer = 1 + Σ components for
FLOPs and time alike; the last column says how much slower than its FLOPs each component
runs relative to the transformer (time share ÷ FLOP share). The head (tied 2k-vocabulary
projection, CE and its gradient) is shared by both models; its FLOPs are reported from the
compiled step's source lines.

Table on stdout, DIR/results.json.
"""

from __future__ import annotations

import datetime
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common, hlo_cost
from benchmarks.train_throughput import preset_config, split_variants

# (component removed at this step, case). Cases are cumulative ablations (module docstring).
ONE_LEVEL = ("+model.cms.names=('fast',)+model.cms.periods=(0,)+model.cms.optimizers=('gd',)"
             "+model.cms.lrs=(0.01,)")
CHAIN = (
    (None, "hope"),
    ("teach-signal vjp + CMS updates", "hope+model.cms.periods=(0,0,0)"),
    ("DGD chunk solves", "hope+model.cms.periods=(0,0,0)+model.selfmod.dgd=False"),
    ("CMS levels 3 → 1", "hope+model.selfmod.dgd=False" + ONE_LEVEL),
    ("segment scan (4 segments → 1)",
     "hope+model.selfmod.dgd=False" + ONE_LEVEL + "+model.online.segment_len=128"),
    ("self-modifying memories (vs attention + SwiGLU)", "transformer"),
)
# Short names of the chain's cases for the table.
LABELS = {"hope": "hope", CHAIN[1][1]: "− teach/updates", CHAIN[2][1]: "− DGD",
          CHAIN[3][1]: "− CMS 3→1", CHAIN[4][1]: "− segments", "transformer": "transformer"}
# Source files of the compiled step → component (FLOP shares by source line).
SOURCES = (("self-modifying memories", ("ops/selfmod.py", "model/selfmod.py")),
           ("DGD chunk solves", ("ops/delta_rule.py",)),
           ("CMS levels", ("ops/cms.py", "model/cms.py")),
           ("online scan bookkeeping", ("model/online.py", "ops/teach.py")),
           ("head (CE + its gradient)", ("ops/losses.py", "model/layers.py Embed")),
           ("attention", ("ops/attention.py",)))


def smoke_config(case: str):
    """configs/smoke.py with `case` = variant[+key=value...], finalized like the train CLI."""
    return preset_config("smoke_train", case)


def build(c, tokens):
    """(compiled train step, initial state, batch): the step `nested_jax.train` runs, on one
    device (shard_map over a one-device mesh, donation)."""
    from nested_jax.model.lm import init_params
    from nested_jax.train import mesh as mesh_lib, optim, parallel, step as step_lib

    fn, params = init_params(c.model, c.seed)
    tx = optim.build_optimizer(c.optim, c.train.steps)
    mesh = mesh_lib.make_mesh(c.mesh, jax.devices()[:1])
    state = step_lib.init_train_state(params, tx)
    shardings = parallel.state_shardings(c, mesh, jax.eval_shape(lambda: state))
    step = parallel.jit_train_step(c, mesh, shardings, fn=fn, tx=tx,
                                   lr_schedule=optim.schedule(c.optim, c.train.steps))
    state = jax.device_put(state, shardings)
    batch = {"tokens": jax.device_put(jnp.asarray(tokens), mesh_lib.batch_sharding(mesh))}
    return step.lower(state, batch).compile(), state, batch


def by_component(costs: dict) -> dict:
    """{component: share of the step's FLOPs} from the compiled step's source lines."""
    out = {}
    for name, files in SOURCES:
        out[name] = sum(s["flops"] for s in costs["all_sources"]
                        if any(f in s["source"] for f in files)) / max(costs["flops"], 1.0)
    return out


def source_costs(text: str, cond_taken_fraction) -> dict:
    costs = hlo_cost.hlo_costs(text, cond_taken_fraction=cond_taken_fraction, top=10**6)
    costs["all_sources"] = costs.pop("by_source")
    return costs


def main(argv=None) -> dict:
    ap = common.parser(__doc__, "hope_cost")
    ap.add_argument("--cases", default=None,
                    help="comma-separated cases (default: the ablation chain)")
    ap.add_argument("--budget", type=float, default=60.0, help="seconds of interleaved timing")
    ap.add_argument("--output", default="benchmarks/out/hope_cost")
    args = ap.parse_args(argv)
    from benchmarks.cost_model import cms_taken_fraction
    from benchmarks.train_throughput import real_batches

    chain = CHAIN if args.cases is None else tuple(
        (None if i == 0 else case, case) for i, case in enumerate(split_variants(args.cases)))
    info = common.device_info()
    load0 = os.getloadavg()
    rows, cases = [], {}
    tokens = None
    for component, case in chain:
        c = smoke_config(case)
        if tokens is None:
            tokens = real_batches(c, 1)[0]
        t0 = time.perf_counter()
        compiled, state, batch = build(c, tokens)
        compile_s = time.perf_counter() - t0
        costs = source_costs(compiled.as_text(), cms_taken_fraction(c))
        tok = c.train.batch_size * c.train.seq_len
        rows.append({"case": case, "component": component, "compile_s": compile_s,
                     "params": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state["params"])),
                     "flops_per_token": costs["flops"] / tok,
                     "bytes_per_token": costs["bytes"] / tok,
                     "kernels_per_step": costs["kernels"], "tokens_per_step": tok,
                     "flops_by_component": by_component(costs)})
        holder = [state]

        def run(holder=holder, compiled=compiled, batch=batch):
            holder[0], m = compiled(holder[0], batch)
            return m["loss"]

        cases[case] = (run, ())
        print(f"[{case}: compiled in {compile_s:.0f} s, {rows[-1]['flops_per_token'] / 1e6:.2f} "
              f"MFLOP/token, {costs['kernels']:,.0f} kernels/step]", flush=True)
    timing = common.time_interleaved(cases, budget_s=args.budget, min_case_s=1.0)
    load1 = os.getloadavg()
    for r in rows:
        r["step_s"] = timing[r["case"]]["median"]
        r["step_s_min"] = timing[r["case"]]["min"]
        r["samples"] = timing[r["case"]]["samples"]
        r["tokens_per_sec"] = r["tokens_per_step"] / r["step_s"]
    ref = next((r for r in rows if r["case"] == "transformer"), rows[-1])
    for r in rows:
        r["flop_ratio"] = r["flops_per_token"] / ref["flops_per_token"]
        r["time_ratio"] = r["step_s"] / ref["step_s"]
    comps = []
    for prev, r in zip(rows, rows[1:]):  # the component removed between two cases
        df, dt = prev["flop_ratio"] - r["flop_ratio"], prev["time_ratio"] - r["time_ratio"]
        comps.append({"component": r["component"], "flop_share": df, "time_share": dt,
                      "time_per_flop": dt / df if abs(df) > 1e-9 else None})
    head = rows[0]
    summary = {"flop_ratio": head["flop_ratio"], "time_ratio": head["time_ratio"],
               "time_over_flop": head["time_ratio"] / head["flop_ratio"]}
    print(f"\nconfigs/smoke.py shape on {info['device_kind']} ({info['cpu_count']} CPUs), "
          f"load average {load0[0]:.2f} → {load1[0]:.2f}; FLOPs counted from the compiled "
          "step, times measured interleaved (median)")
    print(common.format_table(
        [dict(r, mflops=r["flops_per_token"] / 1e6, kb=r["bytes_per_token"] / 1e3,
              ms=r["step_s"] * 1e3, label=LABELS.get(r["case"], r["case"])) for r in rows],
        [("label", "case", ""), ("mflops", "MFLOP/tok", ".2f"), ("kb", "KB/tok", ",.0f"),
         ("kernels_per_step", "kernels/step", ",.0f"), ("ms", "step ms", ".1f"),
         ("flop_ratio", "FLOP ratio", ".2f"), ("time_ratio", "time ratio", ".2f")]))
    print()
    print(common.format_table(comps, [("component", "component (hope : transformer share)", ""),
                                      ("flop_share", "FLOP ratio", "+.2f"),
                                      ("time_share", "time ratio", "+.2f"),
                                      ("time_per_flop", "time ÷ FLOP", ".2f")]))
    print(f"\nhope : transformer  FLOPs {summary['flop_ratio']:.2f}  time "
          f"{summary['time_ratio']:.2f}  (time ÷ FLOP ratio {summary['time_over_flop']:.2f})")
    print("hope's FLOPs by source: " + ", ".join(
        f"{k} {v:.0%}" for k, v in head["flops_by_component"].items() if v > 0.005))
    out = {"rows": rows, "components": comps, "summary": summary, "device": info,
           "load_average_before_after": [load0, load1],
           "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "command": "python -m benchmarks.hope_cost " + " ".join(
               argv if argv is not None else sys.argv[1:])}
    common.write_json(out, os.path.join(args.output, "results.json"))
    print(f"wrote {args.output}/results.json")
    return out


if __name__ == "__main__":
    common.run_script(main, "hope_cost")
