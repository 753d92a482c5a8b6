"""Greedy decoding speed of every variant: incremental decoding (nested_jax/eval/decode.py:
carried key/value cache and memory state, one block forward per token, the loop on the
device) against a full forward per token (the whole padded sequence re-run for every new
token from a Python loop, as eval's scoring.greedy_decode does).

    python -m benchmarks.decode_speed --preset smoke --output benchmarks/out/decode
    python -m benchmarks.decode_speed --preset pilot --output benchmarks/out/decode_pilot   # GPU

Random-initialised models of the preset's shape (speed does not depend on the weights;
`--checkpoints ROOT` loads ROOT/<variant> training workdirs instead). Both decoders must
produce the same tokens (the `match` column). tokens/s = new tokens / wall seconds after
compilation, best of --repeats. HOPE variants also decode with --memorize (CMS updates
every completed segment). Table on stdout, results.json in --output.
"""

from __future__ import annotations

import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from nested_jax.eval.decode import Decoder, block_len
from nested_jax.model.variants import get as get_variant
from nested_jax.model.lm import init_params
from nested_jax.model.online import online_forward

VARIANTS = ("transformer", "titans", "hope", "hope_attention", "hope_hybrid")


def preset_config(name: str, variant: str):
    """smoke: configs/smoke.py (128 wide, 2 layers, 2k vocabulary, 128 tokens);
    pilot: configs/pilot.py (512 × 12, 32k vocabulary, 2048 tokens)."""
    if name == "smoke":
        from configs import smoke

        c = smoke.get_config()
        c.model.vocab_size = 2048
    else:
        from configs import pilot

        c = pilot.get_config()
        c.model.vocab_size = 32000
        # the segment scan as a loop: the pilot unrolls its 16 segments for its GPU training
        # step; the full-forward decoder timed here would then compile for minutes
        c.model.online.unroll_segments = 1
    c.model.variant = variant
    return c


def full_forward_decoder(fn, params, max_len: int):
    """next(tokens [1, max_len + 1], n) -> argmax after position n - 1, by one forward over
    the whole padded buffer (online variants: the segment scan with CMS updates off)."""
    if get_variant(fn.cfg.variant).online:
        def nxt(p, tokens, n):
            _, aux = online_forward(fn, p, tokens, step=0, update=False, collect_argmax=True)
            return aux["argmax"][0, n - 1]
    else:
        def nxt(p, tokens, n):
            logits = fn.bind(p)(tokens[:, :-1])
            return jnp.argmax(logits[0, n - 1]).astype(jnp.int32)
    return jax.jit(nxt)


def run_full(nxt, params, prompt, n_new, max_len, eos=3):
    buf = np.full((1, max_len + 1), eos, np.int32)
    buf[0, :prompt.shape[1]] = prompt[0]
    p = prompt.shape[1]
    for n in range(p, p + n_new):
        buf[0, n] = int(nxt(params, buf, n))
    return buf[0, p:p + n_new]


def bench_variant(c, args, fn=None, params=None) -> dict:
    if fn is None:
        fn, params = init_params(c.model, seed=0)
    max_len = int(c.train.seq_len)
    prompt = np.random.RandomState(0).randint(4, c.model.vocab_size, (1, args.prompt_len))
    n_new = max_len - args.prompt_len
    row = {"variant": c.model.variant, "block": block_len(c.model), "prompt": args.prompt_len,
           "new": n_new}

    dec = Decoder(fn, params, max_len=max_len)
    g = dec.generate(prompt, n_new, stop_at_eos=False)  # compiles
    row["compile_s"] = g.compile_s
    best = min(dec.generate(prompt, n_new, stop_at_eos=False).decode_s
               for _ in range(args.repeats))
    row["incremental_tok_s"] = n_new / best
    row["prefill_s"] = g.prefill_s

    nxt = full_forward_decoder(fn, params, max_len)
    run_full(nxt, params, prompt, 1, max_len)  # compile
    times, toks = [], None
    for _ in range(max(1, args.repeats - 1)):
        t0 = time.perf_counter()
        toks = run_full(nxt, params, prompt, n_new, max_len)
        times.append(time.perf_counter() - t0)
    row["full_forward_tok_s"] = n_new / min(times)
    row["speedup"] = row["incremental_tok_s"] / row["full_forward_tok_s"]
    row["match"] = float(np.mean(toks == g.tokens[0]))

    if get_variant(c.model.variant).online:
        mem = Decoder(fn, params, max_len=max_len, memorize=True)
        mem.generate(prompt, n_new, stop_at_eos=False)
        best = min(mem.generate(prompt, n_new, stop_at_eos=False).decode_s
                   for _ in range(args.repeats))
        row["memorize_tok_s"] = n_new / best
    return row


def main(argv=None) -> list[dict]:
    ap = common.parser(__doc__, "decode_speed")
    ap.add_argument("--preset", choices=("smoke", "pilot"), default="smoke")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--prompt-len", type=int, default=16, help="prompt tokens (the rest of "
                    "train.seq_len is generated)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per decoder (best kept)")
    ap.add_argument("--checkpoints", default=None,
                    help="folder with one training workdir per variant (default: random init)")
    ap.add_argument("--output", default=None, help="folder for results.json")
    args = ap.parse_args(argv)
    info = common.device_info()
    print(f"device: {info['device_kind']} × {info['device_count']} ({info['backend']}); "
          f"preset {args.preset}", flush=True)
    rows = []
    for variant in args.variants.split(","):
        c = preset_config(args.preset, variant)
        fn = params = None
        if args.checkpoints:
            from nested_jax.eval import restore

            loaded = restore.load(os.path.join(args.checkpoints, variant))
            c, fn, params = loaded.cfg, loaded.fn, loaded.params
        rows.append(bench_variant(c, args, fn, params))
        print(f"  {variant}: {rows[-1]['incremental_tok_s']:.0f} tokens/s incremental, "
              f"{rows[-1]['full_forward_tok_s']:.0f} full forward", flush=True)
    cols = [("variant", "variant", ""), ("block", "block", "d"), ("new", "new tok", "d"),
            ("incremental_tok_s", "incremental tok/s", ".0f"),
            ("full_forward_tok_s", "full-forward tok/s", ".0f"), ("speedup", "speed-up", ".1f"),
            ("memorize_tok_s", "memorize tok/s", ".0f"), ("match", "match", ".2f"),
            ("compile_s", "compile s", ".1f")]
    print(common.format_table(rows, cols))
    if args.output:
        common.write_json({"device": info, "preset": args.preset, "rows": rows,
                           "command": "python -m benchmarks.decode_speed " + " ".join(
                               argv if argv is not None else sys.argv[1:])},
                          os.path.join(args.output, "results.json"))
        print(f"wrote {args.output}/results.json")
    return rows


if __name__ == "__main__":
    common.run_script(main, "decode_speed")
