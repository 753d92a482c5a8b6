"""Config presets (ml_collections): one `get_config()` per module, `default` documents every
field. They ship with the package; a checkout also has `configs/<name>.py`, one-line
shortcuts to these modules, so `--config configs/smoke.py` works from the repository root.

Where that path does not exist (an installed package, another working directory), the CLIs
load the shipped preset of the same name instead; a bare name works too:

    python -m nested_jax.train --config smoke --workdir runs/smoke
"""

from __future__ import annotations

import os

PRESETS_DIR = os.path.dirname(os.path.abspath(__file__))


def presets() -> list[str]:
    """Names of the shipped presets (modules with a get_config(); `repro` holds helpers)."""
    return sorted(f[:-3] for f in os.listdir(PRESETS_DIR)
                  if f.endswith(".py") and f not in ("__init__.py", "repro.py"))


def preset_path(arg: str) -> str:
    """The value of --config as a file to load: an existing path as given; a preset name
    (`smoke`, `smoke.py`) or a `configs/<name>.py` that does not exist here → the shipped
    preset. Anything else is returned unchanged (the CLI then reports it missing)."""
    path, sep, rest = arg.partition(":")  # config_flags' "file:argument" form
    if os.path.exists(path):
        return arg
    head, name = os.path.split(os.path.normpath(path))
    name = name[:-3] if name.endswith(".py") else name
    if head in ("", "configs") and name in presets():
        return os.path.join(PRESETS_DIR, name + ".py") + sep + rest
    return arg


def resolve_config_flag(argv: list[str]) -> list[str]:
    """argv with the value of --config (not its --config.a.b overrides) through preset_path."""
    out = list(argv)
    for i, a in enumerate(out):
        if a.startswith("--config="):
            out[i] = "--config=" + preset_path(a[len("--config="):])
        elif a == "--config" and i + 1 < len(out):
            out[i + 1] = preset_path(out[i + 1])
    return out
