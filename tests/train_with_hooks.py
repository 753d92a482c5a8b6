"""`python -m nested_jax.train` with test hooks injected from outside the package (the
subprocess tests of tests/test_reliability_resume.py run `python -m tests.train_with_hooks`
with the train CLI's arguments). Hooks, each active only when its variable is set:

  NESTED_JAX_TEST_PAUSE_AFTER_STEP=N  the metrics writer blocks (signal.pause) after
                                      writing step N's train record, so a test can kill -9
                                      or SIGTERM the run at a known point
  NESTED_JAX_TEST_STALL_COMMIT=N      the checkpointer stalls the async commit of step N
                                      (before Orbax's final rename), so a test can kill the
                                      run while that checkpoint is mid-write
"""

import os
import signal
import sys
import time

PAUSE_ENV = "NESTED_JAX_TEST_PAUSE_AFTER_STEP"
STALL_ENV = "NESTED_JAX_TEST_STALL_COMMIT"


def install() -> None:
    from nested_jax.train.metrics import MetricsWriter

    pause_at = int(os.environ.get(PAUSE_ENV, "0") or 0)
    if pause_at:
        write = MetricsWriter.write

        def write_then_pause(self, record):
            write(self, record)
            if record.get("step") == pause_at and "loss" in record:
                print(f"[nested_jax] test hook: paused after step {pause_at}", file=sys.stderr,
                      flush=True)
                signal.pause()

        MetricsWriter.write = write_then_pause
    stall = os.environ.get(STALL_ENV)
    if stall:
        # Orbax's atomic commit of a step: write the commit marker, then rename the
        # temporary directory to the step's name. Stall before it, so the step stays a
        # temporary directory (the sha256 record is written only after this commit).
        from orbax.checkpoint._src.path.atomicity import AtomicRenameTemporaryPath

        finalize = AtomicRenameTemporaryPath.finalize

        async def stall_then_finalize(self, *args, **kwargs):
            if self._final_path.name == stall:
                print(f"[nested_jax] test hook: stalling the commit of step {stall}",
                      file=sys.stderr, flush=True)
                time.sleep(600)
            return await finalize(self, *args, **kwargs)

        AtomicRenameTemporaryPath.finalize = stall_then_finalize


if __name__ == "__main__":
    from absl import app

    from nested_jax.train import __main__ as cli

    install()
    app.run(cli.main, flags_parser=cli._parse)
