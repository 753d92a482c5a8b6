"""Shared benchmark helpers: timing, memory, matmul peak, table, JSON and PNG output.

Timing uses wall-clock seconds after `block_until_ready`; `time_interleaved` runs the
candidates round-robin and keeps each one's minimum, so slow drifts in machine load
(shared CPUs) hit every candidate alike.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import platform
import statistics
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp


def parser(doc: str, module: str):
    """The argument parser of `python -m benchmarks.<module>`: the project's CLI contract
    (nested_jax.cli: a bad flag or value is one `error: … Fix: …` line and exit status 2)."""
    from nested_jax.cli import ArgumentParser

    return ArgumentParser(prog=f"python -m benchmarks.{module}",
                          description=doc.strip().split("\n")[0])


def run_script(main: Callable, module: str) -> None:
    """`if __name__ == "__main__"` of a benchmark: run main() under the contract and exit
    (main's own int, else 0)."""
    import sys

    from nested_jax.cli import run

    def body():
        rc = main()
        return rc if isinstance(rc, int) else 0

    sys.exit(run(body, prog=f"python -m benchmarks.{module}"))


def device_info() -> dict[str, Any]:
    """Backend, device kind and count, host, jax version: stored with every result."""
    dev = jax.devices()[0]
    return {
        "backend": jax.default_backend(),
        "device_kind": dev.device_kind,
        "device_count": jax.device_count(),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "jax_version": jax.__version__,
    }


def compile_many(cases: dict[Any, tuple[Callable, Sequence[Any]]], workers: int | None = None):
    """Lower every {key: (fn, args)} here, compile them on a thread pool (XLA compiles
    one executable per thread). Returns {key: (executable, compile seconds, memory
    analysis)} or {key: exception} for cases that failed to compile."""
    lowered, out = {}, {}
    for key, (fn, args) in cases.items():
        try:
            lowered[key] = jax.jit(fn).lower(*args)
        except Exception as e:  # noqa: BLE001 - reported per case
            out[key] = e

    def compile_one(low):
        t0 = time.perf_counter()
        compiled = low.compile()
        return compiled, time.perf_counter() - t0, compiled_memory(compiled)

    with concurrent.futures.ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        futures = {key: pool.submit(compile_one, low) for key, low in lowered.items()}
        for key, fut in futures.items():
            try:
                out[key] = fut.result()
            except Exception as e:  # noqa: BLE001
                out[key] = e
    return out


def compiled_memory(compiled) -> dict[str, Any]:
    """Bytes from the executable's memory analysis (arguments + outputs + temporaries)."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - some backends do not implement it
        m = None
    if m is None:
        return {"compiled_bytes": None}
    total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
    return {
        "compiled_bytes": int(total - m.alias_size_in_bytes),
        "temp_bytes": int(m.temp_size_in_bytes),
    }


def device_memory_stats() -> dict[str, int] | None:
    """`memory_stats()` of device 0 (GPU/TPU), or None where the backend has none (CPU)."""
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001
        return None
    return stats or None


def measure_device_peaks(runnable, rows_by_key) -> dict[Any, int]:
    """Per-case peak device bytes from `memory_stats()` (GPU/TPU; {} on CPU).

    The device keeps one process-wide high-water mark that cannot be reset, so cases
    run once in increasing order of compiled size: a case that raises the mark used
    (new mark − bytes in use before it); a case that does not keeps its compiled value.
    """
    stats = device_memory_stats()
    if not stats or "peak_bytes_in_use" not in stats:
        return {}
    peaks, mark = {}, stats["peak_bytes_in_use"]
    order = sorted(runnable, key=lambda k: rows_by_key[k].get("compiled_bytes") or 0)
    for key in order:
        fn, args = runnable[key]
        base = device_memory_stats().get("bytes_in_use", 0)
        jax.block_until_ready(fn(*args))
        new_mark = device_memory_stats()["peak_bytes_in_use"]
        if new_mark > mark:
            peaks[key], mark = new_mark - base, new_mark
    return peaks


def available_memory_bytes() -> int:
    """Memory one benchmark case may use: device limit, else the host's available RAM."""
    stats = device_memory_stats()
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        return info["MemAvailable"]
    except OSError:
        return 1 << 62


def run_once(fn: Callable, *args) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t0


def time_interleaved(
    cases: dict[str, tuple[Callable, Sequence[Any]]],
    min_rounds: int = 3,
    max_rounds: int = 20,
    budget_s: float = 5.0,
    min_case_s: float = 0.05,
) -> dict[str, dict[str, float]]:
    """Round-robin timing of already-compiled `cases` {name: (fn, args)}.

    One warm-up call each, then rounds until `min_rounds` are done and either the
    time budget or `max_rounds` is spent; in each round a case repeats until it has
    run `min_case_s` (so cheap cases get many samples). Returns {name: {min, median,
    samples}} over all calls.
    """
    for fn, args in cases.values():
        jax.block_until_ready(fn(*args))
    times: dict[str, list[float]] = {name: [] for name in cases}
    t_start = time.perf_counter()
    for r in range(max_rounds):
        for name, (fn, args) in cases.items():
            spent = 0.0
            while spent < min_case_s or spent == 0.0:
                dt = run_once(fn, *args)
                times[name].append(dt)
                spent += dt
        if r + 1 >= min_rounds and time.perf_counter() - t_start > budget_s:
            break
    return {
        n: {"min": min(ts), "median": statistics.median(ts), "samples": len(ts)}
        for n, ts in times.items()
    }


def matmul_case(n: int | None = None, dtype=jnp.float32) -> tuple[Callable, tuple, float]:
    """(jitted n×n @ n×n, its operands, its FLOPs) to time next to other cases."""
    if n is None:
        n = 1024 if jax.default_backend() == "cpu" else 8192
    key_a, key_b = jax.random.split(jax.random.key(0))
    a = jax.random.normal(key_a, (n, n), dtype)
    b = jax.random.normal(key_b, (n, n), dtype)
    return jax.jit(jnp.matmul), (a, b), 2.0 * n**3


def matmul_peak_flops(n: int | None = None, dtype=jnp.float32, reps: int = 5) -> dict[str, Any]:
    """Dense-matmul FLOP/s of this machine, measured now: best of `reps` n×n @ n×n."""
    mm, args, flops = matmul_case(n, dtype)
    jax.block_until_ready(mm(*args))
    best = min(run_once(mm, *args) for _ in range(reps))
    return {"n": args[0].shape[0], "dtype": jnp.dtype(dtype).name, "seconds": best,
            "flops_per_sec": flops / best}


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """Plain-text table; columns are (key, header, format spec) and missing keys print '-'."""

    def cell(row, key, spec):
        val = row.get(key)
        if val is None:
            return "-"
        return format(val, spec) if spec else str(val)

    body = [[cell(r, k, s) for k, _, s in columns] for r in rows]
    heads = [h for _, h, _ in columns]
    widths = [max([len(h)] + [len(b[i]) for b in body]) for i, h in enumerate(heads)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(heads), line(["-" * w for w in widths])] + [line(b) for b in body])


def write_json(obj: Any, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, default=float)


def save_figure(fig, path: str) -> None:
    """Lay out, write (creating the folder) and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_panels(panels: Sequence[dict[str, Any]], path: str, *, xlabel: str, ylabel: str) -> None:
    """One log-log panel per dict {title, series: {label: [(x, y)]}, hlines: {label: y}}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for i, (label, pts) in enumerate(panel.get("series", {}).items()):
            if pts:
                xs, ys = zip(*sorted(pts))
                ax.plot(xs, ys, marker="o", color=f"C{i % 10}", label=label)
        for i, (label, y) in enumerate(panel.get("hlines", {}).items()):
            ax.axhline(y, ls="--", lw=1, color=f"C{i % 10}", label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set(title=panel["title"], xlabel=xlabel, ylabel=ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, path)
