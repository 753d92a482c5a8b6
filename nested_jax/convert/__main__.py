"""python -m nested_jax.convert import-hf --input HF_DIR --output WORKDIR
python -m nested_jax.convert export-hf --checkpoint WORKDIR [--step N] --output HF_DIR
python -m nested_jax.convert stack --checkpoint WORKDIR --periods 128,512 --output WORKDIR2

import-hf: a local Hugging Face model folder of the Llama family (Llama 2/3/3.x, Qwen2/2.5,
TinyLlama, SmolLM, Mistral without sliding window: config.json, model.safetensors or its
sharded index, tokenizer.json) → an ordinary workdir that train (--config WORKDIR/config.py),
eval, generate, release and checkpoint verify take. export-hf: the inverse, for transformer
workdirs and stacked HOPE-Attention ones (their meta weights). stack: a transformer workdir → HOPE-Attention whose CMS levels start from its
MLPs (NL §7.3 ad-hoc level stacking; at inner learning rate 0 it is the source model). Exit status 0 done, 2 bad input (nothing is written then). See docs/pretrained.md.
"""

from __future__ import annotations

import json
import sys

from nested_jax.cli import ArgumentParser, run

PROG = "python -m nested_jax.convert"


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog=PROG, description="Convert Hugging Face models to and from "
                       "nested_jax workdirs.")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="command")
    i = sub.add_parser("import-hf", help="Hugging Face model folder → workdir")
    i.add_argument("--input", required=True, help="the Hugging Face model folder")
    i.add_argument("--output", required=True, help="the new workdir (must not exist)")
    e = sub.add_parser("export-hf", help="transformer (or stacked HOPE-Attention) workdir → Hugging Face folder")
    e.add_argument("--checkpoint", required=True, help="the workdir to export")
    e.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
    e.add_argument("--output", required=True, help="the new folder (must not exist)")
    s = sub.add_parser("stack", help="transformer workdir → HOPE-Attention by level stacking "
                       "(NL §7.3): CMS levels initialised from its MLPs")
    s.add_argument("--checkpoint", required=True, help="the transformer workdir")
    s.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
    s.add_argument("--variant", default="hope_attention", help="the stacked variant")
    s.add_argument("--periods", type=_periods, default=(128, 512),
                   help="comma-separated CMS periods in tokens, fast → slow (default 128,512)")
    s.add_argument("--lr", type=float, default=1e-2, help="every level's inner learning rate")
    s.add_argument("--mlp-level", default=None,
                   help="the level that carries the MLP's down projection (default: slowest)")
    s.add_argument("--segment-len", type=int, default=0,
                   help="online segment length (default: gcd of the periods)")
    s.add_argument("--seq-len", type=int, default=0,
                   help="training sequence length of the stacked model (default: the source's "
                        "train.seq_len); every level's period must be shorter, so it is read")
    s.add_argument("--output", required=True, help="the new workdir (must not exist)")
    return p


def _periods(text: str) -> tuple[int, ...]:
    import argparse

    try:
        out = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers")
    if not out or min(out) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive periods, e.g. 128,512")
    return out


def _body(args) -> int:
    from absl import logging as absl_logging

    from nested_jax.convert import workdir

    absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax INFO lines
    if args.cmd == "import-hf":
        from tqdm.auto import tqdm

        bar = tqdm(desc="import-hf", unit="tensor", dynamic_ncols=True, file=sys.stderr)

        def progress(done, total, name):
            bar.total = total
            bar.set_postfix_str(name[-40:])
            bar.update(done - bar.n)

        try:
            out = workdir.import_hf(args.input, args.output, progress=progress)
        finally:
            bar.close()
    elif args.cmd == "stack":
        from nested_jax.convert.stack import stack

        out = stack(args.checkpoint, args.output, variant=args.variant, periods=args.periods,
                    lr=args.lr, step=args.step, mlp_level=args.mlp_level,
                    segment_len=args.segment_len, seq_len=args.seq_len)
    else:
        out = workdir.export_hf(args.checkpoint, args.output, step=args.step)
    print(json.dumps(out, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    return run(lambda: _body(p.parse_args(argv)), prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
