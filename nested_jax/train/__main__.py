"""Entry point: python -m nested_jax.train --config configs/smoke.py --workdir runs/smoke.

Rerunning the same command resumes from the latest intact checkpoint. Exit status: 0 done,
or stopped by SIGTERM/SIGINT after writing a checkpoint; 2 bad input (flag, config value,
tokenizer, data, checkpoint: one `error:` paragraph, no traceback); 3 training diverged
(train.max_nonfinite_in_a_row non-finite steps in a row); 130 a second Ctrl-C.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from nested_jax.train.cli_errors import explain_flag_error

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file in configs/ (get_config()).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and plots.")
flags.mark_flags_as_required(["config", "workdir"])
# Multi-host (nested_jax.train.distributed); or env NJ_COORDINATOR/NJ_NUM_PROCESSES/NJ_PROCESS_ID.
_COORDINATOR = flags.DEFINE_string("coordinator", None,
                                   "host:port of process 0, or auto (SLURM, MPI, GKE).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")
_DASHED = {"--num-processes": "--num_processes", "--process-id": "--process_id"}


def _undash(arg: str) -> str:
    name, sep, value = arg.partition("=")
    return _DASHED.get(name, name) + sep + value


def _parse(argv):
    argv = [_undash(a) for a in argv]  # accept --num-processes / --process-id too
    try:
        return flags.FLAGS(argv)
    except Exception as e:  # noqa: BLE001 - turned into a one-paragraph message
        sys.stderr.write(explain_flag_error(argv, e) + "\n")
        sys.exit(2)


def _fail(err, code: int):
    """One paragraph on stderr, no traceback."""
    sys.stderr.write("error: " + " ".join(str(err).split()) + "\n")
    sys.stderr.flush()
    sys.exit(code)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # Orbax/absl INFO lines drown the progress bar
    from nested_jax.train import distributed

    try:
        distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    from nested_jax.checkpoint import CheckpointError
    from nested_jax.train.metrics import NonFiniteError
    from nested_jax.train.validate import ConfigError, preflight

    try:
        preflight(_CONFIG.value)  # values, tokenizer, data, devices: before anything is written
        from nested_jax.train.loop import train_and_evaluate

        summary = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except (ConfigError, CheckpointError) as e:  # bad input: exit 2, no traceback
        _fail(e, 2)
    except NonFiniteError as e:  # diverged: the last good checkpoint is kept
        _fail(e, 3)
    except KeyboardInterrupt:
        _fail("interrupted by a second Ctrl-C before the checkpoint was written; the previous "
              "checkpoint is intact. Rerun the same command to resume from it.", 130)
    if "stopped_at" in summary:
        print(f"[nested_jax] stopped by signal after step {summary['stopped_at']}; checkpoint "
              f"saved in {_WORKDIR.value}. Rerun the same command to resume.", flush=True)
        return
    eval_loss = summary["eval_loss"]
    print(
        f"[nested_jax] done: step {summary['final_step']}, held-out loss "
        f"{eval_loss if eval_loss is None else round(eval_loss, 4)} "
        f"(ln V = {summary['ln_vocab']:.4f}); outputs in {_WORKDIR.value}"
    )


if __name__ == "__main__":
    app.run(main, flags_parser=_parse)
