"""Entry point: python -m nested_jax.train --config configs/smoke.py --workdir runs/smoke."""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from nested_jax.train.cli_errors import explain_flag_error

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file in configs/ (get_config()).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and plots.")
flags.mark_flags_as_required(["config", "workdir"])


def _parse(argv):
    try:
        return flags.FLAGS(argv)
    except Exception as e:  # noqa: BLE001 - turned into a one-paragraph message
        sys.stderr.write(explain_flag_error(argv, e) + "\n")
        sys.exit(2)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # Orbax/absl INFO lines drown the progress bar
    from nested_jax.train.loop import train_and_evaluate

    summary = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    eval_loss = summary["eval_loss"]
    print(
        f"[nested_jax] done: step {summary['final_step']}, held-out loss "
        f"{eval_loss if eval_loss is None else round(eval_loss, 4)} "
        f"(ln V = {summary['ln_vocab']:.4f}); outputs in {_WORKDIR.value}"
    )


if __name__ == "__main__":
    app.run(main, flags_parser=_parse)
