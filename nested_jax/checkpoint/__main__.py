"""python -m nested_jax.checkpoint verify DIR [--step N] [--no-read]

Checks every step of a checkpoint folder (or a training workdir): items present and
readable, metadata complete, the tokenizer named in the config matches the recorded
sha256, every file matches its recorded sha256. Exit status 0 when intact, 1 on
problems, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nested_jax.checkpoint",
                                description="Checkpoint tools.")
    sub = p.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("verify", help="check every step of a checkpoint folder")
    v.add_argument("dir", help="training --workdir or its checkpoints/ folder")
    v.add_argument("--step", type=int, default=None, help="check only this step")
    v.add_argument("--no-read", action="store_true",
                   help="skip restoring the arrays (structure, metadata and sha256 only)")
    args = p.parse_args(argv)

    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax INFO/WARNING lines
    from nested_jax.checkpoint.io import CheckpointError
    from nested_jax.checkpoint.verify import verify

    try:
        return verify(args.dir, step=args.step, read=not args.no_read)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
