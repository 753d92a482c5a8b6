"""python -m nested_jax.checkpoint verify DIR [--step N] [--no-read]
python -m nested_jax.checkpoint rollback DIR N

verify: checks every step of a checkpoint folder (or a training workdir): items present and
readable, metadata complete, the tokenizer named in the config matches the recorded
sha256, every file matches its recorded sha256. Exit status 0 when intact, 1 on
problems, 2 on bad usage.

rollback: makes step N the newest checkpoint, so that rerunning the training command
resumes from it: later steps are moved aside to `<step>.rolled_back` (not deleted) and
metrics.jsonl is copied to `metrics.before_rollback_to_N.jsonl`. The train CLI's
`--resume-step N` does the same before resuming.
"""

from __future__ import annotations

import sys

from nested_jax.cli import ArgumentParser, run

PROG = "python -m nested_jax.checkpoint"


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog=PROG, description="Checkpoint tools: verify, rollback.")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="command")
    v = sub.add_parser("verify", help="check every step of a checkpoint folder")
    v.add_argument("dir", help="training --workdir or its checkpoints/ folder")
    v.add_argument("--step", type=int, default=None, help="check only this step")
    v.add_argument("--no-read", action="store_true",
                   help="skip restoring the arrays (structure, metadata and sha256 only)")
    r = sub.add_parser("rollback", help="make step N the newest checkpoint (later steps are "
                       "moved aside to <step>.rolled_back, not deleted)")
    r.add_argument("dir", help="training --workdir or its checkpoints/ folder")
    r.add_argument("step", type=int, help="the step to resume from")

    def body() -> int:
        args = p.parse_args(argv)
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax INFO/WARNING lines
        if args.cmd == "rollback":
            from nested_jax.checkpoint.io import checkpoint_dir, rollback

            moved = rollback(args.dir, args.step)
            d = checkpoint_dir(args.dir)
            print(f"step {args.step} is now the newest checkpoint in {d}"
                  + (f"; moved aside: {', '.join(moved)}" if moved else " (nothing after it)")
                  + ". Rerun the training command to resume from it.")
            return 0
        from nested_jax.checkpoint.verify import verify

        return verify(args.dir, step=args.step, read=not args.no_read)

    return run(body, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
