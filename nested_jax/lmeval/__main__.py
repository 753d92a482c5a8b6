"""python -m nested_jax.lmeval [lm-eval run flags]: lm-evaluation-harness's command line with
the `nested_jax` model registered and the offline tasks (nested_jax/lmeval_tasks, `nj_*`) on
the include path, e.g.

    python -m nested_jax.lmeval --model nested_jax \\
        --model_args checkpoint=runs/smoke,batch_size=16 --tasks nj_piqa,nj_arc_easy --limit 100

Bad --model_args (an unknown key, a missing checkpoint, a non-integer step) print one
`error:` line naming the argument and exit with status 2.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        from nested_jax.lmeval import TASKS_DIR, register

        register()
    except ImportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from nested_jax.lmeval.model import ModelArgsError

    if not any(a == "--include_path" or a.startswith("--include_path=") for a in argv):
        argv += ["--include_path", TASKS_DIR]
    from lm_eval.__main__ import cli_evaluate

    old = sys.argv
    sys.argv = ["python -m nested_jax.lmeval", *argv]
    try:
        cli_evaluate()
    except ModelArgsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        sys.argv = old
    return 0


if __name__ == "__main__":
    sys.exit(main())
