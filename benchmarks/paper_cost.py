"""What it would cost to train the Nested Learning paper's models (issue 20 item 4): projected
tokens/s, memory per device and days to the token budget on 1 and 8 H100s, from the XLA:GPU
compilation of the real training step (`benchmarks.cost_model`, `benchmarks.gpu_aot`).
PROJECTIONS, not measurements.

    python -m benchmarks.paper_cost --presets paper_760m,paper_1p3b \\
        --variants hope,titans,transformer --output benchmarks/out/paper_cost

Method, per (preset, variant): compile one device's step at 1 and at 2 sequences per device
(the step of a data-parallel run; nothing is allocated). Memory and time are then linear in
the per-device batch b: mem(b) = fixed + b·per_seq, time(b) = t0 + b·per_seq_time (both fitted
from the two compiles; "fixed" is parameters, optimizer state and gradients, which FSDP
divides by the device count). For N devices and the preset's global batch B (128 × 4096):
b = B / N sequences per device; if mem(b) > the device's memory with replicated parameters,
FSDP over the N devices is assumed (fixed / N; the all-gathers are not costed); if that still
does not fit, the largest b that fits is reported with the gradient accumulation it would need
(the trainer has none yet) and the time for B from ⌈B / (N·b)⌉ micro-steps. Scaling over
devices is assumed perfect (no communication cost). The segment scan is compiled as a loop
(the presets unroll their 8 segments; same step, a much shorter compile). Days = token budget ÷ (tokens/s) / 86400.
"""

from __future__ import annotations

import datetime
import math
import os
import sys

import jax

from benchmarks import common, cost_model, gpu_aot


def fit(p1: dict, p2: dict) -> dict:
    """Linear fits of memory and time in the per-device batch from b = 1 and b = 2."""
    per_seq_mem = p2["device_bytes"] - p1["device_bytes"]
    per_seq_t = p2["step_time_s"] - p1["step_time_s"]
    return {"fixed_bytes": p1["device_bytes"] - per_seq_mem, "per_seq_bytes": per_seq_mem,
            "t0_s": p1["step_time_s"] - per_seq_t, "per_seq_s": per_seq_t}


def plan(f: dict, n_dev: int, global_batch: int, seq_len: int, mem_bytes: float,
         params_opt_bytes: float) -> dict:
    """Per-device batch, sharding and projected tokens/s for n_dev devices."""
    b = global_batch // n_dev
    mem = lambda b, shard: (f["fixed_bytes"] - params_opt_bytes * (1 - 1 / shard)  # noqa: E731
                            + b * f["per_seq_bytes"])
    shard = 1
    if mem(b, 1) > mem_bytes and n_dev > 1:
        shard = n_dev  # FSDP: parameters, optimizer state and gradients split over devices
    micro = 1
    if mem(b, shard) > mem_bytes:  # gradient accumulation over micro-batches that fit
        fits = int((mem_bytes - mem(0, shard)) // max(f["per_seq_bytes"], 1))
        if fits < 1:
            return {"devices": n_dev, "fits": False, "per_device_batch": 0, "sharding": "none",
                    "memory_gib": mem(1, shard) / 2**30}
        micro = math.ceil(b / fits)
        b = math.ceil(b / micro)
    t_step = micro * (f["t0_s"] + b * f["per_seq_s"])
    tps = global_batch * seq_len / t_step
    return {"devices": n_dev, "fits": True, "per_device_batch": b, "micro_steps": micro,
            "sharding": "fsdp" if shard > 1 else "replicated",
            "memory_gib": mem(b, shard) / 2**30, "step_s": t_step, "tokens_per_sec": tps}


def main(argv=None) -> list[dict]:
    ap = common.parser(__doc__, "paper_cost")
    ap.add_argument("--presets", default="paper_760m,paper_1p3b")
    ap.add_argument("--variants", default="hope,titans,transformer")
    ap.add_argument("--device", choices=sorted(gpu_aot.PEAKS), default="h100")
    ap.add_argument("--output", default="benchmarks/out/paper_cost")
    args = ap.parse_args(argv)
    if gpu_aot.plugin_name() is None:
        ap.error("needs the gpu-aot extra (EXTRAS=dev,gpu-aot bash launch/setup.sh): these "
                 "projections come from the GPU compile")
    from jax._src import xla_bridge

    if not xla_bridge.backends_are_initialized():
        jax.config.update("jax_platforms", "cpu")
    dev = gpu_aot.PEAKS[args.device]
    rows = []
    for preset in args.presets.split(","):
        for v in args.variants.split(","):
            probes = {}
            for b in (1, 2):
                c = cost_model.preset_config(preset, v, batch_size=b)
                # The segment scan as a loop (the presets unroll their 8 segments): the same
                # step, an XLA compile of minutes instead of tens of minutes on 2 cores.
                c.model.online.unroll_segments = 1
                row, _ = cost_model.analyse(c, dev, args.device, "gpu")
                probes[b] = row
                print(f"[{preset} {v} b={b}: {row['kernels_per_step']:,.0f} device ops, "
                      f"{row['step_time_s'] * 1e3:,.0f} ms, {row['device_bytes'] / 2**30:.1f} GiB, "
                      f"compiled in {row['compile_s']:.0f} s]", flush=True)
            c = cost_model.preset_config(preset, v)
            n_params = probes[1]["params"]
            params_opt = n_params * 4 * 4  # f32 params, grads, Adam m and v
            f = fit(probes[1], probes[2])
            tokens = float(c.train.steps * c.train.batch_size * c.train.seq_len)
            for n_dev in (1, 8):
                p = plan(f, n_dev, c.train.batch_size, c.train.seq_len, dev["memory_bytes"],
                         params_opt)
                days = tokens / p["tokens_per_sec"] / 86400 if p["fits"] else None
                rows.append({"preset": preset, "variant": v, "params": n_params,
                             "token_budget": tokens, **p, "days": days,
                             "kernels_per_seq_step": probes[1]["kernels_per_step"],
                             "roofline_s_b1": probes[1]["roofline_s"],
                             "launch_s_b1": probes[1]["launch_s"], **f})
    cols = [("preset", "preset", ""), ("variant", "variant", ""), ("params_M", "params(M)", ".0f"),
            ("devices", "H100s", "d"), ("sharding", "params", ""),
            ("per_device_batch", "seqs/dev", "d"), ("micro_steps", "accum", "d"),
            ("memory_gib", "GiB/dev", ".1f"), ("tokens_per_sec", "proj tok/s", ",.0f"),
            ("days", "days to budget", ".1f"), ("kernels_per_seq_step", "ops/step(b=1)", ",.0f")]
    view = [dict(r, params_M=r["params"] / 1e6) for r in rows]
    print("\nPROJECTIONS from the XLA:GPU compile (roofline + launch model; perfect scaling, "
          "no communication cost), not measurements\n" + common.format_table(view, cols))
    out = {"note": "projection", "device": args.device, "device_spec": dev,
           "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "command": "python -m benchmarks.paper_cost " + " ".join(
               argv if argv is not None else sys.argv[1:]), "rows": rows}
    common.write_json(out, os.path.join(args.output, "results.json"))
    return rows


if __name__ == "__main__":
    common.run_script(main, "paper_cost")
