"""Compiled-step cost model: FLOPs, bytes, kernels and memory of the real training step,
and a time projection on a named GPU. A projection, not a GPU measurement.

    python -m benchmarks.cost_model --preset pilot \\
        --variants transformer,titans,hope,hope_attention,hope_hybrid --device h100 \\
        --output benchmarks/out/cost_pilot
    presets: smoke, pilot, mid (configs/smoke.py, pilot.py, mid_stage2.py), pilot_smoke
    (the shape `train_throughput --preset smoke` measures), paper_760m, paper_1p3b;
    --device h100 | h200 | cpu; --flags default,while_graphs (XLA flag sets to compare,
    benchmarks.gpu_aot.FLAG_SETS); --compile-on gpu | cpu; --devices N (the step of an
    N-GPU host with the preset's mesh, e.g. FSDP: `--preset stack_3b --devices 8`)

For every variant: build the preset's config exactly as `python -m nested_jax.train` does
(tokenizer vocabulary, `finalize_config`), lower the train step that
`nested_jax.train.parallel.jit_train_step` builds (shard_map step on a one-device mesh,
donation, online segment scan, remat as configured) from abstract inputs (nothing is
allocated or run), and compile it:

- `--compile-on gpu` (default for h100/h200 when the `gpu-aot` extra is installed): for
  the GPU itself, deviceless (`benchmarks.gpu_aot`). The counts are those of the XLA:GPU
  program: FLOPs and bytes of its optimized HLO (`benchmarks.hlo_cost`, every while body
  × its trip count), device ops (kernels, cuBLAS / cuDNN calls, copies, memsets) of its
  thunk sequence after XLA's thunk passes, command buffers (CUDA graphs), host-driven
  loop iterations, and the GPU executable's own memory analysis (bytes per device).
- `--compile-on cpu` (the fallback without the extra; the table says so): the CPU
  compilation, whose fusions differ; kernels are then instructions that do work × trip
  counts, an estimate of GPU launches, and memory is the CPU executable's.

Projection (device peaks in `benchmarks.gpu_aot.PEAKS`: dense bf16 FLOP/s, HBM bytes/s):
    roofline = max(FLOPs / peak, bytes / bandwidth)         bound = compute | memory
    launch   = host-launched ops × LAUNCH_US + graph launches × GRAPH_LAUNCH_US
               + ops inside graphs × GRAPH_NODE_US          (benchmarks.gpu_aot; CPU
               compile: every kernel × LAUNCH_US)
    comm     = collective bytes per device × (n−1)/n ÷ link bandwidth (`--devices n` > 1:
               the all-gathers / reduce-scatters of FSDP; NVLink, no overlap assumed)
    in-kernel = inside our Pallas kernels (hope on a GPU, `model.selfmod.kernel`), which XLA's
               cost analysis cannot see: launches × waves × one program's FLOPs ÷ one
               SM's FP32 rate (`gpu_aot.in_kernel_seconds`: a floor, ideal issue)
    time/step = roofline + launch + comm + in-kernel;  projected tokens/s = tokens/step ÷ time/step
    projected_mfu = model FLOPs (6·N + attention, benchmarks.train_throughput) ÷ (time · peak)
Every term is reported. The launch constants are estimates (see benchmarks/gpu_aot.py);
`launch/gpu_check.sh` compares with a measured step when a GPU is lent.

Table on stdout; DIR/results.json (rows + per-variant detail) and DIR/roofline.png.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import os
import re
import shutil
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common, gpu_aot, hlo_cost
from benchmarks.train_throughput import (VARIANTS, apply_override, model_flops_per_token,
                                         split_variants)
from nested_jax.model.variants import get as get_variant, registry

PRESETS = {"smoke": "configs.smoke", "pilot": "configs.pilot", "mid": "configs.mid_stage2",
           "pilot_smoke": "configs.pilot_smoke",  # pilot_smoke: train_throughput's smoke shape
           "paper_760m": "configs.paper_760m", "paper_1p3b": "configs.paper_1p3b",
           # a Llama-3.2-3B / -1B turned into HOPE-Attention by level stacking (no weights needed)
           "stack_3b": "configs.stack_llama", "stack_1b": "configs.stack_llama:1b"}
DEVICES = gpu_aot.PEAKS  # dense bf16 matmul FLOP/s (no sparsity), HBM bytes/s, memory
LAUNCH_US = gpu_aot.LAUNCH_US
NOTES = {
    "gpu": ("PROJECTION from the XLA:GPU compilation of the training step for {device} "
            "(deviceless): roofline + launch model, not a GPU measurement."),
    "cpu": ("PROJECTION from the CPU compilation of the training step (XLA:CPU fusions; "
            "{why}): roofline + kernels × LAUNCH_US, not a GPU measurement."),
}


def preset_config(preset: str, variant: str, dtype: str | None = None,
                  batch_size: int | None = None, devices: int = 1):
    """The preset's config with `variant` (and `dtype`, per-device `batch_size`), finalized
    like the train CLI does (`batch_size` per device: the global batch is batch_size × devices;
    without it, the preset's global train.batch_size). A variant may carry `+`-separated overrides, as in
    `benchmarks.train_throughput` (`hope+model.selfmod.chunk_size=32`). The paper presets take
    the variant as an argument (like `--config configs/paper_760m.py:titans`: matched d_ff,
    Titans' window)."""
    from nested_jax.data import loader
    from nested_jax.train.validate import finalize_config

    variant, *overrides = variant.split("+")
    module, _, arg = PRESETS[preset].partition(":")
    mod = importlib.import_module(module)
    c = mod.get_config(variant) if preset.startswith("paper_") else (
        mod.get_config(arg) if arg else mod.get_config())
    c.model.variant = variant
    for o in overrides:
        apply_override(c, *o.split("=", 1))
    if dtype:
        c.model.dtype = dtype
    if batch_size:
        c.train.batch_size = batch_size * devices
    # a preset that states its vocabulary (a converted model's) needs no tokenizer here
    finalize_config(c, c.model.vocab_size or loader.tokenizer_for(c.data).vocab_size)
    return c


def lower_train_step(c, devices=None):
    """Lower the training step of config `c` from abstract inputs on `devices` (default:
    this machine's first device; GPU compile-only devices from `benchmarks.gpu_aot`), one
    device being the per-GPU program of a data-parallel run. Returns (lowered, abstract
    params). The model is built and traced with the first device as JAX's default device,
    so a model choosing its kernels by platform (model.selfmod.kernel = "auto") and
    Pallas's Triton lowering both see the GPU it is compiled for."""
    target = jax.default_device(devices[0]) if devices else contextlib.nullcontext()
    with target:
        return _lower_train_step(c, devices)


def _lower_train_step(c, devices):
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
    mesh = mesh_lib.make_mesh(c.mesh, jax.devices()[:1] if devices is None else devices)
    shardings = parallel.state_shardings(c, mesh, state)
    step = parallel.jit_train_step(c, mesh, shardings, fn=abstract_model(c.model), tx=tx,
                                   lr_schedule=optim.schedule(c.optim, c.train.steps))
    state_in = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            state, shardings)
    batch = {"tokens": jax.ShapeDtypeStruct((b, t + 1), jnp.int32,
                                            sharding=mesh_lib.batch_sharding(mesh))}
    return step.lower(state_in, batch), state["params"]


def compile_train_step(c):
    """`lower_train_step` compiled for this machine. Returns (compiled, abstract params)."""
    lowered, params = lower_train_step(c)
    return lowered.compile(), params


def analytic_flops_per_token(c, params) -> float:
    """Model FLOPs (6·N + attention, `model_flops_per_token`) plus, with `model.remat`, the
    blocks' forward once more in the backward pass (2·N_blocks + 4·L·T·D of attention):
    the dense work a plain transformer's compiled step must do."""
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    flops = model_flops_per_token(c, n)
    if c.model.remat:
        n_blocks = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params["blocks"]))
        attn = get_variant(c.model.variant).attention
        flops += 2.0 * n_blocks + (4.0 * c.model.n_layers * c.train.seq_len * c.model.d_model
                                   if attn else 0.0)
    return flops


def cms_taken_fraction(c) -> float | None:
    """How often a CMS level's update branch runs: a level of period P updates after S/P of
    the segments (S the segment length); every level's update costs the same, so the mean
    over levels weights each `conditional` exactly."""
    live = [p for p in c.model.cms.periods if p > 0]  # period 0: outer-only, no update branch
    if not get_variant(c.model.variant).online or not live:
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


def comm_seconds(costs: dict, dev: dict, n_devices: int) -> float:
    """Time of the step's collectives on the GPUs' links: each device sends (n−1)/n of every
    collective's result bytes (ring all-gather / reduce-scatter / all-reduce), no overlap."""
    if n_devices <= 1:
        return 0.0
    sent = sum(costs.get("collective_bytes", {}).values()) * (n_devices - 1) / n_devices
    return sent / dev["link_bandwidth"]


def project(costs: dict, tokens: int, model_fpt: float, dev: dict,
            launch_s: float | None = None, n_devices: int = 1) -> dict:
    """Roofline + launch (+ communication) time of one step (module docstring). `costs` has
    flops, bytes and kernels of ONE device's program; launch_s defaults to kernels × LAUNCH_US
    (no command buffers); `tokens` is the step's global tokens (all devices)."""
    t_compute = costs["flops"] / dev["peak_flops"]
    t_memory = costs["bytes"] / dev["bandwidth"]
    roof = max(t_compute, t_memory)
    launch = costs["kernels"] * LAUNCH_US * 1e-6 if launch_s is None else launch_s
    comm = comm_seconds(costs, dev, n_devices)
    kernel = costs.get("kernel_s", 0.0)  # inside our Pallas kernels (gpu_aot.in_kernel_seconds)
    t = roof + launch + comm + kernel
    local = tokens / n_devices  # the tokens one device's program processes
    return {"flops_per_token": costs["flops"] / local, "bytes_per_token": costs["bytes"] / local,
            "arithmetic_intensity": costs["flops"] / max(costs["bytes"], 1.0),
            "roofline_s": roof, "launch_s": launch, "comm_s": comm, "step_time_s": t,
            "in_kernel_s": kernel, "in_kernel_flops_per_step": costs.get("kernel_flops", 0.0),
            "compute_time_s": t_compute, "memory_time_s": t_memory,
            "bound": ("launch" if launch > max(roof, comm) else "communication" if comm > roof
                      else "compute" if t_compute >= t_memory else "memory"),
            "projected_tokens_per_sec": tokens / t,
            "roofline_tokens_per_sec": tokens / roof,
            "projected_mfu": model_fpt * tokens / (t * dev["peak_flops"] * n_devices),
            "kernels_per_step": costs["kernels"],
            "launch_floor_s": costs["kernels"] * LAUNCH_US * 1e-6}


def compile_counts(c, device: str, compile_on: str, flags: str = "default",
                   dump_dir: str | None = None, n_devices: int = 1) -> dict:
    """Compile config `c`'s train step (for the GPU deviceless, or for this CPU) and count
    it: {"costs" (flops, bytes, kernels, loops, ...), "thunks" (GPU only), "launch_s",
    "memory", "compile_s", "params"}."""
    t0 = time.perf_counter()
    frac = cms_taken_fraction(c)
    if compile_on == "gpu":
        lowered, params = lower_train_step(c, gpu_aot.gpu_devices(device, n_devices))
        keep = dump_dir is not None
        dump_dir = dump_dir or os.path.join(
            os.environ.get("TMPDIR", "/tmp"), f"nested_jax_gpu_aot_{os.getpid()}")
        comp = gpu_aot.compile_for_gpu(lowered, dump_dir, gpu_aot.FLAG_SETS[flags])
        compile_s = time.perf_counter() - t0
        dump = gpu_aot.read_dump(comp.dump_dir, frac)
        if not keep:
            shutil.rmtree(comp.dump_dir, ignore_errors=True)
        th = dump["thunks"]
        costs = {**dump["hlo"], "kernels": th["device_ops"], "hlo_kernels": dump["hlo"]["kernels"]}
        mem = gpu_aot.memory_bytes(comp.compiled)
        costs["kernel_s"], costs["kernel_flops"] = gpu_aot.in_kernel_seconds(
            th, gpu_aot.PEAKS[device])
        return {"costs": costs, "thunks": th, "launch_s": gpu_aot.launch_seconds(th),
                "memory": mem, "compile_s": compile_s, "params": params,
                "xla": hlo_cost.xla_cost_analysis(comp.compiled)}
    compiled, params = compile_train_step(c)
    compile_s = time.perf_counter() - t0
    costs = hlo_cost.hlo_costs(compiled.as_text(), cond_taken_fraction=frac)
    m = common.compiled_memory(compiled)
    mem = {"temp": m.get("temp_bytes"), "peak": m.get("compiled_bytes")}
    return {"costs": costs, "thunks": None, "launch_s": None, "memory": mem,
            "compile_s": compile_s, "params": params, "xla": hlo_cost.xla_cost_analysis(compiled)}


def analyse(c, dev: dict, device: str = "h100", compile_on: str = "cpu",
            flags: str = "default", dump_dir: str | None = None,
            n_devices: int = 1) -> tuple[dict, dict]:
    """(row, detail) of one config: compile, count, project."""
    r = compile_counts(c, device, compile_on, flags, dump_dir, n_devices)
    costs, params = r["costs"], r["params"]
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    tokens = c.train.batch_size * c.train.seq_len
    model_fpt = model_flops_per_token(c, n_params)
    row = {"variant": c.model.variant, "flags": flags, "compiled_for": compile_on,
           "params": n_params, "tokens_per_step": tokens,
           "batch": c.train.batch_size, "seq_len": c.train.seq_len, "d_model": c.model.d_model,
           "n_layers": c.model.n_layers, "dtype": c.model.dtype, "remat": bool(c.model.remat),
           "flops_per_step": costs["flops"], "bytes_per_step": costs["bytes"],
           "transcendentals_per_step": costs["transcendentals"],
           "model_flops_per_token": model_fpt,
           "analytic_flops_per_token": analytic_flops_per_token(c, params),
           "devices": n_devices, "mesh": {"data": c.mesh.data, "fsdp": c.mesh.fsdp,
                                          "mode": c.mesh.mode},
           "collective_bytes_per_step": sum(costs.get("collective_bytes", {}).values()),
           **project(costs, tokens, model_fpt, dev, r["launch_s"], n_devices),
           "while_loops": costs["while_loops"], "compile_s": r["compile_s"],
           "temp_bytes": r["memory"].get("temp"), "device_bytes": r["memory"].get("peak")}
    th = r["thunks"]
    if th is not None:
        row.update({k: th[k] for k in ("kernels", "gemms", "dnn", "copies", "memsets",
                                       "graph_launches", "ops_in_graphs", "host_ops",
                                       "host_loop_iterations")})
        row["host_driven_loops"] = sum(1 for lp in th["loops"] if lp["host_driven"])
        row["hlo_kernels"] = costs["hlo_kernels"]
    row["flops_vs_model"] = row["flops_per_token"] / model_fpt
    row["flops_vs_analytic"] = row["flops_per_token"] / row["analytic_flops_per_token"]
    detail = {k: costs[k] for k in ("loops", "by_source", "top_bytes", "top_flops",
                                    "custom_calls", "conditionals", "cond_taken_fraction")}
    detail["xla_cost_analysis_loop_bodies_once"] = r["xla"]
    detail["memory"] = r["memory"]
    if th is not None:
        detail["thunk_loops"] = th["loops"]
        detail["thunk_kinds"] = th["kinds"]
        detail["custom_kernels"] = th.get("custom_kernels", {})  # Pallas kernels: runs/step
    return row, detail


COLUMNS = [("variant", "variant", ""), ("flags", "flags", ""), ("params_M", "params(M)", ".1f"),
           ("mflops_per_token", "MFLOP/tok", ",.0f"), ("model_mflops", "model MFLOP/tok", ",.0f"),
           ("flops_vs_model", "÷model", ".2f"), ("flops_vs_analytic", "÷analytic", ".2f"),
           ("kb_per_token", "KB/tok", ",.0f"),
           ("arithmetic_intensity", "FLOP/B", ".0f"), ("bound", "bound", ""),
           ("projected_tokens_per_sec", "proj tok/s", ",.0f"), ("projected_mfu", "proj MFU", ".3f"),
           ("kernels_per_step", "kernels/step", ",.0f"), ("graph_launches", "graphs/step", ",.0f"),
           ("host_loop_iterations", "host iters", ",.0f"),
           ("roof_ms", "roofline ms", ".1f"), ("launch_ms", "launch ms", ".1f"),
           ("comm_ms", "comm ms", ".1f"), ("in_kernel_ms", "in-kernel ms", ".1f"),
           ("step_ms", "step ms", ".1f"), ("device_gib", "GiB/device", ".1f"),
           ("compile_s", "compile s", ".0f")]


def print_report(rows, details, dev, preset, note):
    print(f"\n{note}\npreset {preset} on {dev['name']}: {dev['peak_flops'] / 1e12:.4g} TFLOP/s, "
          f"{dev['bandwidth'] / 1e12:.4g} TB/s (ridge {dev['peak_flops'] / dev['bandwidth']:.0f} "
          f"FLOP/B); launch model {gpu_aot.LAUNCH_US} µs per host-launched op, "
          f"{gpu_aot.GRAPH_LAUNCH_US} µs per graph, {gpu_aot.GRAPH_NODE_US} µs per op in a graph")
    gib = lambda b: b / 2**30 if b else None  # noqa: E731
    view = [dict(r, params_M=r["params"] / 1e6, mflops_per_token=r["flops_per_token"] / 1e6,
                 model_mflops=r["model_flops_per_token"] / 1e6, kb_per_token=r["bytes_per_token"] / 1e3,
                 roof_ms=r["roofline_s"] * 1e3, launch_ms=r["launch_s"] * 1e3,
                 comm_ms=r.get("comm_s", 0.0) * 1e3, in_kernel_ms=r.get("in_kernel_s", 0.0) * 1e3,
                 step_ms=r["step_time_s"] * 1e3, device_gib=gib(r.get("device_bytes")))
            for r in rows]
    print(common.format_table(view, COLUMNS))
    for r in rows:
        d = details[_key(r)]
        print(f"\n{r['variant']} [{r['flags']}]: {r['bytes_per_step'] / 1e9:.2f} GB and "
              f"{r['flops_per_step'] / 1e12:.2f} TFLOP per step; {r['while_loops']} while loops "
              f"(XLA's cost_analysis, loop bodies once: "
              f"{d['xla_cost_analysis_loop_bodies_once'].get('flops', 0) / 1e12:.3f} TFLOP)")
        if "thunk_loops" in d:
            print(f"  device ops {r['kernels_per_step']:,.0f} = kernels {r['kernels']:,.0f} + "
                  f"cuBLAS {r['gemms']:,.0f} + cuDNN {r['dnn']:,.0f} + copies {r['copies']:,.0f} + "
                  f"memsets {r['memsets']:,.0f}; {r['ops_in_graphs']:,.0f} of them in "
                  f"{r['graph_launches']:,.0f} graph launches; host-driven loops "
                  f"{r['host_driven_loops']} ({r['host_loop_iterations']:,.0f} iterations)")
            for lp in d["thunk_loops"][:10]:
                print(f"  thunk loop {'  ' * lp['depth']}{lp['hlo']:<12} ×{lp['trip_count']:<4} "
                      f"run {lp['executions']:>6,.0f}× "
                      f"{'host-driven' if lp['host_driven'] else 'in a graph'}")
        for lp in d["loops"][:8]:
            print(f"  loop {'  ' * lp['depth']}×{lp['trip_count']:<4} run {lp['executions']:>6,.0f}× "
                  f"{lp['bytes_per_run'] / max(r['bytes_per_step'], 1):6.1%} of bytes  "
                  f"{lp['flops_per_run'] / max(r['flops_per_step'], 1):6.1%} of FLOPs  "
                  f"{lp['source'][-80:]}")
        share = lambda x, key: x[key] / max(r[f"{key}_per_step"], 1)  # noqa: E731
        kernels = max(r.get("hlo_kernels", r["kernels_per_step"]), 1)
        for src in d["by_source"][:6]:
            print(f"  source {share(src, 'bytes'):6.1%} of bytes {share(src, 'flops'):6.1%} of FLOPs "
                  f"{src['kernels'] / kernels:6.1%} of kernels  {src['source'][-70:]}")
        for op in d["top_bytes"][:4]:
            print(f"  op     {share(op, 'bytes'):6.1%} of bytes  kernels {op['kernels']:>9,.0f}  "
                  f"{op['op'][-90:]}")


def _key(row) -> str:
    return row["variant"] if row["flags"] == "default" else f"{row['variant']}[{row['flags']}]"


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
    ax.text(0.01, 0.01, f"projected from the {rows[0]['compiled_for'].upper()} compilation "
            "(roofline + launches), not measured", fontsize=7, transform=ax.transAxes)
    common.save_figure(fig, path)


def main(argv=None) -> list[dict]:
    ap = common.parser(__doc__, "cost_model")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="pilot")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help="comma-separated; a variant may carry +-separated config overrides, "
                         "e.g. hope+model.selfmod.chunk_size=32")
    ap.add_argument("--device", choices=(*DEVICES, "cpu"), default="h100")
    ap.add_argument("--compile-on", choices=("gpu", "cpu"), default=None,
                    help="compile for the GPU deviceless (default when the gpu-aot extra is "
                         "installed) or for this CPU")
    ap.add_argument("--flags", default="default",
                    help=f"comma-separated XLA flag sets to compare ({', '.join(gpu_aot.FLAG_SETS)})")
    ap.add_argument("--dump-dir", default=None,
                    help="keep XLA's dump (HLO, thunk sequence) here, one folder per case")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                    help="override model.dtype (default: the preset's)")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="sequences per device (default: the preset's train.batch_size); the "
                         "step compiled is one device's program of a data-parallel run")
    ap.add_argument("--devices", type=int, default=1,
                    help="GPUs of one host the step runs on, with the preset's mesh (e.g. FSDP); "
                         "the counts are one device's program, tokens/s the whole step's")
    ap.add_argument("--output", default="benchmarks/out/cost_model")
    args = ap.parse_args(argv)
    if args.devices < 1:
        ap.error(f"--devices {args.devices}: give a positive number of GPUs")
    variants = split_variants(args.variants)
    names = tuple(registry())
    bad_v = sorted({v.split("+")[0] for v in variants} - set(names))
    if bad_v:
        ap.error(f"unknown --variants {bad_v}; choose from {', '.join(names)} (each may carry "
                 "+key=value overrides)")
    flag_sets = args.flags.split(",")
    bad = [f for f in flag_sets if f not in gpu_aot.FLAG_SETS]
    if bad:
        ap.error(f"unknown --flags {bad}; choose from {sorted(gpu_aot.FLAG_SETS)}")
    compile_on, why = args.compile_on, ""
    if args.device == "cpu":
        compile_on = "cpu"
        why = "projected on this CPU"
    elif compile_on is None:
        compile_on = "gpu" if gpu_aot.plugin_name() else "cpu"
        why = "" if compile_on == "gpu" else "FALLBACK: the gpu-aot extra is not installed"
    elif compile_on == "cpu":
        why = "asked for with --compile-on cpu"
    if compile_on == "gpu":
        from jax._src import xla_bridge

        if not xla_bridge.backends_are_initialized():  # compile-only GPU devices: no GPU needed
            jax.config.update("jax_platforms", "cpu")
    elif flag_sets != ["default"]:
        ap.error("--flags other than 'default' need the GPU compile (--compile-on gpu)")
    if compile_on == "cpu" and args.devices > 1:
        ap.error("--devices > 1 needs the GPU compile (the gpu-aot extra; --compile-on gpu)")
    note = NOTES[compile_on].format(device=args.device, why=why)
    if args.device == "cpu":
        c0 = preset_config(args.preset, variants[0], args.dtype, args.batch_size, args.devices)
        dev = measured_cpu(jnp.bfloat16 if c0.model.dtype == "bfloat16" else jnp.float32)
    else:
        dev = DEVICES[args.device]
    rows, details = [], {}
    for v in variants:
        for fl in flag_sets:
            dump = (os.path.join(args.dump_dir, re.sub(r"[^\w.-]", "_", f"{v}_{fl}"))
                    if args.dump_dir else None)
            row, detail = analyse(preset_config(args.preset, v, args.dtype, args.batch_size,
                                                args.devices), dev,
                                  device=args.device, compile_on=compile_on, flags=fl,
                                  dump_dir=dump, n_devices=args.devices)
            row["variant"] = v  # with its overrides, if any
            details[_key(row)] = detail
            rows.append(row)
            print(f"[{_key(row)}: compiled for {compile_on} in {row['compile_s']:.0f} s, "
                  f"{row['kernels_per_step']:,.0f} kernels/step, "
                  f"{row['flops_per_token'] / 1e6:,.0f} MFLOP/token, "
                  f"{row['bytes_per_token'] / 1e3:,.0f} KB/token]", flush=True)
    print_report(rows, details, dev, args.preset, note)
    out = {"note": note, "preset": args.preset, "device": args.device, "device_spec": dev,
           "compiled_for": compile_on, "flag_sets": {f: gpu_aot.FLAG_SETS[f] for f in flag_sets},
           "dtype": args.dtype or rows[0]["dtype"],
           "launch_model_us": {"host_op": gpu_aot.LAUNCH_US, "graph": gpu_aot.GRAPH_LAUNCH_US,
                               "op_in_graph": gpu_aot.GRAPH_NODE_US},
           "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "command": "python -m benchmarks.cost_model " + " ".join(
               argv if argv is not None else sys.argv[1:]),
           "compiled_on": common.device_info(), "rows": rows, "details": details}
    common.write_json(out, os.path.join(args.output, "results.json"))
    plot_roofline(rows, dev, os.path.join(args.output, "roofline.png"),
                  f"{args.preset} preset, projected on {dev['name']}")
    print(f"\nwrote {args.output}/results.json and roofline.png ({note})")
    return rows


if __name__ == "__main__":
    common.run_script(main, "cost_model")
