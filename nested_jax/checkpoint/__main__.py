"""python -m nested_jax.checkpoint verify --checkpoint DIR [--step N] [--no-read]
python -m nested_jax.checkpoint rollback --checkpoint DIR --step N

(The older positional forms `verify DIR` and `rollback DIR N` still work and warn.)

verify: checks every step of a checkpoint folder (or a training workdir): items present and
readable, metadata complete, the tokenizer named in the config matches the recorded
sha256, every file matches its recorded sha256. Exit status 0 when intact, 1 on
problems, 2 on bad usage.

rollback: makes step N the newest checkpoint, so that rerunning the training command
resumes from it: later steps are moved aside to `<step>.rolled_back` (not deleted) and
metrics.jsonl is copied to `metrics.before_rollback_to_N.jsonl`. The train CLI's
`--step N` does the same before resuming.
"""

from __future__ import annotations

import sys

import argparse

from nested_jax.cli import ArgumentParser, UserError, int_at_least, run, warn_deprecated

PROG = "python -m nested_jax.checkpoint"


def _checkpoint_args(p: argparse.ArgumentParser, step_help: str) -> None:
    """--checkpoint DIR --step N, as in every other command; the old positionals DIR [N]
    are kept (deprecated)."""
    p.add_argument("--checkpoint", default=None, help="training --workdir or its checkpoints/ folder")
    p.add_argument("--step", type=int_at_least(0), default=None, help=step_help)
    p.add_argument("old_dir", nargs="?", default=None, help=argparse.SUPPRESS)
    p.add_argument("old_step", nargs="?", type=int_at_least(0), default=None,
                   help=argparse.SUPPRESS)


def _legacy_positionals(args):
    """Map the deprecated positional DIR [STEP] onto --checkpoint / --step (one warning)."""
    if args.old_dir is not None:
        if args.checkpoint is not None:
            raise UserError(f"both --checkpoint {args.checkpoint!r} and a positional folder "
                            f"{args.old_dir!r}", fix="pass --checkpoint DIR only.")
        warn_deprecated(f"the positional folder ({args.old_dir})", "--checkpoint DIR")
        args.checkpoint = args.old_dir
    if args.old_step is not None:
        if args.step is not None:
            raise UserError(f"both --step {args.step} and a positional step {args.old_step}",
                            fix="pass --step N only.")
        warn_deprecated(f"the positional step ({args.old_step})", "--step N")
        args.step = args.old_step
    if args.checkpoint is None:
        raise UserError("no checkpoint folder given", fix="pass --checkpoint DIR (a training "
                        "--workdir or its checkpoints/ folder).")
    if args.cmd == "rollback" and args.step is None:
        raise UserError("rollback needs the step to go back to", fix="pass --step N.")
    return args


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog=PROG, description="Checkpoint tools: verify, rollback.")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="command")
    v = sub.add_parser("verify", help="check every step of a checkpoint folder")
    _checkpoint_args(v, "check only this step (default: every step)")
    v.add_argument("--no-read", action="store_true",
                   help="skip restoring the arrays (structure, metadata and sha256 only)")
    r = sub.add_parser("rollback", help="make step N the newest checkpoint (later steps are "
                       "moved aside to <step>.rolled_back, not deleted)")
    _checkpoint_args(r, "the step to resume from")

    def body() -> int:
        args = _legacy_positionals(p.parse_args(argv))
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax INFO/WARNING lines
        if args.cmd == "rollback":
            from nested_jax.checkpoint.io import checkpoint_dir, rollback

            moved = rollback(args.checkpoint, args.step)
            d = checkpoint_dir(args.checkpoint)
            print(f"step {args.step} is now the newest checkpoint in {d}"
                  + (f"; moved aside: {', '.join(moved)}" if moved else " (nothing after it)")
                  + ". Rerun the training command to resume from it.")
            return 0
        from nested_jax.checkpoint.verify import verify

        return verify(args.checkpoint, step=args.step, read=not args.no_read)

    return run(body, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
