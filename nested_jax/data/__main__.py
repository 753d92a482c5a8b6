"""CLI: `python -m nested_jax.data {tokenizer,prepare} ...` (thin: parses flags, calls the library).

  python -m nested_jax.data prepare --preset sample --output data/sample        # vendored mixture
  python -m nested_jax.data prepare --manifest my_corpus.json --output data/mine
  python -m nested_jax.data tokenizer --input my.txt --vocab-size 8000 --output tok/my_8k
  python -m nested_jax.data tokenizer --input fineweb/000_00000.parquet --field text --output tok/fw_32k

Inputs: .txt, .jsonl (.xz/.bz2/.gz/.zst compressed ok), .parquet (the --field column), folders;
.parquet and .zst need the corpora extra (pip install 'nested_jax[corpora]').

Bad input (a missing, empty, binary, truncated or corrupt input file, a missing text column, an
unknown preset, a malformed manifest, an output that cannot be written, a missing optional reader
package) is one `error: … Fix: …` paragraph and exit status 2.
"""

import json
import os
import shlex
import sys
import time

from nested_jax.cli import (ArgumentParser, UserError, add_alias, check_output_dir,
                            check_output_file, int_at_least, run)

PROG = "python -m nested_jax.data"


def _sources_from_args(args) -> list:
    from nested_jax.data import presets, sources
    if args.manifest:
        m = presets.get_preset(args.manifest) if args.manifest in presets.PRESETS else sources.load_manifest(args.manifest)
        return list(m.sources)
    if not args.input:
        raise UserError("no input", fix="give --input FILE (repeatable) or --manifest PATH_OR_PRESET.")
    out = []
    for i, path in enumerate(args.input):
        d = {"domain": f"input{i}", "path": path, "format": args.format, "field": args.field}
        if args.split_field:
            d["split"] = {"field": args.split_field}
        out.append(sources.Source.from_dict(d))
    return out


def cmd_tokenizer(args) -> None:
    from nested_jax.data import spm_train
    check_output_file(args.output, "--output")  # the prefix of .model/.vocab/.json
    srcs = _sources_from_args(args)
    for src in srcs:
        src.check_readers()  # a missing optional reader (pyarrow, zstandard) fails before any work
    stats = spm_train.train_tokenizer(
        srcs, args.output, vocab_size=args.vocab_size, model_type=args.model_type,
        character_coverage=args.character_coverage, sample_limit=args.sample_limit,
        input_sentence_size=args.input_sentence_size, split=None if args.split == "all" else args.split,
        seed=args.seed, num_threads=args.workers, command="python -m nested_jax.data " + shlex.join(sys.argv[1:]))
    cov = stats["coverage"]
    print(f"wrote {args.output}.model/.vocab/.json  vocab={stats['vocab_size']} sha256={stats['sha256'][:16]}…  "
          f"train {stats['seconds']['train']} s  tokens/word={cov['tokens_per_word']:.3f}  "
          f"single-token words={cov['single_token_word_share']:.1%}")


def cmd_prepare(args) -> None:
    from nested_jax.data import prepare, presets, sources
    if bool(args.preset) == bool(args.manifest):
        raise UserError("give exactly one of --preset NAME or --manifest PATH",
                        fix=f"e.g. --preset sample (presets: {', '.join(sorted(presets.PRESETS))}).")
    check_output_dir(args.output, "--output")
    m = presets.get_preset(args.preset) if args.preset else sources.load_manifest(args.manifest)
    t0 = time.time()
    stats = prepare.prepare(m, args.output, tokenizer=args.tokenizer or m.tokenizer or "novels_2k",
                            row_len=args.row_len, shard_rows=args.shard_rows,
                            workers=args.workers or os.cpu_count() or 1, threads=args.workers,
                            progress=not args.no_progress)
    summary = {d: {s: v["tokens"] for s, v in splits.items()} for d, splits in stats["domains"].items()}
    print(f"wrote {args.output} in {time.time() - t0:.1f} s; tokens per domain/split: {json.dumps(summary)}")


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("tokenizer", help="train a SentencePiece tokenizer (+ coverage stats JSON)")
    t.add_argument("--input", action="append",
                   help="text/jsonl file (.xz/.bz2/.gz/.zst ok), .parquet file or directory; repeatable")
    t.add_argument("--format", default="auto",
                   help="txt | jsonl | dir | wikitext | parquet (default: from the name)")
    t.add_argument("--field", default="text", help="jsonl field / parquet column holding the text")
    t.add_argument("--split-field", default="",
                   help="jsonl field / parquet column naming each record's split (train/valid)")
    t.add_argument("--manifest", default="", help="a manifest file or preset name instead of --input")
    t.add_argument("--split", default="train", help="train on this split only: train | valid | all")
    t.add_argument("--output", "--out", dest="output", required=True,
                   help="output prefix, e.g. nested_jax/assets/tokenizers/novels_2k")
    t.add_argument("--vocab-size", type=int, default=32000)
    t.add_argument("--model-type", default="unigram", choices=["unigram", "bpe"])
    t.add_argument("--character-coverage", type=float, default=0.9995)
    t.add_argument("--sample-limit", type=int, default=200_000, help="max lines drawn per input (0 = all)")
    t.add_argument("--input-sentence-size", type=int, default=0, help="SentencePiece's own sample (0 = all)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--workers", type=int_at_least(0), default=0,
                   help="training threads (0 = all cores)")
    add_alias(t, "--threads", "--workers", type=int_at_least(0))
    t.set_defaults(fn=cmd_tokenizer)

    r = sub.add_parser("prepare", help="clean, dedup, tokenise and pack a manifest into .npy shards")
    r.add_argument("--preset", default="", help="novels | sample | full (built-in manifests over vendored data)")
    r.add_argument("--manifest", default="", help="a .json or .py manifest file")
    r.add_argument("--output", "--out", dest="output", required=True,
                   help="output directory (gets stats.json and <domain>/<split>/*.npy)")
    r.add_argument("--tokenizer", default="", help="shipped name or .model path (default: manifest's, else novels_2k)")
    r.add_argument("--row-len", type=int, default=0, help="tokens per packed row (default: the manifest's)")
    r.add_argument("--shard-rows", type=int, default=0, help="rows per shard (default: the manifest's)")
    r.add_argument("--workers", type=int, default=0, help="cleaning processes and tokeniser threads (0 = all cores)")
    r.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    r.set_defaults(fn=cmd_prepare)
    return p


def _body(argv) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except KeyError as e:  # a missing jsonl field or manifest key: the message names it
        raise UserError(e.args[0] if e.args else str(e)) from None
    except (ValueError, OSError) as e:  # the data library's input errors name the file and the fix
        if isinstance(e, OSError) and e.errno is not None and not isinstance(e, FileNotFoundError):
            raise  # permission and other file-system refusals: nested_jax.cli.run words them
        raise UserError(str(e), fix="check the input files, --manifest/--preset and flags; see "
                        f"`{PROG} {args.command} --help`.") from None


def main(argv=None) -> int:
    return run(lambda: _body(argv), prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
