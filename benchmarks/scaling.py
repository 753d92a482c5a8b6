"""Data-parallel scaling: training tokens/s on 1, 2, …, N devices.

    python -m benchmarks.scaling                    # all local GPUs, or 1,2,4 CPU devices
    python -m benchmarks.scaling --devices 1,2,4,8 --variants transformer,hope_attention
    python -m benchmarks.scaling --scaling strong --global-batch 32 --mode gspmd --fsdp 2

Every device count runs in its own subprocess (JAX fixes the device set at start-up):
CUDA_VISIBLE_DEVICES=0..n-1 on GPU machines, XLA_FLAGS=--xla_force_host_platform_device_count=n
on CPU. Each worker builds the mesh, the sharded state and the jitted train step exactly as
`python -m nested_jax.train` does (nested_jax.train.parallel), feeds random tokens, and times
rounds of back-to-back steps (dispatch ahead, one block at the end, as the loop runs); the
best round counts. Weak scaling (default) keeps the per-device batch fixed, so ideal
tokens/s grows with n; strong scaling fixes the global batch.

On CPU the simulated devices share the same cores: the numbers measure the overhead of the
sharded program, not a speed-up. Table on stdout; results.json and scaling.png in --output.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

PRESETS = {  # model shape per preset (vocab fixed: tokens are random)
    "tiny": dict(d_model=64, n_layers=2, n_heads=4, seq_len=128, segment=32, periods=(32, 64, 128),
                 vocab=2048),
    "smoke": dict(d_model=128, n_layers=2, n_heads=4, seq_len=128, segment=32,
                  periods=(32, 64, 128), vocab=2048),
    "base": dict(d_model=768, n_layers=12, n_heads=12, seq_len=2048, segment=256,
                 periods=(256, 1024, 2048), vocab=32000),
}


def gpu_count() -> int:
    """GPUs visible, without initialising JAX here (that would take GPU memory)."""
    vis = os.environ.get("CUDA_VISIBLE_DEVICES")
    if vis is not None:
        return len([d for d in vis.split(",") if d.strip()])
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def worker_env(n: int, gpus: int) -> dict:
    env = dict(os.environ)
    if gpus:
        vis = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = [d.strip() for d in vis.split(",")] if vis else [str(i) for i in range(gpus)]
        env["CUDA_VISIBLE_DEVICES"] = ",".join(ids[:n])
    else:
        env["JAX_PLATFORMS"] = "cpu"
        flags = [f for f in env.get("XLA_FLAGS", "").split()
                 if not f.startswith("--xla_force_host_platform_device_count")]
        env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={n}"])
    return env


def bench_config(args, variant: str, n: int):
    from configs import default

    p = PRESETS[args.preset]
    c = default.get_config()
    m = c.model
    m.variant, m.vocab_size = variant, args.vocab or p["vocab"]
    m.d_model, m.n_layers, m.n_heads = p["d_model"], p["n_layers"], p["n_heads"]
    m.dtype = args.dtype
    m.online.segment_len = p["segment"]
    m.cms.names = ("fast", "mid", "slow")
    m.cms.periods = p["periods"]
    m.cms.optimizers, m.cms.lrs = ("precond",) * 3, (1e-3,) * 3
    c.train.seq_len = p["seq_len"]
    c.train.batch_size = args.per_device_batch * n if args.scaling == "weak" else args.global_batch
    c.train.steps = 1000
    c.optim.warmup_steps = 1
    c.mesh.mode, c.mesh.fsdp = args.mode, args.fsdp
    return c


def run_worker(args) -> dict:
    """In the subprocess: time the sharded train step on every visible device."""
    import jax
    import numpy as np
    from flax import nnx

    from benchmarks import common
    from nested_jax.model.lm import abstract_model, build_model
    from nested_jax.model.loss import streams
    from nested_jax.model.online import init_fast, strip_kv
    from nested_jax.train import mesh as mesh_lib, optim, parallel, step as step_lib

    n = jax.device_count()
    c = bench_config(args, args.variant, n)
    tx = optim.build_optimizer(c.optim, c.train.steps)
    fn = abstract_model(c.model)
    b, t = c.train.batch_size, c.train.seq_len

    def init():
        model = build_model(c.model, c.seed)
        fast = (strip_kv(init_fast(model, c.model, b, t))
                if streams(c.model) else None)
        return step_lib.init_train_state(nnx.to_pure_dict(nnx.split(model)[1]), tx, fast)

    mesh = mesh_lib.make_mesh(c.mesh)
    parallel.check_config(c, mesh)
    shardings = parallel.state_shardings(c, mesh, jax.eval_shape(init))
    state = jax.jit(init, out_shardings=shardings)()
    step = parallel.jit_train_step(c, mesh, shardings, fn=fn, tx=tx,
                                   lr_schedule=optim.schedule(c.optim, c.train.steps))
    rng = np.random.default_rng(0)
    batches = [{"tokens": mesh_lib.global_batch(
        rng.integers(0, c.model.vocab_size, (b, t + 1), dtype=np.int32), mesh)}
        for _ in range(2)]
    t0 = time.perf_counter()
    state, m = step(state, batches[0])
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    best = float("inf")
    t_start = time.perf_counter()
    for r in range(args.max_rounds):
        t0 = time.perf_counter()
        for i in range(args.steps):
            state, m = step(state, batches[i % 2])
        jax.block_until_ready((state, m))
        best = min(best, (time.perf_counter() - t0) / args.steps)
        if r + 1 >= args.min_rounds and time.perf_counter() - t_start > args.budget:
            break
    info = common.device_info()
    return {"variant": args.variant, "devices": n, "mesh": dict(mesh.shape), "mode": c.mesh.mode,
            "global_batch": b, "seq_len": t, "step_s": best, "tokens_per_sec": b * t / best,
            "compile_s": compile_s, "loss": float(m["loss"]), "rounds": r + 1,
            "device_kind": info["device_kind"], "backend": info["backend"],
            "jax_version": info["jax_version"]}


def main(argv=None) -> list[dict]:
    from benchmarks import common  # (jax only imported, never started, in the parent)

    ap = common.parser(__doc__, "scaling")
    ap.add_argument("--devices", default="", help="comma list; default 1,2,4,… up to all GPUs "
                    "(or 1,2,4 simulated CPU devices)")
    ap.add_argument("--variants", default="transformer,hope_attention")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--scaling", choices=("weak", "strong"), default="weak")
    ap.add_argument("--per-device-batch", type=int, default=4)
    ap.add_argument("--global-batch", type=int, default=16, help="strong scaling only")
    ap.add_argument("--mode", choices=("shard_map", "gspmd"), default="shard_map")
    ap.add_argument("--fsdp", type=int, default=1)
    ap.add_argument("--vocab", type=int, default=0, help="0 = the preset's")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--steps", type=int, default=5, help="steps per timed round")
    ap.add_argument("--min-rounds", type=int, default=2)
    ap.add_argument("--max-rounds", type=int, default=10)
    ap.add_argument("--budget", type=float, default=10.0, help="seconds of timing per case")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per subprocess")
    ap.add_argument("--output", default="benchmarks/out/scaling")
    ap.add_argument("--variant", help=argparse.SUPPRESS)  # worker mode
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        print("RESULT " + json.dumps(run_worker(args)), flush=True)
        return []

    gpus = gpu_count()
    if args.devices:
        counts = [int(x) for x in args.devices.split(",")]
    else:
        top = gpus or 4
        counts = sorted({1 << k for k in range(top.bit_length()) if 1 << k <= top} | {top})
    if gpus and max(counts) > gpus:
        ap.error(f"--devices asks for {max(counts)} devices; {gpus} GPU(s) visible.")
    rows = []
    for variant in args.variants.split(","):
        for n in counts:
            cmd = [sys.executable, "-m", "benchmarks.scaling", "--worker", "--variant", variant,
                   *[a for a in (argv if argv is not None else sys.argv[1:])]]
            try:
                out = subprocess.run(cmd, env=worker_env(n, gpus), capture_output=True, text=True,
                                     timeout=args.timeout)
            except subprocess.TimeoutExpired:
                rows.append({"variant": variant, "devices": n, "error": "timeout"})
                print(f"{variant} × {n}: timed out", flush=True)
                continue
            lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
            if out.returncode != 0 or not lines:
                err = (out.stderr.strip().splitlines() or ["?"])[-1][:300]
                rows.append({"variant": variant, "devices": n, "error": err})
                print(f"{variant} × {n}: failed: {err}", flush=True)
                continue
            row = json.loads(lines[-1][len("RESULT "):])
            rows.append(row)
            print(f"{variant} × {n}: {row['tokens_per_sec']:,.0f} tokens/s "
                  f"(step {row['step_s'] * 1e3:.1f} ms, compile {row['compile_s']:.1f} s)",
                  flush=True)
    for row in rows:  # efficiency against the same variant on one device
        base = next((r for r in rows if r["variant"] == row["variant"] and r["devices"] == 1
                     and "error" not in r), None)
        if base and "error" not in row:
            row["speedup"] = row["tokens_per_sec"] / base["tokens_per_sec"]
            row["efficiency"] = row["speedup"] / row["devices"]  # ideal: n × one device
    from benchmarks import common

    ok = [r for r in rows if "error" not in r]
    kind = ok[0]["device_kind"] if ok else "?"
    print(f"\n{args.scaling} scaling, preset {args.preset}, mode {args.mode}, fsdp {args.fsdp}, "
          f"device: {kind}" + (" (simulated CPU devices share the same cores)" if not gpus else ""))
    print(common.format_table(rows, [
        ("variant", "variant", ""), ("devices", "devices", ""), ("global_batch", "batch", ""),
        ("step_s", "step s", ".4f"), ("tokens_per_sec", "tokens/s", ",.0f"),
        ("speedup", "speedup", ".2f"), ("efficiency", "efficiency", ".2f"),
        ("compile_s", "compile s", ".1f"), ("error", "error", "")]))
    kept = {k: v for k, v in vars(args).items() if k not in ("worker", "variant")}
    common.write_json({"args": kept, "gpus": gpus, "rows": rows},
                      os.path.join(args.output, "results.json"))
    _plot(rows, os.path.join(args.output, "scaling.png"), f"{args.scaling} scaling on {kind}")
    print(f"wrote {args.output}/results.json and scaling.png")
    return rows


def _plot(rows, path, title):
    import matplotlib

    from benchmarks import common

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for i, v in enumerate(dict.fromkeys(r["variant"] for r in rows)):
        pts = sorted((r["devices"], r["tokens_per_sec"], r.get("efficiency"))
                     for r in rows if r["variant"] == v and "error" not in r)
        if not pts:
            continue
        xs, ys, eff = zip(*pts)
        a.plot(xs, ys, "o-", color=f"C{i}", label=v)
        if xs[0] == 1:
            a.plot(xs, [ys[0] * x for x in xs], "--", color=f"C{i}", lw=0.8, label=f"{v} ideal")
        b.plot(xs, [e if e is not None else float("nan") for e in eff], "o-", color=f"C{i}",
               label=v)
    a.set(xlabel="devices", ylabel="tokens/s", title=title)
    b.set(xlabel="devices", ylabel="efficiency (tokens/s ÷ n × 1-device)", ylim=(0, 1.1))
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    common.save_figure(fig, path)


if __name__ == "__main__":
    from benchmarks import common

    common.run_script(main, "scaling")
