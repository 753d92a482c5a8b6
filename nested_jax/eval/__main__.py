"""python -m nested_jax.eval <command> --checkpoint DIR [--step N] --output FILE.json ...

Commands: zeroshot, niah, passkey, continual, perplexity, report. Each writes one JSON file (run
header + metrics); niah/passkey/continual also write a PNG next to it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from nested_jax.cli import (DEFAULT_BATCH_SIZE, ArgumentParser, add_alias, check_output_file,
                            float_at_least, int_at_least, ints_at_least, run)
from nested_jax.eval.errors import EvalError

EXAMPLES = """examples:
  python -m nested_jax.eval zeroshot --checkpoint runs/x --tasks piqa,arc_easy --limit 200 --output out/zs.json
  python -m nested_jax.eval niah --checkpoint runs/x --max-context 8192 --samples 4 --output out/niah.json
  python -m nested_jax.eval passkey --checkpoint runs/x --lengths 2048,4096 --memorize --output out/pk.json
  python -m nested_jax.eval continual --checkpoints runs/x@1000 runs/x@2000 --output out/curve.json
  python -m nested_jax.eval continual --checkpoint runs/x --steps-per-phase 100 --output out/seq.json
  python -m nested_jax.eval perplexity --checkpoint runs/x --text wikitext2 my.txt --output out/ppl.json
  python -m nested_jax.eval report --inputs out/zs_a.json out/zs_b.json --output out/table.md
"""


_pos, _nonneg = int_at_least(1), int_at_least(0)  # the grammar's integer kinds (nested_jax.cli)


def _common(p: argparse.ArgumentParser, checkpoint: bool = True) -> None:
    if checkpoint:
        p.add_argument("--checkpoint", required=True,
                       help="training workdir (or its checkpoints/ folder)")
        p.add_argument("--step", type=_nonneg, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--output", "--out", dest="output", required=True, help="JSON file to write")
    p.add_argument("--tokenizer", default=None,
                   help="override the tokenizer (.model path); its sha256 must match the checkpoint")
    p.add_argument("--batch-size", type=_pos, default=DEFAULT_BATCH_SIZE,
                   help="rows per scoring batch")
    p.add_argument("--batch-tokens", type=_pos, default=32768,
                   help="cap on rows × padded length per batch (long inputs use fewer rows)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    p.add_argument("--chunk", type=_nonneg, default=2048,
                   help="transformer/titans: inputs longer than this run chunk by chunk with the "
                        "key/value cache (same scores, linear memory); 0 = one full forward")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    g = p.add_argument_group("test-time memorisation (docs/streaming.md; HOPE variants only)")
    g.add_argument("--memorize", action="store_true",
                   help="memorise each prompt into the fast state, then score with it")
    g.add_argument("--memorize-steps", type=_pos, default=1, help="passes over each prompt")
    g.add_argument("--memorize-no-reset", action="store_true",
                   help="carry the fast state across items instead of a fresh one per item")
    g.add_argument("--memorize-use-correct-answer", action="store_true",
                   help="memorise the prompt followed by the correct answer")
    g.add_argument("--memorize-teach-scale", type=float_at_least(0.0), default=None,
                   help="teach-signal scale while memorising (default: the schedule's value "
                        "at the checkpoint step)")


def build_parser() -> argparse.ArgumentParser:
    ap = ArgumentParser(prog="python -m nested_jax.eval", description=__doc__,
                                 epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True, metavar="command")

    z = sub.add_parser("zeroshot", help="multiple-choice tasks (acc, acc_norm)")
    _common(z)
    z.add_argument("--tasks", default="all", help="'all' or a comma list: piqa,hellaswag,"
                   "winogrande,arc_easy,arc_challenge,boolq,siqa,commonsenseqa,openbookqa")
    z.add_argument("--limit", type=_nonneg, default=0, help="first N items per task (0 = all)")
    z.add_argument("--max-length", type=_nonneg, default=0,
                   help="tokens per scored sequence, longer contexts cut on the left "
                        "(0 = the checkpoint's train.seq_len)")
    z.add_argument("--pad-to-max-length", action="store_true",
                   help="pad every batch to --max-length (one compiled shape; no buckets)")

    for name, helptext in (("niah", "needle in a haystack"), ("passkey", "passkey retrieval")):
        n = sub.add_parser(name, help=f"{helptext} at true token lengths (heatmap PNG)")
        _common(n)
        n.add_argument("--lengths", type=ints_at_least(1), default=None,
                       help="prompt lengths in model tokens (default 2048,...,65536)")
        n.add_argument("--max-context", type=_pos, default=65536,
                       help="drop the --lengths longer than this")
        add_alias(n, "--max-length", "--max-context", type=_pos)
        n.add_argument("--depths", type=ints_at_least(0, 100), default=None,
                       help="needle depths in percent (default 0,25,50,75,100)")
        n.add_argument("--samples", type=_pos, default=4, help="prompts per (length, depth)")
        n.add_argument("--distractors", type=_nonneg, default=4, help="wrong keys ranked against the key")

    c = sub.add_parser("continual", help="forgetting curve (--checkpoints) or sequential "
                       "training through domains (--checkpoint --steps-per-phase)")
    _common(c, checkpoint=False)
    c.add_argument("--checkpoints", nargs="+", default=None,
                   help="(a) checkpoints to compare, each DIR or DIR@STEP, in order")
    c.add_argument("--all-steps", action="store_true",
                   help="(a) with one --checkpoints DIR: every saved step of it")
    c.add_argument("--checkpoint", default=None, help="(b) start of sequential training")
    c.add_argument("--step", type=_nonneg, default=None, help="(b) its step (default: latest)")
    c.add_argument("--domains", default="novels,wikipedia,math,code", help="domains to score")
    c.add_argument("--phases", default=None, help="(b) training order (default: --domains)")
    c.add_argument("--steps-per-phase", type=_nonneg, default=0, help="(b) optimizer steps per phase")
    c.add_argument("--train-batch-size", type=_pos, default=8, help="(b) sequences per step")
    c.add_argument("--lr", type=float_at_least(0.0), default=1e-4, help="(b) AdamW learning rate (constant)")
    c.add_argument("--weight-decay", type=float_at_least(0.0), default=0.0, help="(b) AdamW weight decay")
    c.add_argument("--windows", type=_pos, default=16, help="eval windows per domain")
    c.add_argument("--max-length", type=_nonneg, default=0,
                   help="window length in tokens (0 = the checkpoint's train.seq_len)")
    add_alias(c, "--seq-len", "--max-length", type=_nonneg)

    from nested_jax.eval import perplexity  # flags live with the command (light import)

    perplexity.add_arguments(sub.add_parser(
        "perplexity", help="rolling-window perplexity of any text: word/byte perplexity, bits "
        "per byte, token CE (lm-evaluation-harness definitions; --text wikitext2 built in)",
        description=perplexity.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))

    r = sub.add_parser("report", help="markdown table comparing eval JSON files (--inputs)")
    r.add_argument("--inputs", nargs="+", default=None, help="JSON files of eval runs")
    r.add_argument("--output", "--out", dest="output", default=None, help="markdown file to write")
    return ap


def _memo(a):
    from nested_jax.eval.memo import MemoOptions

    if a.memorize_steps < 1:
        raise EvalError(f"--memorize-steps={a.memorize_steps}; it must be ≥ 1.")
    return MemoOptions(enabled=a.memorize, steps=a.memorize_steps, reset=not a.memorize_no_reset,
                       use_correct_answer=a.memorize_use_correct_answer,
                       teach_scale=a.memorize_teach_scale)


def _load(path, step, a):
    from nested_jax.eval import models, restore

    loaded = restore.load(path, step, tokenizer=a.tokenizer)
    return loaded, models.from_loaded(loaded, chunk=a.chunk)


def _base(cmd, argv, loaded, a, seeds=None) -> dict:
    from nested_jax.eval import output

    doc = output.header(cmd, argv, seeds=seeds)
    if loaded is not None:
        doc["checkpoint"] = output.checkpoint_info(loaded)
        doc["config"] = loaded.summary()
    doc["memorize"] = _memo(a).to_json() if hasattr(a, "memorize") else None
    return doc


def cmd_zeroshot(a, argv) -> dict:
    from nested_jax.eval import tasks, zeroshot

    names = tasks.parse_tasks(a.tasks)
    loaded, model = _load(a.checkpoint, a.step, a)
    max_len = a.max_length or int(loaded.cfg.train.seq_len)
    doc = _base("zeroshot", argv, loaded, a, seeds={"seed": a.seed, "note": "deterministic"})
    fixed = model.fit(max_len) if a.pad_to_max_length else None
    doc["settings"] = {"tasks": names, "limit": a.limit, "max_length": max_len,
                       "prefix": "EOS (document start)", "batch_size": a.batch_size}
    doc["metrics"] = zeroshot.run(model, loaded.tokenizer, task_names=names, limit=a.limit,
                                  max_len=max_len, batch_size=a.batch_size,
                                  batch_tokens=a.batch_tokens, memo=_memo(a),
                                  progress=not a.no_progress, fixed_len=fixed)
    return doc


def cmd_needle(a, argv) -> dict:
    from nested_jax.eval import niah, output

    lengths = a.lengths or list(niah.DEFAULT_LENGTHS)
    depths = a.depths or list(niah.DEFAULT_DEPTHS)
    kept = [L for L in lengths if L <= a.max_context]
    if not kept:
        raise EvalError(f"every length in {lengths} exceeds --max-context {a.max_context}. Fix: "
                        "raise --max-context or pass shorter --lengths.")
    bad = [d for d in depths if not 0 <= d <= 100]
    if bad or a.samples < 1 or a.distractors < 0:
        raise EvalError(f"bad sweep: depths {bad} must be in 0..100, --samples ≥ 1, "
                        "--distractors ≥ 0.")
    loaded, model = _load(a.checkpoint, a.step, a)
    doc = _base(a.command, argv, loaded, a, seeds={"seed": a.seed})
    doc["settings"] = {"lengths": kept, "dropped_lengths": [L for L in lengths if L not in kept],
                       "depths": depths, "samples": a.samples, "distractors": a.distractors,
                       "train_seq_len": int(loaded.cfg.train.seq_len)}
    doc["metrics"] = niah.run(model, loaded.tokenizer, task=a.command, lengths=kept,
                              depths=depths, samples=a.samples, seed=a.seed,
                              distractors=a.distractors, batch_size=a.batch_size,
                              batch_tokens=a.batch_tokens, memo=_memo(a),
                              progress=not a.no_progress)
    png = output.png_path(a.output)
    niah.plot_heatmap(doc["metrics"], png,
                      f"{a.command}: {loaded.cfg.model.variant} @ step {loaded.step}")
    doc["plot"] = png
    return doc


def _split_at(spec: str) -> tuple[str, int | None]:
    if "@" in spec:
        path, step = spec.rsplit("@", 1)
        try:
            return path, int(step)
        except ValueError:
            raise EvalError(f"bad checkpoint spec {spec!r}; write DIR or DIR@STEP.") from None
    return spec, None


def cmd_continual(a, argv) -> dict:
    from nested_jax.eval import continual, domains, output, restore
    from nested_jax.eval.memo import Memorizer

    names = domains.parse_domains(a.domains)
    memo = _memo(a)
    png = output.png_path(a.output)
    if a.checkpoints and a.checkpoint:
        raise EvalError("give either --checkpoints A B C (forgetting curve) or --checkpoint A "
                        "--steps-per-phase N (sequential training), not both.")
    if a.checkpoints:
        specs = [_split_at(s) for s in a.checkpoints]
        if a.all_steps:
            if len(specs) != 1:
                raise EvalError("--all-steps takes exactly one --checkpoints DIR.")
            ck = restore.open_checkpointer(specs[0][0])
            specs = [(specs[0][0], s) for s in ck.all_steps()]
            ck.manager.close()
        entries, sets_by_tok, first = [], {}, None
        doc = _base("continual", argv, None, a, seeds={"seed": a.seed})
        for path, step in specs:
            loaded, model = _load(path, step, a)
            first = first or loaded
            seq_len = a.max_length or int(first.cfg.train.seq_len)
            key = loaded.tokenizer.sha256
            if key not in sets_by_tok:
                sets_by_tok[key] = continual.eval_sets(loaded.tokenizer, names, seq_len, a.windows)
            mem = Memorizer(model, memo)
            scores = continual.score_domains(model, sets_by_tok[key], batch_size=a.batch_size,
                                             memo=memo, mem=mem, progress=not a.no_progress,
                                             desc=f"score @ step {loaded.step}")
            entries.append({"path": path, "step": loaded.step,
                            "variant": loaded.cfg.model.variant, "domains": scores})
            if memo.enabled:
                entries[-1]["memorize"] = mem.report()
            output.say(f"{path}@{loaded.step}: " + ", ".join(
                f"{d} CE {s['ce']:.3f}" for d, s in scores.items()))
        doc["checkpoint"] = output.checkpoint_info(first)
        doc["config"] = first.summary()
        doc["settings"] = {"mode": "forgetting_curve", "domains": names, "windows": a.windows,
                           "seq_len": seq_len}
        doc["metrics"] = continual.forgetting_curve(entries, names)
        continual.plot_curve(doc["metrics"], png, "CE per domain across checkpoints")
        doc["plot"] = png
        return doc
    if not a.checkpoint:
        raise EvalError("continual needs --checkpoints A B C (forgetting curve) or --checkpoint A "
                        "--steps-per-phase N (sequential training through the domains).")
    if a.steps_per_phase < 1:
        raise EvalError("sequential training needs --steps-per-phase N (N ≥ 1). Fix: e.g. "
                        "--steps-per-phase 100; or pass --checkpoints for a forgetting curve.")
    phases = domains.parse_domains(a.phases) if a.phases else names
    loaded, model = _load(a.checkpoint, a.step, a)
    seq_len = a.max_length or int(loaded.cfg.train.seq_len)
    doc = _base("continual", argv, loaded, a, seeds={"seed": a.seed})
    doc["settings"] = {"mode": "sequential", "phases": phases, "domains": names,
                       "steps_per_phase": a.steps_per_phase, "train_batch_size": a.train_batch_size,
                       "lr": a.lr, "weight_decay": a.weight_decay, "optimizer": "adamw+clip1.0",
                       "windows": a.windows, "seq_len": seq_len}
    doc["metrics"] = continual.sequential(
        model, loaded.fn, loaded.params, loaded.tokenizer, phases=phases, names=names,
        seq_len=seq_len, windows=a.windows, steps_per_phase=a.steps_per_phase,
        train_batch_size=a.train_batch_size, lr=a.lr, weight_decay=a.weight_decay, seed=a.seed,
        start_step=loaded.step, batch_size=a.batch_size, memo=memo, progress=not a.no_progress)
    continual.plot_sequential(doc["metrics"], png,
                              f"sequential training: {loaded.cfg.model.variant}")
    doc["plot"] = png
    return doc


def cmd_report(a, argv) -> None:
    from nested_jax.eval import report

    if not a.inputs or not a.output:
        raise EvalError("report needs --inputs A.json B.json --output table.md.")
    check_output_file(a.output)
    text = report.markdown(report.load_runs(a.inputs))
    path = os.path.abspath(a.output)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text + "\n")
    print(f"[nested_jax.eval] wrote {path}", file=sys.stderr)
    print(text)


def cmd_perplexity(a, argv) -> dict:
    from nested_jax.eval import perplexity

    return perplexity.command(a, argv)


COMMANDS = {"zeroshot": cmd_zeroshot, "niah": cmd_needle, "passkey": cmd_needle,
            "continual": cmd_continual, "perplexity": cmd_perplexity}


def main(argv: list[str] | None = None) -> int:
    """Run one command; bad input is one `error: … Fix: …` paragraph and exit status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return run(lambda: _main(argv), prog="python -m nested_jax.eval")


def _main(argv: list[str]) -> int:
    a = build_parser().parse_args(argv)
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax INFO/WARNING lines
    if a.command == "report":
        cmd_report(a, argv)
        return 0
    check_output_file(a.output)  # before any work: a path that cannot be written is bad input
    from nested_jax.eval import output, tables

    t0 = time.perf_counter()
    doc = COMMANDS[a.command](a, argv)
    doc["timing_s"] = round(time.perf_counter() - t0, 3)
    path = output.write_json(a.output, doc)
    output.say(f"wrote {path}" + (f" and {doc['plot']}" if doc.get("plot") else ""))
    print(tables.console_table(doc), flush=True)  # what was measured, on the console
    return 0


if __name__ == "__main__":
    rc = main()
    if rc:  # skip interpreter teardown: Orbax's I/O threads can print noise after a failed read
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    sys.exit(rc)
