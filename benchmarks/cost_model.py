"""Compiled-step cost model: FLOPs and bytes per token of the real training step, and a
roofline projection on a named GPU. A projection from the CPU compilation, not a GPU
measurement.

    python -m benchmarks.cost_model --preset pilot \\
        --variants transformer,titans,hope,hope_attention,hope_hybrid --device h100 \\
        --output benchmarks/out/cost_pilot
    presets: smoke, pilot, mid (configs/smoke.py, pilot.py, mid_stage2.py) and pilot_smoke
    (the shape `train_throughput --preset smoke` measures); --device h100 | h200 | cpu

For every variant: build the preset's config exactly as `python -m nested_jax.train` does
(tokenizer vocabulary, `finalize_config`), lower and compile the train step that
`nested_jax.train.parallel.jit_train_step` builds (shard_map step on a one-device mesh,
donation, online segment scan, remat as configured) from abstract inputs
(`jax.eval_shape`, `ShapeDtypeStruct`: nothing is allocated or run), and count the
optimized HLO with `benchmarks.hlo_cost`, which multiplies every `while` body (layer scan,
segment scan, memory chunk scans, nested) by its trip count; XLA's own
`cost_analysis()` counts each body once and is reported next to it for contrast.

Projection on the device (H100 SXM: 989 TFLOP/s dense bf16, 3.35 TB/s; H200: 989 TFLOP/s,
4.8 TB/s; cpu: this machine's measured matmul FLOP/s and copy bandwidth):
    time/step = max(FLOPs / peak, bytes / bandwidth)       bound = compute | memory
    projected_tokens_per_sec = tokens/step ÷ time/step
    projected_mfu = model FLOPs (6·N + attention, benchmarks.train_throughput) ÷ (time · peak)
The bytes are those of the CPU compiler's fusions (a GPU fuses differently) and the time is
an ideal roofline (no launch overhead, perfect overlap): read the numbers as the ceiling
this program's FLOPs and traffic allow, and the ratios between variants. Also reported:
where the bytes go (loops with trip counts, top ops), and kernels per step (an estimate of
GPU launches: instructions that do work × trip counts) with a launch floor at
LAUNCH_US µs each (not part of the projection).

Table on stdout; DIR/results.json (rows + per-variant detail) and DIR/roofline.png.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common, hlo_cost
from benchmarks.train_throughput import VARIANTS, model_flops_per_token

PRESETS = {"smoke": "configs.smoke", "pilot": "configs.pilot", "mid": "configs.mid_stage2",
           "pilot_smoke": "configs.pilot_smoke"}  # pilot_smoke: train_throughput's smoke shape
DEVICES = {  # dense bf16 matmul FLOP/s (no sparsity), HBM bytes/s
    "h100": {"name": "NVIDIA H100 SXM", "peak_flops": 989e12, "bandwidth": 3.35e12},
    "h200": {"name": "NVIDIA H200 SXM", "peak_flops": 989e12, "bandwidth": 4.8e12},
}
LAUNCH_US = 3.0  # rough per-kernel launch + tail cost on a GPU, for the launch floor only
NOTE = ("PROJECTION from the CPU compilation of the training step (XLA:CPU fusions, ideal "
        "roofline), not a GPU measurement.")


def preset_config(preset: str, variant: str, dtype: str | None = None):
    """The preset's config with `variant` (and `dtype`), finalized like the train CLI does."""
    from nested_jax.data import loader
    from nested_jax.train.validate import finalize_config

    c = importlib.import_module(PRESETS[preset]).get_config()
    c.model.variant = variant
    if dtype:
        c.model.dtype = dtype
    finalize_config(c, loader.tokenizer_for(c.data).vocab_size)
    return c


def compile_train_step(c):
    """Lower and compile the training step of config `c` from abstract inputs on one
    device (the per-GPU program of a data-parallel run). Returns (compiled, abstract params)."""
    from flax import nnx

    from nested_jax.model.lm import abstract_model, build_model
    from nested_jax.model.loss import streams
    from nested_jax.train import mesh as mesh_lib, optim, parallel, step as step_lib

    tx = optim.build_optimizer(c.optim, c.train.steps)
    b, t = c.train.batch_size, c.train.seq_len

    def init():
        params = nnx.to_pure_dict(nnx.split(build_model(c.model, c.seed))[1])
        return step_lib.init_train_state(params, tx)

    state = jax.eval_shape(init)
    if streams(c.model):  # streaming fast state lives in the train state
        state["fast"] = parallel.abstract_fast(c.model, b, t)
    mesh = mesh_lib.make_mesh(c.mesh, jax.devices()[:1])
    shardings = parallel.state_shardings(c, mesh, state)
    step = parallel.jit_train_step(c, mesh, shardings, fn=abstract_model(c.model), tx=tx,
                                   lr_schedule=optim.schedule(c.optim, c.train.steps))
    state_in = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            state, shardings)
    batch = {"tokens": jax.ShapeDtypeStruct((b, t + 1), jnp.int32,
                                            sharding=mesh_lib.batch_sharding(mesh))}
    return step.lower(state_in, batch).compile(), state["params"]


def analytic_flops_per_token(c, params) -> float:
    """Model FLOPs (6·N + attention, `model_flops_per_token`) plus, with `model.remat`, the
    blocks' forward once more in the backward pass (2·N_blocks + 4·L·T·D of attention):
    the dense work a plain transformer's compiled step must do."""
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    flops = model_flops_per_token(c, n)
    if c.model.remat:
        n_blocks = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params["blocks"]))
        attn = c.model.variant != "hope"
        flops += 2.0 * n_blocks + (4.0 * c.model.n_layers * c.train.seq_len * c.model.d_model
                                   if attn else 0.0)
    return flops


def cms_taken_fraction(c) -> float | None:
    """How often a CMS level's update branch runs: a level of period P updates after S/P of
    the segments (S the segment length); every level's update costs the same, so the mean
    over levels weights each `conditional` exactly."""
    from nested_jax.model.blocks import ONLINE_VARIANTS

    live = [p for p in c.model.cms.periods if p > 0]  # period 0: outer-only, no update branch
    if c.model.variant not in ONLINE_VARIANTS or not live:
        return None
    s = c.model.online.segment_len
    return float(np.mean([s / p for p in live]))


def measured_cpu(dtype) -> dict:
    """This machine's dense matmul FLOP/s (common.matmul_peak_flops) and copy bandwidth."""
    peak = common.matmul_peak_flops(dtype=dtype)
    x = jnp.ones((1 << 25,), jnp.float32)  # 128 MiB read + 128 MiB written per call
    inc = jax.jit(lambda a: a + 1.0)
    jax.block_until_ready(inc(x))
    best = min(common.run_once(inc, x) for _ in range(5))
    return {"name": f"this CPU ({common.device_info()['device_kind']})",
            "peak_flops": peak["flops_per_sec"], "bandwidth": 2 * x.nbytes / best}


def project(costs: dict, tokens: int, model_fpt: float, dev: dict) -> dict:
    t_compute = costs["flops"] / dev["peak_flops"]
    t_memory = costs["bytes"] / dev["bandwidth"]
    t = max(t_compute, t_memory)
    return {"flops_per_token": costs["flops"] / tokens, "bytes_per_token": costs["bytes"] / tokens,
            "arithmetic_intensity": costs["flops"] / max(costs["bytes"], 1.0),
            "step_time_s": t, "compute_time_s": t_compute, "memory_time_s": t_memory,
            "bound": "compute" if t_compute >= t_memory else "memory",
            "projected_tokens_per_sec": tokens / t,
            "projected_mfu": model_fpt * tokens / (t * dev["peak_flops"]),
            "kernels_per_step": costs["kernels"],
            "launch_floor_s": costs["kernels"] * LAUNCH_US * 1e-6}


def analyse(c, dev: dict) -> tuple[dict, dict]:
    """(row, detail) of one config: compile, count, project."""
    t0 = time.perf_counter()
    compiled, params = compile_train_step(c)
    compile_s = time.perf_counter() - t0
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    costs = hlo_cost.hlo_costs(compiled.as_text(), cond_taken_fraction=cms_taken_fraction(c))
    tokens = c.train.batch_size * c.train.seq_len
    model_fpt = model_flops_per_token(c, n_params)
    row = {"variant": c.model.variant, "params": n_params, "tokens_per_step": tokens,
           "batch": c.train.batch_size, "seq_len": c.train.seq_len, "d_model": c.model.d_model,
           "n_layers": c.model.n_layers, "dtype": c.model.dtype, "remat": bool(c.model.remat),
           "flops_per_step": costs["flops"], "bytes_per_step": costs["bytes"],
           "transcendentals_per_step": costs["transcendentals"],
           "model_flops_per_token": model_fpt,
           "analytic_flops_per_token": analytic_flops_per_token(c, params),
           **project(costs, tokens, model_fpt, dev),
           "while_loops": costs["while_loops"], "compile_s": compile_s}
    row["flops_vs_model"] = row["flops_per_token"] / model_fpt
    row["flops_vs_analytic"] = row["flops_per_token"] / row["analytic_flops_per_token"]
    xla = hlo_cost.xla_cost_analysis(compiled)
    detail = {k: costs[k] for k in ("loops", "by_source", "top_bytes", "top_flops",
                                    "custom_calls", "conditionals", "cond_taken_fraction")}
    detail["xla_cost_analysis_loop_bodies_once"] = xla
    detail["memory_analysis"] = common.compiled_memory(compiled)
    # Temporaries of the CPU executable: activations and residuals a GPU must hold too
    # (its allocator and fusions differ, so read it as an estimate).
    row["temp_bytes"] = detail["memory_analysis"].get("temp_bytes")
    return row, detail


COLUMNS = [("variant", "variant", ""), ("params_M", "params(M)", ".1f"),
           ("mflops_per_token", "MFLOP/tok", ",.0f"), ("model_mflops", "model MFLOP/tok", ",.0f"),
           ("flops_vs_model", "÷model", ".2f"), ("flops_vs_analytic", "÷analytic", ".2f"),
           ("kb_per_token", "KB/tok", ",.0f"),
           ("arithmetic_intensity", "FLOP/B", ".0f"), ("bound", "bound", ""),
           ("projected_tokens_per_sec", "proj tok/s", ",.0f"), ("projected_mfu", "proj MFU", ".3f"),
           ("kernels_per_step", "kernels/step", ",.0f"), ("launch_floor_ms", "launch ms", ".1f"),
           ("step_ms", "roofline ms", ".1f"), ("temp_gib", "temp GiB", ".1f"),
           ("compile_s", "compile s", ".0f")]


def print_report(rows, details, dev, preset):
    print(f"\n{NOTE}\npreset {preset} on {dev['name']}: {dev['peak_flops'] / 1e12:.4g} TFLOP/s, "
          f"{dev['bandwidth'] / 1e12:.4g} TB/s (ridge {dev['peak_flops'] / dev['bandwidth']:.0f} "
          "FLOP/B)")
    view = [dict(r, params_M=r["params"] / 1e6, mflops_per_token=r["flops_per_token"] / 1e6,
                 model_mflops=r["model_flops_per_token"] / 1e6, kb_per_token=r["bytes_per_token"] / 1e3,
                 launch_floor_ms=r["launch_floor_s"] * 1e3, step_ms=r["step_time_s"] * 1e3,
                 temp_gib=r["temp_bytes"] / 2**30 if r.get("temp_bytes") else None)
            for r in rows]
    print(common.format_table(view, COLUMNS))
    for r in rows:
        d = details[r["variant"]]
        print(f"\n{r['variant']}: {r['bytes_per_step'] / 1e9:.2f} GB and "
              f"{r['flops_per_step'] / 1e12:.2f} TFLOP per step; {r['while_loops']} while loops "
              f"(XLA's cost_analysis, loop bodies once: "
              f"{d['xla_cost_analysis_loop_bodies_once'].get('flops', 0) / 1e12:.3f} TFLOP)")
        for lp in d["loops"][:8]:
            print(f"  loop {'  ' * lp['depth']}×{lp['trip_count']:<4} run {lp['executions']:>6,.0f}× "
                  f"{lp['bytes_per_run'] / max(r['bytes_per_step'], 1):6.1%} of bytes  "
                  f"{lp['flops_per_run'] / max(r['flops_per_step'], 1):6.1%} of FLOPs  "
                  f"{lp['source'][-80:]}")
        share = lambda x, key: x[key] / max(r[f"{key}_per_step"], 1)  # noqa: E731
        kernels = max(r["kernels_per_step"], 1)
        for src in d["by_source"][:6]:
            print(f"  source {share(src, 'bytes'):6.1%} of bytes {share(src, 'flops'):6.1%} of FLOPs "
                  f"{src['kernels'] / kernels:6.1%} of kernels  {src['source'][-70:]}")
        for op in d["top_bytes"][:4]:
            print(f"  op     {share(op, 'bytes'):6.1%} of bytes  kernels {op['kernels']:>9,.0f}  "
                  f"{op['op'][-90:]}")


def plot_roofline(rows, dev, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ai = np.array([r["arithmetic_intensity"] for r in rows])
    lo, hi = min(ai.min() / 4, 1.0), max(ai.max() * 4, 4 * dev["peak_flops"] / dev["bandwidth"])
    xs = np.geomspace(lo, hi, 200)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(xs, np.minimum(dev["peak_flops"], xs * dev["bandwidth"]), "k-", lw=1.2,
            label=f"{dev['name']} roofline")
    for i, r in enumerate(rows):
        achieved = r["flops_per_step"] / r["step_time_s"]
        ax.plot(r["arithmetic_intensity"], achieved, "o", color=f"C{i}",
                label=f"{r['variant']} ({r['bound']}, MFU {r['projected_mfu']:.2f})")
        ax.annotate(r["variant"], (r["arithmetic_intensity"], achieved), fontsize=7,
                    color=f"C{i}", textcoords="offset points", xytext=(6, 8 if i % 2 else -12))
    ax.set(xscale="log", yscale="log", xlabel="arithmetic intensity (FLOP / byte)",
           ylabel="attainable FLOP/s", title=title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    ax.text(0.01, 0.01, "projected from the CPU compilation, not measured", fontsize=7,
            transform=ax.transAxes)
    common.save_figure(fig, path)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="pilot")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--device", choices=(*DEVICES, "cpu"), default="h100")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                    help="override model.dtype (default: the preset's)")
    ap.add_argument("--output", default="benchmarks/out/cost_model")
    args = ap.parse_args(argv)
    variants = args.variants.split(",")
    if args.device == "cpu":
        c0 = preset_config(args.preset, variants[0], args.dtype)
        dev = measured_cpu(jnp.bfloat16 if c0.model.dtype == "bfloat16" else jnp.float32)
    else:
        dev = DEVICES[args.device]
    rows, details = [], {}
    for v in variants:
        row, details[v] = analyse(preset_config(args.preset, v, args.dtype), dev)
        rows.append(row)
        print(f"[{v}: compiled in {row['compile_s']:.0f} s, {row['flops_per_token'] / 1e6:,.0f} "
              f"MFLOP/token, {row['bytes_per_token'] / 1e3:,.0f} KB/token]", flush=True)
    print_report(rows, details, dev, args.preset)
    out = {"note": NOTE, "preset": args.preset, "device": args.device, "device_spec": dev,
           "dtype": args.dtype or rows[0]["dtype"], "launch_us_per_kernel": LAUNCH_US,
           "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "command": "python -m benchmarks.cost_model " + " ".join(
               argv if argv is not None else sys.argv[1:]),
           "compiled_on": common.device_info(), "rows": rows, "details": details}
    common.write_json(out, os.path.join(args.output, "results.json"))
    plot_roofline(rows, dev, os.path.join(args.output, "roofline.png"),
                  f"{args.preset} preset, projected on {dev['name']}")
    print(f"\nwrote {args.output}/results.json and roofline.png ({NOTE})")
    return rows


if __name__ == "__main__":
    main()
