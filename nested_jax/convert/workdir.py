"""Hugging Face model folder ↔ nested_jax workdir (docs/pretrained.md).

`import_hf(input, output)` writes an ordinary workdir: checkpoints/0 (params + meta, as
training saves them), config.json, config.py (a preset: train from it with `--config
OUTPUT/config.py`, which starts from these weights through `train.init_from`), the
tokenizer files under tokenizer/, and provenance.json (source files and their sha256).
Everything is written into a hidden sibling folder first and renamed into place at the
end, so a failed import leaves nothing that passes for a model.

`export_hf(checkpoint, output)` writes model.safetensors + config.json (+ the tokenizer
when it is a Hugging Face one) that transformers loads as LlamaForCausalLM or
Qwen2ForCausalLM.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
from pathlib import Path

import jax
import numpy as np

import nested_jax
from nested_jax.cli import UserError
from nested_jax.convert import hf as hf_map
from nested_jax.model.variants import get as get_variant
from nested_jax.convert.safetensors_io import SafetensorsError, SafetensorsModel, save_file
from nested_jax.data.assets import file_sha256

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                   "special_tokens_map.json")


class ConvertError(UserError, ValueError):
    """Bad input to a conversion (missing files, unsupported model, existing output)."""


def fresh_output(output: str | os.PathLike) -> Path:
    out = Path(output).expanduser().resolve()
    if out.exists():
        raise ConvertError(f"--output {out} already exists", fix="pick a new folder or delete it "
                           "(conversions never overwrite).")
    if not out.parent.is_dir():
        raise ConvertError(f"the parent folder of --output ({out.parent}) does not exist",
                           fix="create it first.")
    return out


@contextlib.contextmanager
def _staging(out: Path):
    """A hidden folder beside `out`, renamed to `out` on success, removed on any failure."""
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise ConvertError(f"{path} is missing: {what}",
                           fix="pass a Hugging Face model folder (config.json, *.safetensors, "
                           "tokenizer.json).")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ConvertError(f"{path} is not valid JSON ({e})") from None


def preset_text(source: str, command: str, settings: dict, workdir: str) -> str:
    """config.py of a converted workdir: the default config with `settings` ({dotted key:
    value}) and train.init_from = the workdir, so training starts from its weights."""
    body = "\n".join(f"    c.{k} = {v!r}" for k, v in settings.items())
    return f'''"""Written by `python -m nested_jax.convert {command}` from {source}
({datetime.date.today().isoformat()}). Train from these weights (train.init_from) with
    python -m nested_jax.train --config {workdir}/config.py --workdir runs/NAME
and override anything with --config.a.b=value (e.g. --config.model.dtype=bfloat16 on a GPU).
"""

from nested_jax.configs.default import get_config as _default


def get_config():
    c = _default()
{body}
    c.train.init_from = {workdir!r}
    return c
'''


def write_workdir(out: Path, *, params: dict, config, tokenizer_sha256: str, preset: str,
                  provenance: dict, tokenizer_src: Path | None = None) -> None:
    """Stage and publish a converted workdir (module docstring): checkpoints/0 (params and
    the metadata training writes, plus the provenance), config.json, config.py,
    provenance.json and (if given) the tokenizer files from `tokenizer_src`."""
    from nested_jax.checkpoint import Checkpointer
    from nested_jax.git_info import git_commit

    meta = {"tokenizer_sha256": tokenizer_sha256, "package_version": nested_jax.__version__,
            "git_commit": git_commit(), "variant": config.model.variant, "process_count": 1,
            "config": config.to_json_best_effort(), "step": 0, "tokens_seen": 0,
            "provenance": provenance}

    with _staging(out) as tmp:
        if tokenizer_src is not None:
            (tmp / "tokenizer").mkdir()
            for name in TOKENIZER_FILES:
                if (tokenizer_src / name).is_file():
                    shutil.copy2(tokenizer_src / name, tmp / "tokenizer" / name)
        ckpt = Checkpointer(str(tmp / "checkpoints"), async_save=False)
        try:
            ckpt.save(0, params=params, meta=meta)
        finally:
            ckpt.close()
        (tmp / "config.json").write_text(config.to_json_best_effort(indent=2))
        (tmp / "config.py").write_text(preset)
        (tmp / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")


def import_hf(input_dir: str | os.PathLike, output: str | os.PathLike, *, progress=None) -> dict:
    """Convert the Hugging Face model folder `input_dir` into a new workdir `output`;
    returns a summary. Tensors are read one at a time from the memory-mapped safetensors
    files and cast to float32 (the parameter dtype)."""
    from nested_jax.configs.default import get_config
    from nested_jax.data.tokenizer import HFSentencePieceTokenizer, HFTokenizer
    from nested_jax.model.lm import abstract_model
    from nested_jax.train.validate import ConfigError, check_values

    src = Path(input_dir).expanduser().resolve()
    if not src.is_dir():
        raise ConvertError(f"--input {src} is not a folder", fix="pass a Hugging Face model folder.")
    out = fresh_output(output)
    hf_cfg = _read_json(src / "config.json", "the model's configuration")
    try:
        overrides = hf_map.model_overrides(hf_cfg)
    except hf_map.UnsupportedModel as e:
        raise ConvertError(f"{src / 'config.json'}: {e}") from None
    except KeyError as e:
        raise ConvertError(f"{src / 'config.json'} lacks the field {e}") from None
    # tokenizer.json (what transformers' fast tokenizers read) first, else tokenizer.model
    tok_file = next((f for f in ("tokenizer.json", "tokenizer.model") if (src / f).is_file()), None)
    if tok_file is None:
        raise ConvertError(f"{src} has neither tokenizer.json nor tokenizer.model",
                           fix="add the model's Hugging Face tokenizer files.")
    try:
        tok = (HFTokenizer if tok_file == "tokenizer.json" else HFSentencePieceTokenizer)(
            src / tok_file)
    except ValueError as e:
        raise ConvertError(str(e)) from None
    if tok.vocab_size > overrides["vocab_size"]:
        raise ConvertError(
            f"the tokenizer has {tok.vocab_size} tokens but the model's embedding has "
            f"{overrides['vocab_size']} rows: ids past the embedding cannot be looked up",
            fix="pass the tokenizer that belongs to this model.")
    try:
        weights = SafetensorsModel(src)
    except SafetensorsError as e:
        raise ConvertError(str(e)) from None

    config = get_config()
    config.model.update(overrides)
    max_len = int(hf_cfg.get("max_position_embeddings") or 2048)
    config.train.seq_len = min(2048, max_len)
    tok_path = str(out / "tokenizer" / tok_file)
    config.data.tokenizer = tok_path
    config.train.init_from = str(out)
    try:
        check_values(config)
    except ConfigError as e:
        raise ConvertError(f"the imported configuration is not valid here: {e}") from None

    abstract = abstract_model(config.model).params()  # ShapeDtypeStruct leaves
    n_layers = config.model.n_layers
    leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    values = []
    for i, (keys, want) in enumerate(leaves):
        path = tuple(k.key for k in keys)
        try:
            value = hf_map.leaf_value(weights.get, path, n_layers)
        except SafetensorsError as e:
            raise ConvertError(str(e)) from None
        if value.shape != tuple(want.shape):
            raise ConvertError(
                f"{'.'.join(path)}: the weights give shape {value.shape}, the config.json's "
                f"sizes need {tuple(want.shape)} (weights and config.json from different models?)")
        values.append(jax.device_put(value))
        del value
        if progress:
            progress(i + 1, len(leaves), ".".join(path))
    params = jax.tree_util.tree_unflatten(treedef, values)

    provenance = {
        "kind": "import-hf", "source": str(src), "model_type": hf_cfg.get("model_type"),
        "architectures": hf_cfg.get("architectures"), "imported": datetime.datetime.now(
            datetime.timezone.utc).isoformat(timespec="seconds"),
        "files": {p.name: {"sha256": file_sha256(p), "bytes": p.stat().st_size}
                  for p in [src / "config.json", *weights.files]},
        "tokenizer_sha256": tok.sha256, "package_version": nested_jax.__version__,
    }
    settings = {f"model.{k}": v for k, v in overrides.items()}
    settings.update({"data.tokenizer": tok_path, "train.seq_len": config.train.seq_len})
    write_workdir(out, params=params, config=config, tokenizer_sha256=tok.sha256,
                  provenance=provenance,
                  preset=preset_text(str(src), "import-hf", settings, str(out)),
                  tokenizer_src=src)
    n_params = int(sum(np.size(x) for x in jax.tree.leaves(params)))
    return {"output": str(out), "model_type": hf_cfg.get("model_type"), "params": n_params,
            "layers": n_layers, "vocab_size": config.model.vocab_size,
            "tokenizer_vocab": tok.vocab_size, "files": [p.name for p in weights.files]}


def export_hf(checkpoint: str, output: str | os.PathLike, *, step: int | None = None) -> dict:
    """Write the transformer at `checkpoint` (a workdir) as a Hugging Face folder; a
    HOPE-Attention model with SwiGLU levels as its meta weights (`_stacked_as_transformer`)."""
    from nested_jax.eval.errors import EvalError
    from nested_jax.eval.restore import load

    out = fresh_output(output)
    try:
        loaded = load(checkpoint, step)
    except EvalError as e:
        raise ConvertError(str(e)) from None
    m = loaded.cfg.model
    if m.attention_window:
        raise ConvertError("sliding-window attention has no Llama/Qwen2 counterpart in "
                           "transformers; only full causal attention exports.")
    tok = loaded.tokenizer
    params = jax.tree.map(np.asarray, loaded.params)
    stacked = None
    how = get_variant(m.variant).hf_export
    if how == "stacked":
        params, m, stacked = _stacked_as_transformer(params, m)
    elif how != "direct":
        raise ConvertError(f"the checkpoint is a {m.variant!r} model; export-hf writes "
                           "transformers and HOPE-Attention models with SwiGLU CMS levels "
                           "(level-stacked ones)",
                           fix="export a transformer or a `convert stack` workdir.")
    tensors = dict(hf_map.hf_tensors(params, m.n_layers, bool(m.tie_embeddings)))
    cfg = hf_map.hf_config(m, bos_id=tok.bos_id, eos_id=tok.eos_id,
                           max_len=max(loaded.cfg.train.seq_len, m.rope_original_max_len
                                       if m.rope_scaling == "llama3" else 0))
    with _staging(out) as tmp:
        save_file(tensors, tmp / "model.safetensors", {"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        tok_files = []
        if tok.path.name in TOKENIZER_FILES:  # a Hugging Face tokenizer (not our own)
            for name in TOKENIZER_FILES:
                if (tok.path.parent / name).is_file():
                    shutil.copy2(tok.path.parent / name, tmp / name)
                    tok_files.append(name)
        (tmp / "EXPORT_NOTE.md").write_text(
            f"Exported by `python -m nested_jax.convert export-hf` from {loaded.directory} "
            f"step {loaded.step} ({m.n_layers} layers, d_model {m.d_model}).\n"
            + ("" if tok_files else "The tokenizer is a SentencePiece model with nested_jax's "
               "newline convention and is not exported; encode with nested_jax.\n")
            + (stacked["note"] if stacked else ""))
    out_doc = {"output": str(out), "architecture": cfg["architectures"][0],
               "tensors": len(tensors), "tokenizer_files": tok_files, "step": loaded.step}
    if stacked:
        out_doc.update({k: v for k, v in stacked.items() if k != "note"})
    return out_doc


def _stacked_as_transformer(params: dict, m):
    """A HOPE-Attention model's attention and CMS MLPs as transformer params and model
    config (convert.stack.as_transformer), with the note of what transformers cannot hold."""
    from nested_jax.convert.stack import as_transformer

    if m.cms.mlp != "swiglu":
        raise ConvertError(f"this HOPE-Attention model's CMS levels are {m.cms.mlp!r} MLPs; "
                           "only SwiGLU levels (model.cms.mlp='swiglu', as `convert stack` "
                           "makes) have a Llama/Qwen2 counterpart.")
    names = tuple(m.cms.names)
    params, per_block, how = as_transformer(params, names)
    t = m.copy_and_resolve_references()
    t.unlock()
    t.variant, t.n_layers, t.d_ff = "transformer", m.n_layers * per_block, int(m.cms.hidden)
    periods = ", ".join(f"{n} every {p} tokens (lr {lr:g})"
                        for n, p, lr in zip(names, m.cms.periods, m.cms.lrs))
    layout = ("one layer per block: only one level has a nonzero down projection, the "
              "others are identities" if how == "collapsed" else
              f"{per_block} layers per block, one per level (fast → slow); the first keeps "
              "the block's attention, the others have every attention projection set to 0, "
              "which adds exactly 0 to the residual stream")
    note = (f"\nThis model was a HOPE-Attention model ({len(names)} CMS levels: {periods}). "
            f"It is exported as its meta weights, {layout}: {t.n_layers} layers. transformers "
            "computes what nested_jax computes with every level's inner learning rate 0. "
            "What it cannot express: the levels' updates while reading (test-time learning "
            "from the teach signal every period), the online segment scan and any fast state; "
            "a generation there never adapts its MLPs to the context.\n")
    return params, t, {"stacked_layout": how, "layers": t.n_layers, "note": note}
