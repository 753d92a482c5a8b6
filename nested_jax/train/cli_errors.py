"""Turn absl / ml_collections flag-parsing failures into messages that name the fix."""

from __future__ import annotations

import importlib.util
import os
import re


def _load_config(path: str):
    spec = importlib.util.spec_from_file_location("_nj_cfg", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


def _has_path(cfg, dotted: str) -> bool:
    node = cfg
    for part in dotted.split("."):
        try:
            node = node[part]
        except (KeyError, TypeError, AttributeError):
            return False
    return True


def explain_flag_error(argv: list[str], err: Exception) -> str:
    text = str(err).replace("\\n", " ").replace("\\'", "'").strip("'\" ")
    cfg_path = None
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            cfg_path = a.split("=", 1)[1]
        elif a == "--config" and i + 1 < len(argv):
            cfg_path = argv[i + 1]
    if cfg_path and not os.path.exists(cfg_path.split(":")[0]):
        return (f"error: config file {cfg_path!r} not found. Fix: pass a file from configs/, "
                "e.g. --config configs/smoke.py.")
    if cfg_path and not os.path.isfile(cfg_path.split(":")[0]):
        return (f"error: config {cfg_path!r} is not a file. Fix: pass a file from configs/, "
                "e.g. --config configs/smoke.py.")
    cfg = None
    if cfg_path:
        try:
            cfg = _load_config(cfg_path.split(":")[0])
        except Exception as e:  # noqa: BLE001
            return (f"error: cannot load config {cfg_path!r}: {type(e).__name__}: {e}. Fix: the "
                    "file must be Python defining get_config() (copy one from configs/).")
        for a in argv:
            if a.startswith("--config.") and "=" in a:
                key = a[len("--config."):].split("=", 1)[0]
                if not _has_path(cfg, key):
                    parent = key.rsplit(".", 1)[0] if "." in key else ""
                    node = cfg
                    for part in filter(None, parent.split(".")):
                        node = node.get(part, {}) if hasattr(node, "get") else {}
                    valid = sorted(node.keys()) if hasattr(node, "keys") else []
                    hint = re.search(r'Did you mean "[^"]+"', text)
                    hint = f" ({hint.group(0)}?)" if hint else ""
                    return (f"error: unknown config key {key!r}{hint}. Fix: use one of the "
                            f"keys{' under ' + parent if parent else ''}: {', '.join(valid)} "
                            "(every field is documented in nested_jax/configs/default.py).")
    m = re.match(r"flag (--config\.[\w.]+)=(.*?): (.*)$", text)
    if m and cfg is not None:  # a value of the wrong type for its field
        flag, value, why = m.groups()
        key = flag[len("--config."):]
        node = cfg
        try:
            for part in key.split("."):
                node = node[part]
            want = f"a value of type {type(node).__name__} (this config has {node!r})"
        except (KeyError, TypeError):
            want = "a value of the field's type"
        return (f"error: {flag}={value} has the wrong type ({why.strip(chr(39) + ' ')}). Fix: "
                f"give {want}; every field is documented in nested_jax/configs/default.py.")
    return (f"error: bad command-line flag: {text}. Fix: see `python -m nested_jax.train "
            "--help` (config fields are set as --config.group.field=value).")
