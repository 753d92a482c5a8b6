"""Entry point: python -m nested_jax.train --config configs/smoke.py --workdir runs/smoke.

Rerunning the same command resumes from the latest intact checkpoint; `--step N`
resumes from step N instead (later steps are moved aside to `checkpoints/<step>.rolled_back`,
not deleted); `--print-config` prints the resolved config as JSON and exits. Exit status:
0 done, or stopped by SIGTERM/SIGINT after writing a checkpoint; 2 bad input (flag, config
file or value, workdir, tokenizer, data, checkpoint: one `error: … Fix: …` paragraph, no
traceback); 3 training diverged (train.max_nonfinite_in_a_row non-finite steps in a row, or a
non-finite held-out loss); 130 a second Ctrl-C.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from nested_jax import cli
from nested_jax.configs import resolve_config_flag
from nested_jax.train.cli_errors import explain_flag_error

PROG = "python -m nested_jax.train"
HINT = ("every config field and its allowed values are documented in "
        f"nested_jax/configs/default.py; see `{PROG} --help` for the flags.")
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A config file defining get_config(), e.g. configs/smoke.py, or a preset "
    "name (smoke, pilot, ...: nested_jax/configs).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and plots.")
flags.mark_flags_as_required(["config"])
_STEP = flags.DEFINE_integer(
    "step", None, "Resume from this checkpoint step instead of the latest; later steps are "
    "moved aside to checkpoints/<step>.rolled_back.", lower_bound=0)
_RESUME_STEP = flags.DEFINE_integer(  # the old spelling of --step (deprecated, warns once)
    "resume_step", None, "Deprecated: --step.", lower_bound=0)
_PRINT_CONFIG = flags.DEFINE_boolean(
    "print_config", False, "Print the resolved config (overrides applied, vocab_size from the "
    "tokenizer) as JSON and exit (also --print-config).")
# Multi-host (nested_jax.train.distributed); or env NJ_COORDINATOR/NJ_NUM_PROCESSES/NJ_PROCESS_ID.
_COORDINATOR = flags.DEFINE_string("coordinator", None,
                                   "host:port of process 0, or auto (SLURM, MPI, GKE).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")
_DASHED = {"--num-processes": "--num_processes", "--process-id": "--process_id",
           "--resume-step": "--resume_step", "--print-config": "--print_config",
           "--noprint-config": "--noprint_config"}


def _undash(arg: str) -> str:
    name, sep, value = arg.partition("=")
    return _DASHED.get(name, name) + sep + value


def _argv() -> list[str]:
    return [_undash(a) for a in sys.argv]


def _parse(argv):
    argv = [_undash(a) for a in argv]  # accept --num-processes / --resume-step / ... too
    argv = resolve_config_flag(argv)  # a preset name, or configs/X.py outside a checkout
    try:
        return flags.FLAGS(argv)
    except Exception as e:  # noqa: BLE001 - turned into a one-paragraph message
        sys.exit(cli.fail(explain_flag_error(argv, e)))


def _fail(err, code: int):
    """One paragraph on stderr, no traceback."""
    sys.exit(cli.fail(err, code))


def _resume_step() -> int | None:
    """--step N, or the deprecated --resume-step N (one warning)."""
    if _RESUME_STEP.value is None:
        return _STEP.value
    cli.warn_deprecated("--resume-step", "--step")
    if _STEP.value is not None and _STEP.value != _RESUME_STEP.value:
        _fail(f"--step {_STEP.value} and --resume-step {_RESUME_STEP.value} disagree. Fix: "
              "pass --step N only.", cli.BAD_INPUT)
    return _RESUME_STEP.value


def _print_config(config) -> None:
    from nested_jax.data import loader
    from nested_jax.train.validate import DataError, finalize_config

    try:
        tok = loader.tokenizer_for(config.data)
    except (ValueError, OSError) as e:
        raise DataError(f"cannot load data.tokenizer={config.data.tokenizer!r}: {e}") from None
    finalize_config(config, tok.vocab_size)
    print(config.to_json_best_effort(indent=2, sort_keys=False))


def main(argv):
    if len(argv) > 1:
        _fail(cli.UserError(f"unexpected arguments {argv[1:]}", fix="write every flag as "
                            f"--name=value (or --name value); see `{PROG} --help`."), 2)
    logging.set_verbosity(logging.WARNING)  # Orbax/absl INFO lines drown the progress bar
    try:
        config = _CONFIG.value  # the config file is loaded lazily, here
        config.keys()  # a file that failed to load gives a stand-in that raises on use
    except Exception as e:  # noqa: BLE001 - a missing or broken config file
        _fail(explain_flag_error(_argv(), e), 2)
    if _PRINT_CONFIG.value:
        sys.exit(cli.run(lambda: _print_config(config), prog=PROG))
    if not _WORKDIR.value:
        _fail(cli.UserError("--workdir is required", fix="pass --workdir DIR (checkpoints, "
                            "metrics and plots go there; rerunning with it resumes)."), 2)
    try:
        cli.check_output_dir(_WORKDIR.value, "--workdir")
    except cli.UserError as e:
        _fail(e, 2)
    from nested_jax.train import distributed

    try:
        distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    except ValueError as e:
        _fail(cli.UserError(str(e), fix=f"check the multi-host flags; see `{PROG} --help`."), 2)
    from nested_jax.train.metrics import NonFiniteError
    from nested_jax.train.validate import preflight

    try:
        preflight(config)  # values, tokenizer, data, devices: before anything is written
        from nested_jax.train.loop import train_and_evaluate

        summary = train_and_evaluate(config, _WORKDIR.value, resume_step=_resume_step(),
                                     validated=True)  # preflight checked the config
    except cli.UserError as e:  # bad input (config, data, checkpoint): exit 2, no traceback
        _fail(cli.paragraph(e, fix_hint=HINT), 2)
    except NonFiniteError as e:  # diverged: the last good checkpoint is kept
        _fail(e, 3)
    except KeyboardInterrupt:
        _fail("interrupted by a second Ctrl-C before the checkpoint was written; the previous "
              "checkpoint is intact. Fix: rerun the same command to resume from it.", 130)
    if "stopped_at" in summary:
        print(f"[nested_jax] stopped by signal after step {summary['stopped_at']}; checkpoint "
              f"saved in {_WORKDIR.value}. Rerun the same command to resume.", flush=True)
        return
    eval_loss = summary.get("eval_loss")
    print(
        f"[nested_jax] done: step {summary['final_step']}, held-out loss "
        f"{eval_loss if eval_loss is None else round(eval_loss, 4)} "
        f"(ln V = {summary['ln_vocab']:.4f}); outputs in {_WORKDIR.value}"
    )


if __name__ == "__main__":
    app.run(main, flags_parser=_parse)
