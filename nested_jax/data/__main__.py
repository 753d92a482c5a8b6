"""CLI: `python -m nested_jax.data {tokenizer,prepare} ...` (thin: parses flags, calls the library)."""

import argparse
import json
import os
import shlex
import sys
import time


def _sources_from_args(args) -> list:
    from nested_jax.data import presets, sources
    if args.manifest:
        m = presets.get_preset(args.manifest) if args.manifest in presets.PRESETS else sources.load_manifest(args.manifest)
        return list(m.sources)
    if not args.input:
        raise SystemExit("error: give --input FILE (repeatable) or --manifest PATH_OR_PRESET.")
    out = []
    for i, path in enumerate(args.input):
        d = {"domain": f"input{i}", "path": path, "format": args.format, "field": args.field}
        if args.split_field:
            d["split"] = {"field": args.split_field}
        out.append(sources.Source.from_dict(d))
    return out


def cmd_tokenizer(args) -> None:
    from nested_jax.data import spm_train
    stats = spm_train.train_tokenizer(
        _sources_from_args(args), args.out, vocab_size=args.vocab_size, model_type=args.model_type,
        character_coverage=args.character_coverage, sample_limit=args.sample_limit,
        input_sentence_size=args.input_sentence_size, split=None if args.split == "all" else args.split,
        seed=args.seed, num_threads=args.threads, command="python -m nested_jax.data " + shlex.join(sys.argv[1:]))
    cov = stats["coverage"]
    print(f"wrote {args.out}.model/.vocab/.json  vocab={stats['vocab_size']} sha256={stats['sha256'][:16]}…  "
          f"train {stats['seconds']['train']} s  tokens/word={cov['tokens_per_word']:.3f}  "
          f"single-token words={cov['single_token_word_share']:.1%}")


def cmd_prepare(args) -> None:
    from nested_jax.data import prepare, presets, sources
    if bool(args.preset) == bool(args.manifest):
        raise SystemExit("error: give exactly one of --preset NAME or --manifest PATH.")
    m = presets.get_preset(args.preset) if args.preset else sources.load_manifest(args.manifest)
    t0 = time.time()
    stats = prepare.prepare(m, args.out, tokenizer=args.tokenizer or m.tokenizer or "novels_2k",
                            row_len=args.row_len, shard_rows=args.shard_rows,
                            workers=args.workers or os.cpu_count() or 1, threads=args.workers,
                            progress=not args.no_progress)
    summary = {d: {s: v["tokens"] for s, v in splits.items()} for d, splits in stats["domains"].items()}
    print(f"wrote {args.out} in {time.time() - t0:.1f} s; tokens per domain/split: {json.dumps(summary)}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m nested_jax.data", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("tokenizer", help="train a SentencePiece tokenizer (+ coverage stats JSON)")
    t.add_argument("--input", action="append", help="text/jsonl file (.xz/.bz2/.gz ok) or directory; repeatable")
    t.add_argument("--format", default="auto", help="txt | jsonl | dir | wikitext (default: from the name)")
    t.add_argument("--field", default="text", help="jsonl field holding the text")
    t.add_argument("--split-field", default="", help="jsonl field naming each record's split (train/valid)")
    t.add_argument("--manifest", default="", help="a manifest file or preset name instead of --input")
    t.add_argument("--split", default="train", help="train on this split only: train | valid | all")
    t.add_argument("--out", required=True, help="output prefix, e.g. nested_jax/assets/tokenizers/novels_2k")
    t.add_argument("--vocab-size", type=int, default=32000)
    t.add_argument("--model-type", default="unigram", choices=["unigram", "bpe"])
    t.add_argument("--character-coverage", type=float, default=0.9995)
    t.add_argument("--sample-limit", type=int, default=200_000, help="max lines drawn per input (0 = all)")
    t.add_argument("--input-sentence-size", type=int, default=0, help="SentencePiece's own sample (0 = all)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=0, help="training threads (0 = all cores)")
    t.set_defaults(fn=cmd_tokenizer)

    r = sub.add_parser("prepare", help="clean, dedup, tokenise and pack a manifest into .npy shards")
    r.add_argument("--preset", default="", help="novels | sample | full (built-in manifests over vendored data)")
    r.add_argument("--manifest", default="", help="a .json or .py manifest file")
    r.add_argument("--out", required=True, help="output directory (gets stats.json and <domain>/<split>/*.npy)")
    r.add_argument("--tokenizer", default="", help="shipped name or .model path (default: manifest's, else novels_2k)")
    r.add_argument("--row-len", type=int, default=0, help="tokens per packed row (default: the manifest's)")
    r.add_argument("--shard-rows", type=int, default=0, help="rows per shard (default: the manifest's)")
    r.add_argument("--workers", type=int, default=0, help="cleaning processes and tokeniser threads (0 = all cores)")
    r.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    r.set_defaults(fn=cmd_prepare)

    args = p.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    main()
