"""python -m nested_jax.audit --config configs/X.py [--config.a.b=v ...] [--strict]

Prints the static fidelity report of a config (nested_jax.audit): each HOPE / Titans / CMS
component as the paper's, a paper ablation, a deviation, a project addition or an open
choice; live / dead CMS levels, how often each is read, the teach-signal path. Exit 0; with
--strict, exit 1 and the reasons when the config is not the paper's model (an ablation
switch is on, a CMS level is never read, a CMS step is scale-invariant). Bad input: exit 2.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from nested_jax import cli
from nested_jax.audit import audit, table
from nested_jax.configs import resolve_config_flag
from nested_jax.train.cli_errors import explain_flag_error

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A config file defining get_config(), e.g. configs/smoke.py, or a preset "
    "name (nested_jax/configs).", lock_config=True)
_STRICT = flags.DEFINE_boolean("strict", False, "Exit 1 when the config is not paper-faithful.")
flags.mark_flags_as_required(["config"])


def _parse(argv):
    try:
        return flags.FLAGS(resolve_config_flag(argv))
    except Exception as e:  # noqa: BLE001 - a bad flag or override: one paragraph
        sys.exit(cli.fail(explain_flag_error(argv, e)))


def main(argv):
    if len(argv) > 1:
        sys.exit(cli.fail(cli.UserError(f"unexpected arguments {argv[1:]}",
                                        fix="see `python -m nested_jax.audit --help`.")))
    try:
        config = _CONFIG.value  # loaded lazily: a missing or broken file raises here
        config.keys()
    except Exception as e:  # noqa: BLE001
        sys.exit(cli.fail(explain_flag_error(sys.argv, e)))
    rows, problems = audit(config)
    name = config_flags.get_config_filename(flags.FLAGS['config'])
    print(f"Fidelity audit of {name} (variant {config.model.variant}, "
          f"sequence {config.train.seq_len}); kinds: paper, ablation, deviation, addition "
          f"(project stabiliser), choice (the papers leave it open).\n")
    print(table(rows))
    if problems:
        print("\nNot the paper's model:")
        for p in problems:
            print(f"  - {p}")
    else:
        print("\nPaper-faithful: no ablation switch, no dead level, no scale-invariant CMS step.")
    sys.exit(1 if (_STRICT.value and problems) else 0)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse)
