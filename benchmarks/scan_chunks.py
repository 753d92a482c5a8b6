"""Scan-chunk benchmark: chunked Titans memories (and HOPE) against their token loops.

    python -m benchmarks.scan_chunks --preset quick|full [--dtype bfloat16] --output DIR

For each memory (linear: Titans matrix memory; mlp: σ(kW1)W2 with 4× hidden; hope:
self-modifying Titans from `nested_jax.ops.selfmod`) it times the token-loop
reference (chunk_size 1, jitted and vmapped over B, H exactly like the chunked
function) and the chunked dual form at several chunk sizes, forward and
forward+backward (gradient wrt every input and initial state), all in one process so
speed-ups are measured on the same machine in the same run. Timings are the minimum
(and median) over interleaved rounds (wall clock); speed-ups are given from both.
FLOPs come from the per-token formulas (docs/memories.md, "Cost per token";
forward+backward counted as 3× forward), compared with the best dense matmul timed in
the same run. Peak memory: device `memory_stats()` where the backend has it, else the
compiled executable's memory analysis. Writes a table to stdout, DIR/results.json
(one row per case), DIR/meta.json and DIR/scan_chunks.png.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from nested_jax.ops import memory, reference

PRESETS: dict[str, dict[str, Any]] = {
    # 2-core CPU, under a minute. Each memory: batch B, heads H, length T, chunk sizes.
    "quick": {
        "linear": dict(B=2, H=4, T=512, chunks=(16, 64)),
        "mlp": dict(B=1, H=4, T=256, chunks=(64,)),
        "hope": dict(B=1, H=2, T=128, chunks=(64,)),
        "budget_s": 3.0,
    },
    # The sizes: B=8, H=8, T=2048, dk=dv=64 (meant for a GPU).
    "full": {
        "linear": dict(B=8, H=8, T=2048, chunks=(1, 8, 16, 32, 64, 128, 256)),
        "mlp": dict(B=8, H=8, T=2048, chunks=(1, 8, 16, 32, 64, 128, 256)),
        "hope": dict(B=8, H=8, T=2048, chunks=(1, 8, 16, 32, 64, 128, 256)),
        "budget_s": 10.0,
    },
}
DK = DV = 64
MLP_HIDDEN_MULT = 4
HOPE_HIDDEN_MULT = 1  # configs/default.py selfmod.hidden_mult
HOPE_ETA_SCALE = 0.1


# --------------------------------------------------------------------------- inputs
def _unit(x):
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def titans_inputs(B, H, T, hidden=None, seed=0):
    """q, k (unit rows), v, gates in the model's initial ranges, per-head initial state."""
    ks = jax.random.split(jax.random.key(seed), 8)
    q = _unit(jax.random.normal(ks[0], (B, H, T, DK)))
    k = _unit(jax.random.normal(ks[1], (B, H, T, DK)))
    v = jax.random.normal(ks[2], (B, H, T, DV))
    theta = jax.random.uniform(ks[3], (B, H, T), minval=0.05, maxval=0.2)
    eta = jax.random.uniform(ks[4], (B, H, T), minval=0.4, maxval=0.9)
    alpha = jax.random.uniform(ks[5], (B, H, T), minval=0.0, maxval=0.05)
    if hidden is None:
        state = (0.1 * jax.random.normal(ks[6], (H, DK, DV)), jnp.zeros((H, DK, DV)))
    else:
        W1 = jax.random.normal(ks[6], (H, DK, hidden)) / np.sqrt(DK)
        W2 = jax.random.normal(ks[7], (H, hidden, DV)) / np.sqrt(hidden)
        state = ((W1, W2), (jnp.zeros_like(W1), jnp.zeros_like(W2)))
    return (q, k, v, theta, eta, alpha, *state)


def _grad_all(fn: Callable) -> Callable:
    """Forward + backward: gradient of Σ y wrt every (floating) input and initial state."""

    def loss(*args):
        return jnp.sum(fn(*args)[0])

    return lambda *args: jax.grad(loss, argnums=tuple(range(len(args))))(*args)


# ------------------------------------------------------------------------ memories
def linear_cases(cfg):
    B, H, T = cfg["B"], cfg["H"], cfg["T"]
    args = titans_inputs(B, H, T)
    token_loop = functools.partial(reference.titans_linear_reference, chunk_size=1)
    cases = {("token_loop", 1): memory.batched(token_loop)}
    for C in cfg["chunks"]:
        cases[("chunked", C)] = memory.batched(
            functools.partial(memory.titans_linear, chunk_size=C, remat_group=cfg["remat_group"],
                              coeff_method=cfg["coeff_method"])
        )
    flops = lambda C: memory.linear_flops_per_token(DK, DV, C)  # noqa: E731
    state_bytes = lambda C: 16.0 * DK * DV / C  # noqa: E731  fp32 W and S (docs/memories.md)
    return args, cases, flops, state_bytes


def mlp_cases(cfg):
    B, H, T = cfg["B"], cfg["H"], cfg["T"]
    hidden = MLP_HIDDEN_MULT * DK
    args = titans_inputs(B, H, T, hidden=hidden)
    token_loop = functools.partial(reference.titans_mlp_reference, chunk_size=1)
    cases = {("token_loop", 1): memory.batched(token_loop)}
    for C in cfg["chunks"]:
        cases[("chunked", C)] = memory.batched(
            functools.partial(memory.titans_mlp, chunk_size=C, remat_group=cfg["remat_group"],
                              coeff_method=cfg["coeff_method"])
        )
    P = hidden * (DK + DV)
    flops = lambda C: memory.mlp_flops_per_token(DK, hidden, DV, C)  # noqa: E731
    state_bytes = lambda C: 16.0 * P / C  # noqa: E731  4P·4/C (docs/memories.md)
    return args, cases, flops, state_bytes


def hope_cases(cfg):
    """HOPE self-modifying Titans (`nested_jax.ops.selfmod`): x, q [B,H,T,D], params per head."""
    from nested_jax.ops import selfmod  # owned by another engineer; API read from its docstrings

    B, H, T, D = cfg["B"], cfg["H"], cfg["T"], DK
    hidden = HOPE_HIDDEN_MULT * D
    keys = jax.random.split(jax.random.key(1), H + 2)
    params = jax.vmap(lambda k: selfmod.init_selfmod_params(k, D, hidden))(keys[:H])
    x = jax.random.normal(keys[H], (B, H, T, D))
    q = jax.random.normal(keys[H + 1], (B, H, T, D))

    def batched(fn):
        over_h = jax.vmap(fn, in_axes=(0, 0, 0))
        return jax.vmap(over_h, in_axes=(None, 0, 0))

    def make(fn, C):
        return batched(lambda p, x, q: fn(p, x, q, chunk_size=C, eta_scale=HOPE_ETA_SCALE))

    cases = {("token_loop", 1): make(reference.selfmod_titans_reference, 1)}
    for C in cfg["chunks"]:
        cases[("chunked", C)] = make(selfmod.selfmod_titans, C)
    # ≈ 14·P FLOPs per token for each of the five memories (k, v, mem map D→D, η and α map
    # D→1), P = D·h + h·out (docs/memories.md, "Cost per token"). Approximate, chunk-size
    # independent.
    P = 3 * (D * hidden + hidden * D) + 2 * (D * hidden + hidden)
    flops = lambda C: 14.0 * P  # noqa: E731
    state_bytes = lambda C: 16.0 * P / C  # noqa: E731
    return (params, x, q), cases, flops, state_bytes


MEMORIES = {"linear": linear_cases, "mlp": mlp_cases, "hope": hope_cases}


# ---------------------------------------------------------------------------- runner
def bench_memory(name, cfg, budget_s, mem_limit) -> tuple[list[dict[str, Any]], float]:
    """Compile every (impl, chunk, mode) case of one memory, time them interleaved
    together with a dense matmul. Returns (rows, the matmul's FLOP/s in this round)."""
    args, cases, flops_per_tok, bytes_per_tok = MEMORIES[name](cfg)
    dtype = jnp.dtype(cfg.get("dtype", "float32"))
    if dtype != jnp.float32:  # inputs and initial states in the compute dtype (e.g. bf16)
        args = jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating)
                            else a, args)
    B, H, T = cfg["B"], cfg["H"], cfg["T"]
    rows, runnable, todo = [], {}, {}
    for (impl, C), fn in cases.items():
        todo[(impl, C, "fwd")] = (fn, args)
        todo[(impl, C, "fwd_bwd")] = (_grad_all(fn), args)
    for key, res in common.compile_many(todo).items():
        impl, C, mode = key
        row = dict(memory=name, impl=impl, chunk_size=C, mode=mode, B=B, H=H, T=T, dk=DK, dv=DV,
                   dtype=dtype.name,
                   remat_group=cfg["remat_group"], coeff_method=cfg["coeff_method"])
        rows.append(row)
        if isinstance(res, Exception):  # report, keep benchmarking the rest
            row["error"] = f"compile failed: {type(res).__name__}: {str(res)[:200]}"
            continue
        compiled, row["compile_seconds"], mem = res
        row.update(mem)
        if (mem.get("compiled_bytes") or 0) > 0.8 * mem_limit:
            row["error"] = f"skipped: needs {mem['compiled_bytes'] / 2**30:.1f} GiB"
        else:
            runnable[key] = (compiled, args)
    by_key = {(r["impl"], r["chunk_size"], r["mode"]): r for r in rows}
    device_peaks = common.measure_device_peaks(runnable, by_key)
    mm, mm_args, mm_flops = common.matmul_case()
    timings = common.time_interleaved({**runnable, "matmul": (mm, mm_args)}, budget_s=budget_s)
    matmul_flops_per_sec = mm_flops / timings.pop("matmul")["min"]
    token = {m: timings.get(("token_loop", 1, m)) for m in ("fwd", "fwd_bwd")}
    for row in rows:
        key = (row["impl"], row["chunk_size"], row["mode"])
        if key not in timings:
            continue
        t, tok = timings[key], token[row["mode"]]
        mult = 1.0 if row["mode"] == "fwd" else 3.0
        n_tok = B * H * T
        flops = mult * n_tok * flops_per_tok(row["chunk_size"])
        row.update(
            seconds=t["min"],
            seconds_median=t["median"],
            samples=t["samples"],
            tokens_per_sec=B * T / t["min"],
            flops=flops,
            flops_per_sec=flops / t["min"],
            state_bytes_per_sec=mult * n_tok * bytes_per_tok(row["chunk_size"]) / t["min"],
            speedup_vs_token_loop=tok["min"] / t["min"] if tok else None,
            speedup_vs_token_loop_median=tok["median"] / t["median"] if tok else None,
        )
        if key in device_peaks:
            row["peak_bytes"], row["peak_bytes_source"] = device_peaks[key], "device_memory_stats"
        else:
            row["peak_bytes"] = row.get("compiled_bytes")
            row["peak_bytes_source"] = "compiled_memory_analysis"
    return rows, matmul_flops_per_sec


COLUMNS = [
    ("memory", "memory", ""),
    ("impl", "impl", ""),
    ("chunk_size", "C", "d"),
    ("mode", "mode", ""),
    ("seconds", "seconds", ".4f"),
    ("tokens_per_sec", "tok/s", ",.0f"),
    ("speedup_vs_token_loop", "speedup", ".1f"),
    ("speedup_vs_token_loop_median", "(median)", ".1f"),
    ("flops_per_sec", "FLOP/s", ".3g"),
    ("flops_fraction_of_matmul_peak", "of peak", ".3f"),
    ("peak_bytes", "peak MiB", ",.1f"),
    ("compile_seconds", "compile s", ".1f"),
    ("error", "note", ""),
]


def plot(rows, path):
    panels = []
    for name in dict.fromkeys(r["memory"] for r in rows):
        series, hlines = {}, {}
        for r in rows:
            if r["memory"] != name or r.get("tokens_per_sec") is None:
                continue
            if r["impl"] == "token_loop":
                hlines[f"token loop {r['mode']}"] = r["tokens_per_sec"]
            else:
                point = (r["chunk_size"], r["tokens_per_sec"])
                series.setdefault(f"chunked {r['mode']}", []).append(point)
        panels.append(dict(title=f"{name} memory", series=series, hlines=hlines))
    if panels:
        common.plot_panels(panels, path, xlabel="chunk size C", ylabel="tokens / s")


def main(argv=None):
    parser = common.parser(__doc__, "scan_chunks")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    parser.add_argument("--output", default="benchmarks/out/scan_chunks")
    parser.add_argument("--memories", default="linear,mlp,hope", help="comma list: linear,mlp,hope")
    parser.add_argument("--chunks", default=None, help="override the preset's chunk sizes: 16,64")
    parser.add_argument(
        "--remat-group", type=int, default=1,
        help="chunks per remat group of titans_* (0 = off). 1 (checkpoint every chunk) was the "
             "fastest fwd+bwd on a 2-core CPU and the smallest (linear C=64: 16 vs 18 ms, "
             "14 vs 21 MiB; MLP: 32 vs 59 ms, 15 vs 42 MiB); groups of 2-4 were slower.")
    parser.add_argument("--coeff-method", default="auto", choices=("auto", "cumulative", "log"),
                        help="how titans_* build the C×C coefficient matrix")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="dtype of the inputs and initial states (state bytes stay fp32-based)")
    ns = parser.parse_args(argv)

    t0 = time.perf_counter()
    preset = PRESETS[ns.preset]
    info = common.device_info()
    peak = common.matmul_peak_flops()
    peaks = [peak["flops_per_sec"]]
    mem_limit = common.available_memory_bytes()
    print(f"device: {info['backend']} {info['device_kind']} x{info['device_count']}, "
          f"jax {info['jax_version']}")
    rows = []
    for name in ns.memories.split(","):
        cfg = dict(preset[name], remat_group=ns.remat_group, coeff_method=ns.coeff_method,
                   dtype=ns.dtype)
        if ns.chunks:
            cfg["chunks"] = tuple(int(c) for c in ns.chunks.split(","))
        try:
            new, mm_flops = bench_memory(name, cfg, preset["budget_s"], mem_limit)
            peaks.append(mm_flops)
        except ImportError as e:  # HOOK: hope rows need nested_jax.ops.selfmod
            new = [dict(memory=name, impl="-", chunk_size=0, mode="-", error=f"unavailable: {e}")]
        rows += new
        print(f"[{name}: done at {time.perf_counter() - t0:.0f} s]", flush=True)
    # Matmul peak: the best dense matmul of the run (timed alone first, then interleaved
    # with every memory's cases, so a busy moment on a shared machine does not set it).
    peak_flops = max(peaks)
    print(f"dense matmul peak (best of run): {peak_flops / 1e9:.1f} GFLOP/s {peak['dtype']}")
    for r in rows:
        r.update(device=f"{info['backend']}:{info['device_kind']}", preset=ns.preset,
                 matmul_peak_flops_per_sec=peak_flops)
        if r.get("flops_per_sec") is not None:
            r["flops_fraction_of_matmul_peak"] = r["flops_per_sec"] / peak_flops
        if r.get("peak_bytes") is not None:
            r["peak_bytes_mib"] = r["peak_bytes"] / 2**20
    table_rows = [dict(r, peak_bytes=r.get("peak_bytes_mib")) for r in rows]
    print(common.format_table(table_rows, COLUMNS))
    os.makedirs(ns.output, exist_ok=True)
    common.write_json(rows, os.path.join(ns.output, "results.json"))
    meta = dict(device=info, matmul_peak_flops_per_sec=peak_flops, matmul_alone=peak,
                matmul_interleaved=peaks[1:], preset=ns.preset, config=PRESETS[ns.preset],
                dtype=ns.dtype)
    common.write_json(meta, os.path.join(ns.output, "meta.json"))
    plot(rows, os.path.join(ns.output, "scan_chunks.png"))
    elapsed = time.perf_counter() - t0
    print(f"wrote {ns.output}/results.json, scan_chunks.png ({elapsed:.0f} s total)")
    return rows


if __name__ == "__main__":
    common.run_script(main, "scan_chunks")
