"""Training throughput of every model variant, side by side in one run.

    python -m benchmarks.train_throughput --preset smoke --output benchmarks/out/throughput
    python -m benchmarks.train_throughput --preset pilot ...        # GPU: the pilot shape

For each variant: compile time, step time (interleaved timing, so machine-load drifts hit
every variant alike), tokens/s, peak memory (compiled memory analysis / device stats),
FLOPs per step from XLA's cost analysis and the MFU estimate against this machine's dense
matmul FLOP/s measured in the same run. `--train-steps N` then trains each variant N steps
on the vendored novels (32k tokenizer) and reports the first/last loss, to show the speed
comes with a falling loss. Table on stdout, results.json and throughput.png in --output.

A variant may carry config overrides, `+`-separated, to compare ablations side by side
(commas inside brackets belong to the value):
    --variants hope,hope+model.selfmod.mem_read=boundary,hope+model.cms.periods=(32,64,0)

Presets: `smoke` is the reproduction's smoke shape (configs/pilot_smoke.py: width 128,
2 layers, seq 64, batch 4, 32k vocabulary), `smoke_train` the shape `python -m nested_jax.train
--config configs/smoke.py` trains (width 128, 2 layers, seq 128, batch 16, segment 32,
novels_2k tokenizer), `pilot` configs/pilot.py (GPU).

The PyTorch reproduction's smoke HOPE (same shape as --preset smoke) trains at 114 tokens/s on
these 2-core CPU machines (project guide, measured side by side); that figure is recorded, not
re-measured here.
"""

from __future__ import annotations

import functools
import os
import time

import jax
import numpy as np

from benchmarks import common
from configs import pilot, pilot_smoke, repro, smoke
from nested_jax.model.lm import init_params
from nested_jax.model.variants import get as get_variant
from nested_jax.train import optim, step as step_lib

VARIANTS = ("transformer", "titans", "hope_attention", "hope", "hope_hybrid")
REPRODUCTION_SMOKE_TOKENS_PER_SEC = 114.0  # PyTorch reproduction, smoke HOPE, 2-core CPU


def apply_override(c, dotted: str, text: str) -> None:
    """One `key=value` override (value parsed like the train CLI's: Python literals)."""
    import ast

    node = c
    *parents, leaf = dotted.split(".")
    for p in parents:
        node = node[p]
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    if isinstance(node[leaf], tuple) and not isinstance(value, tuple):
        value = (value,) * len(node[leaf])  # one value for every level
    node[leaf] = value


PRESETS = ("smoke", "smoke_train", "pilot")


def split_variants(text: str) -> list[str]:
    """"a,b+x=(1,2),c" → ["a", "b+x=(1,2)", "c"]: commas inside brackets stay in the value."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return [v for v in out + [cur] if v]


def preset_config(name: str, variant: str, segment_len: int = 0):
    variant, *overrides = variant.split("+")
    if name == "smoke_train":  # configs/smoke.py as the train CLI builds it (its tokenizer)
        from nested_jax.data import loader
        from nested_jax.train.validate import finalize_config

        c = smoke.get_config()
        c.model.variant = variant
        if segment_len:
            c.model.online.segment_len = segment_len
        for o in overrides:
            apply_override(c, *o.split("=", 1))
        finalize_config(c, loader.tokenizer_for(c.data).vocab_size)
        return c
    c = (pilot_smoke if name == "smoke" else pilot).get_config()
    c.model.variant = variant
    if segment_len:  # keep the reproduction's period ratios at another segment length
        repro_periods = (1, 4, 16) if name == "smoke" else (1, 4, 32, 128)
        repro.cms_levels(c, repro_periods, lr=c.model.cms.lrs[0], segment_len=segment_len,
                         seq_len=c.train.seq_len)
    c.model.vocab_size = 32000
    c.optim.warmup_steps = 1
    for o in overrides:
        apply_override(c, *o.split("=", 1))
    return c


def model_flops_per_token(c, n_params: int) -> float:
    """6·N (tied head included in N) + attention scores/values 12·L·T·D for attention variants."""
    attn = get_variant(c.model.variant).attention
    return 6.0 * n_params + (12.0 * c.model.n_layers * c.train.seq_len * c.model.d_model if attn else 0.0)


def build_step(c):
    """(jitted train step that donates its state, fresh() -> a new initial state, #params)."""
    fn, params = init_params(c.model, c.seed)
    tx = optim.build_optimizer(c.optim, max(c.train.steps, 10))
    fresh = lambda: step_lib.init_train_state(init_params(c.model, c.seed)[1], tx)  # noqa: E731
    step = functools.partial(step_lib.train_step, fn=fn, tx=tx,
                             lr_schedule=optim.schedule(c.optim, max(c.train.steps, 10)))
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    return jax.jit(step, donate_argnums=0), fresh, n_params


def real_batches(c, n: int):
    from nested_jax.data import loader

    it = loader.make_train_iterator(c.data, seq_len=c.train.seq_len, batch_size=c.train.batch_size,
                                    seed=0)
    return [next(it)["tokens"] for _ in range(n)]


def main(argv=None) -> list[dict]:
    ap = common.parser(__doc__, "train_throughput")
    ap.add_argument("--preset", choices=PRESETS, default="smoke")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--train-steps", type=int, default=30, help="steps on real text (0 = skip)")
    ap.add_argument("--budget", type=float, default=20.0, help="seconds of interleaved timing")
    ap.add_argument("--segment-len", type=int, default=0,
                    help="online segment length override (0 = the preset's)")
    ap.add_argument("--output", default="benchmarks/out/throughput")
    args = ap.parse_args(argv)
    variants = split_variants(args.variants)
    info = common.device_info()
    peak = common.matmul_peak_flops()
    print(f"device: {info['device_kind']} × {info['device_count']} ({info['backend']}); "
          f"dense matmul {peak['flops_per_sec'] / 1e9:.1f} GFLOP/s")

    rows, cases, states, steps = [], {}, {}, {}
    batches = None
    for v in variants:
        c = preset_config(args.preset, v, args.segment_len)
        if batches is None:
            batches = real_batches(c, max(args.train_steps, 1))
        step, fresh, n_params = build_step(c)
        steps[v] = (step, fresh)
        state = fresh()
        batch = {"tokens": jax.numpy.asarray(batches[0])}
        t0 = time.perf_counter()
        lowered = step.lower(state, batch)
        compiled = lowered.compile()
        compile_s = time.perf_counter() - t0
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        flops = float(cost.get("flops", 0.0)) if cost else 0.0
        mem = common.compiled_memory(compiled)
        tokens = c.train.batch_size * c.train.seq_len
        rows.append({"variant": v, "params_M": n_params / 1e6, "compile_s": compile_s,
                     "tokens_per_step": tokens, "flops_per_step": flops,
                     "compiled_bytes": mem.get("compiled_bytes"),
                     "model_flops_per_token": model_flops_per_token(c, n_params),
                     "batch": c.train.batch_size, "seq_len": c.train.seq_len,
                     "d_model": c.model.d_model, "n_layers": c.model.n_layers,
                     "segment_len": c.model.online.segment_len,
                     "cms_periods": list(c.model.cms.periods)})
        states[v] = [state]

        def run(v=v, step=step, batch=batch):
            st, m = step(states[v][0], batch)
            states[v][0] = st
            return m["loss"]

        cases[v] = (run, ())
    # Peak device memory per variant where the backend reports it (GPU/TPU), else the
    # executable's arguments + outputs + temporaries.
    peaks = common.measure_device_peaks(cases, {r["variant"]: r for r in rows})
    for r in rows:
        peak_b = peaks.get(r["variant"], r.pop("compiled_bytes"))
        r["peak_memory_MB"] = peak_b / 2**20 if peak_b else None
    # Several consecutive steps per round (min_case_s): a training run keeps one model hot in
    # the caches, which one step at a time round-robin would not.
    timing = common.time_interleaved(cases, budget_s=args.budget, min_case_s=1.5)
    for r in rows:
        t = timing[r["variant"]]["median"]
        r["step_s"] = t
        r["tokens_per_sec"] = r["tokens_per_step"] / t
        # MFU in the PaLM sense: model FLOPs (6·params + attention per token), not counting the
        # extra work of the online algorithm (teach signal, inner updates).
        r["mfu"] = r["model_flops_per_token"] * r["tokens_per_sec"] / peak["flops_per_sec"]
        if args.preset == "smoke":
            r["x_reproduction"] = r["tokens_per_sec"] / REPRODUCTION_SMOKE_TOKENS_PER_SEC

    if args.train_steps > 0:  # falling loss on real text, fresh state per variant
        for r in rows:
            step, fresh = steps[r["variant"]]  # the step compiled above: no second compile
            state = fresh()
            losses = []
            for b in batches[: args.train_steps]:
                state, m = step(state, {"tokens": jax.numpy.asarray(b)})
                losses.append(float(m["loss"]))
            r["loss_first"], r["loss_last"] = losses[0], float(np.mean(losses[-3:]))

    cols = [("variant", "variant", ""), ("params_M", "params(M)", ".2f"),
            ("compile_s", "compile(s)", ".1f"), ("step_s", "step(s)", ".4f"),
            ("tokens_per_sec", "tokens/s", ",.0f"), ("x_reproduction", "x repro", ".1f"),
            ("mfu", "MFU", ".3f"), ("peak_memory_MB", "peak MB", ".0f"),
            ("loss_first", "loss first", ".3f"), ("loss_last", "loss last", ".3f")]
    print(common.format_table(rows, cols))
    out = {"preset": args.preset, "device": info, "matmul_peak": peak, "rows": rows,
           "reproduction_smoke_tokens_per_sec": REPRODUCTION_SMOKE_TOKENS_PER_SEC}
    common.write_json(out, os.path.join(args.output, "results.json"))
    _plot(rows, os.path.join(args.output, "throughput.png"), args.preset, info)
    print(f"wrote {args.output}/results.json and throughput.png")
    return rows


def _plot(rows, path, preset, info):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.8))
    names = [r["variant"] for r in rows]
    ax.barh(names, [r["tokens_per_sec"] for r in rows], color="C0")
    if preset == "smoke":
        ax.axvline(REPRODUCTION_SMOKE_TOKENS_PER_SEC, color="C3", ls="--",
                   label=f"PyTorch reproduction ({REPRODUCTION_SMOKE_TOKENS_PER_SEC:.0f} tok/s)")
        ax.axvline(20 * REPRODUCTION_SMOKE_TOKENS_PER_SEC, color="C2", ls=":", label="20× target")
        ax.legend(fontsize=8)
    ax.set_xlabel("training tokens/s")
    ax.set_title(f"{preset} shape on {info['device_kind']} × {info['device_count']}")
    common.save_figure(fig, path)


if __name__ == "__main__":
    common.run_script(main, "train_throughput")
