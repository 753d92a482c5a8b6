"""The tests' one config builder: a shipped preset (smoke unless named) with the scans as loops
(ROLLED), a variant, and the fields a test sets.

    tiny_config("hope", d_model=16, n_layers=1, online=dict(segment_len=8),
                train=dict(seq_len=32))
    tiny_config(**{"model.online.segment_len": 16, "train.steps": 3})  # dotted names work too
    tiny_config("titans", preset="default", ...)  # another preset's other fields

A field name is a path into the config with dots ("online.segment_len"); a path whose first
part is not a top-level group (train, optim, data, eval, …) is a model field, so `d_model=16`
and `"model.d_model": 16` are the same. A dict value sets the fields of that group one by one
(the others keep the preset's values). Every named field must exist (a typo is an error).
Fields are set in order, after the loops, so a test's own unroll settings win. tiny_model is
the model part alone; set_fields and rolled do the same to any config (e.g. a preset a test
is about, kept as it is).
"""

from __future__ import annotations

import importlib

# Compile-time only, the same math: chunk, layer and segment scans as loops, which XLA compiles
# in about half the time of the presets' unrolled ones (unroll_chunks 16, unroll_layers 4,
# online.unroll_segments 8, online.unroll_layers 16). The unrolled programs training compiles
# are tested on their own: tests/test_variant_losses.py (the smoke preset as it is),
# TRAINING_UNROLL in tests/test_memory_ops.py, test_model_unroll_chunks_unrolls_the_titans_memory
# in tests/test_variants.py.
ROLLED = {"model.unroll_chunks": 1, "model.unroll_layers": 1,
          "model.online.unroll_segments": 1, "model.online.unroll_layers": 0}


def load_preset(name: str = "smoke"):
    """A shipped preset (nested_jax/configs/<name>.py), as it is."""
    return importlib.import_module(f"nested_jax.configs.{name}").get_config()


def set_fields(config, **fields):
    """Set each field of `config` (names as in tiny_config; in place) and return it."""
    for name, value in fields.items():
        path = name.split(".")
        if path[0] in config:
            _set(config, [], path, value)
        else:  # a model field
            _set(config.model, ["model"], path, value)
    return config


def _set(node, above, path, value):
    """node.<path> = value, node being the config at `above` (a path, for errors)."""
    for i, part in enumerate(path):
        if part not in node:
            raise KeyError(f"no config field {'.'.join(above + path[:i + 1])!r}")
        if i < len(path) - 1:
            node = node[part]
    leaf = path[-1]
    if isinstance(value, dict) and hasattr(node[leaf], "items"):  # a group: field by field
        for k, v in value.items():
            _set(node[leaf], above + path, k.split("."), v)
    else:
        node[leaf] = value


def rolled(config):
    """`config` (in place) with the scans as loops (ROLLED); returns it."""
    return set_fields(config, **ROLLED)


def tiny_config(variant: str = "transformer", *, preset: str = "smoke", **fields):
    """The `preset` preset (nested_jax/configs/), rolled, with model.variant = `variant` and
    `fields` set."""
    c = rolled(load_preset(preset))
    c.model.variant = variant
    return set_fields(c, **fields)


def tiny_model(variant: str = "transformer", **fields):
    """The model part of tiny_config (fields as there: model fields, or model.* paths)."""
    return tiny_config(variant, **fields).model
