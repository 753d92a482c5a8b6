"""Entry point: python -m nested_jax.train --config configs/smoke.py --workdir runs/smoke."""

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file in configs/ (get_config()).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and plots.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from nested_jax.train.loop import train_and_evaluate

    summary = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    print(
        f"[nested_jax] done: step {summary['final_step']}, held-out loss "
        f"{summary['eval_loss']:.4f} (ln V = {summary['ln_vocab']:.4f}); outputs in "
        f"{_WORKDIR.value}"
    )


if __name__ == "__main__":
    app.run(main)
