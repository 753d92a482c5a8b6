"""Hugging Face Llama-family import / export against transformers' own outputs.

The fixtures in tests/fixtures/hf/ were made by tests/fixtures/make_hf_fixtures.py with
transformers + CPU torch (versions in VERSIONS.json): a Llama with grouped-query attention
and llama3 RoPE scaling, a Qwen2 with q/k/v biases, tied and padded embeddings and sharded
weights, their byte-level BPE tokenizers, transformers' logits, greedy continuation and
token ids. Nothing here imports torch.
"""

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nested_jax.convert import workdir
from nested_jax.convert.__main__ import main as convert_main
from nested_jax.convert.safetensors_io import SafetensorsFile, save_file
from nested_jax.data.tokenizer import load_tokenizer

FIX = Path(__file__).parent / "fixtures" / "hf"
MODELS = ("llama_gqa", "qwen2_tied")


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {m: Path(workdir.import_hf(FIX / m, root / m)["output"]) for m in MODELS}


def _loaded(path):
    from nested_jax.eval.restore import load

    return load(str(path))


@pytest.mark.parametrize("name", MODELS)
def test_logits_equal_transformers(imported, name):
    ref = np.load(FIX / name / "reference.npz")
    got = _loaded(imported[name])
    logits = np.asarray(got.fn.bind(got.params)(jnp.asarray(ref["input_ids"])))
    assert logits.shape == ref["logits"].shape
    assert np.abs(logits - ref["logits"]).max() <= 1e-4
    cfg = got.cfg.model
    assert cfg.n_kv_heads == 2 and cfg.variant == "transformer"
    if name == "llama_gqa":
        assert cfg.rope_scaling == "llama3" and not cfg.tie_embeddings
    else:
        assert cfg.attention_bias and cfg.tie_embeddings
        assert cfg.vocab_size > got.tokenizer.vocab_size  # padded embedding rows kept


@pytest.mark.parametrize("name", MODELS)
def test_tokenizer_ids_equal_transformers(imported, name):
    ref = np.load(FIX / name / "reference.npz")
    tok = load_tokenizer(str(imported[name] / "tokenizer" / "tokenizer.json"))
    text = str(ref["text"])
    assert tok.encode(text) == ref["text_ids_plain"].tolist()
    assert tok.encode(text, add_bos=True) == ref["text_ids"].tolist()  # HF's default specials
    assert tok.decode(tok.encode(text)) == text == str(ref["decoded"])
    assert tok.encode_batch([text, "a b"]) == [tok.encode(text), tok.encode("a b")]
    assert tok.doc_start_id == (ref["prompt_ids"][0] if name == "llama_gqa" else None)


def test_sentencepiece_only_folder_imports_with_transformers_ids(tmp_path):
    """A folder with tokenizer.model and no tokenizer.json (Llama 2, TinyLlama, Mistral):
    import-hf takes it, and the workdir's tokenizer gives the ids of transformers' slow
    LlamaTokenizer and of its fast conversion (tests/fixtures/hf/llama_spm_tokenizer)."""
    import shutil

    spm = FIX / "llama_spm_tokenizer"
    src = tmp_path / "src"
    src.mkdir()
    for f in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copy(FIX / "llama_gqa" / f, src / f)
    for f in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copy(spm / f, src / f)
    out = workdir.import_hf(src, tmp_path / "w")["output"]
    tok = load_tokenizer(str(Path(out) / "tokenizer"))
    assert type(tok).__name__ == "HFSentencePieceTokenizer"
    ref = np.load(spm / "spm_reference.npz")
    for key in ("text", "sentence"):
        text = str(ref[key])
        for impl in ("slow", "fast"):
            assert tok.encode(text) == ref[f"{impl}_{key}_ids_plain"].tolist(), (key, impl)
            assert tok.encode(text, add_bos=True) == ref[f"{impl}_{key}_ids"].tolist()
    sentence = ref["slow_sentence_ids_plain"].tolist()
    assert tok.decode(sentence) == str(ref["decoded_sentence"])
    assert tok.doc_start_id == tok.bos_id == 1 and tok.eos_id == 2
    assert tok.encode_batch([str(ref["text"]), "a b"]) == [tok.encode(str(ref["text"])),
                                                            tok.encode("a b")]
    from nested_jax.eval.restore import load

    assert load(out).meta["tokenizer_sha256"] == tok.sha256  # the checkpoint records it
    exp = workdir.export_hf(out, tmp_path / "hf")
    assert "tokenizer.model" in exp["tokenizer_files"]


@pytest.mark.parametrize("name", MODELS)
def test_greedy_generate_equals_transformers(imported, name, tmp_path):
    """`python -m nested_jax.generate` (greedy, incremental decoding) writes transformers'
    greedy continuation of the same prompt."""
    from nested_jax.generate import main as generate_main

    ref = np.load(FIX / name / "reference.npz")
    tok = load_tokenizer(str(imported[name] / "tokenizer" / "tokenizer.json"))
    prompt = ref["prompt_ids"].tolist()
    body = prompt[1:] if tok.doc_start_id is not None else prompt
    want = ref["greedy_ids"][len(prompt):].tolist()
    out = tmp_path / "gen.json"
    rc = generate_main(["--checkpoint", str(imported[name]), "--prompt", tok.decode(body),
                        "--max-new-tokens", str(len(want)), "--output", str(out)])
    assert rc == 0
    got = json.loads(out.read_text())
    assert got["prompt_tokens"] == len(prompt)
    assert got["tokens"] == want


def test_export_import_is_bitwise(imported, tmp_path):
    """import(export(x)) == x for every parameter, bit for bit, and the export is a folder
    transformers reads (config.json fields, tensor names, no lm_head when tied)."""
    for name in MODELS:
        exp = tmp_path / f"exp_{name}"
        assert convert_main(["export-hf", "--checkpoint", str(imported[name]),
                             "--output", str(exp)]) == 0
        hf_cfg = json.loads((exp / "config.json").read_text())
        src_cfg = json.loads((FIX / name / "config.json").read_text())
        for k in ("model_type", "hidden_size", "num_key_value_heads", "rope_theta",
                  "tie_word_embeddings", "rms_norm_eps", "vocab_size"):
            assert hf_cfg[k] == src_cfg[k], k
        names = set(SafetensorsFile(exp / "model.safetensors").names)
        assert ("lm_head.weight" in names) == (not src_cfg["tie_word_embeddings"])
        assert (exp / "tokenizer.json").is_file()
        back = workdir.import_hf(exp, tmp_path / f"back_{name}")["output"]
        a, b = _loaded(imported[name]).params, _loaded(back).params
        jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)),
                     a, b)


def test_imported_workdir_verifies(imported, capsys):
    from nested_jax.checkpoint.verify import verify

    assert verify(str(imported["qwen2_tied"])) == 0, capsys.readouterr().out


def test_init_from_restores_the_imported_params(imported):
    from nested_jax.model.lm import abstract_model
    from nested_jax.train.loop import params_from
    from nested_jax.train.validate import ConfigError

    got = _loaded(imported["llama_gqa"])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                            abstract_model(got.cfg.model).params())
    params = params_from(str(imported["llama_gqa"]) + "@0", abstract, got.tokenizer.sha256)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)),
                 params, got.params)
    with pytest.raises(ConfigError, match="another tokenizer"):
        params_from(str(imported["llama_gqa"]), abstract, "0" * 64)
    with pytest.raises(ConfigError, match="step number"):
        params_from(str(imported["llama_gqa"]) + "@x", abstract, got.tokenizer.sha256)


def test_preset_trains_from_the_import(imported):
    """The workdir's config.py is a preset whose train.init_from names the workdir."""
    import runpy

    cfg = runpy.run_path(str(imported["qwen2_tied"] / "config.py"))["get_config"]()
    assert cfg.train.init_from == str(imported["qwen2_tied"])
    assert cfg.model.attention_bias and cfg.model.vocab_size == 448


def _copy(name, tmp_path) -> Path:
    dst = tmp_path / f"src_{name}"
    shutil.copytree(FIX / name, dst)
    return dst


def _bad(tmp_path, capsys, src, fragment):
    out = tmp_path / "out"
    rc = convert_main(["import-hf", "--input", str(src), "--output", str(out)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "error:" in err and fragment in err, err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.partial")]


def test_bad_inputs_are_clear_errors_and_write_nothing(tmp_path, capsys):
    src = _copy("llama_gqa", tmp_path)
    (src / "config.json").rename(src / "config.bak")
    _bad(tmp_path, capsys, src, "config.json is missing")
    (src / "config.bak").rename(src / "config.json")

    cfg = json.loads((src / "config.json").read_text())
    for change, fragment in (({"model_type": "gpt2"}, "model_type 'gpt2'"),
                             ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "'yarn'"),
                             ({"sliding_window": 4096}, "sliding_window"),
                             ({"vocab_size": 100}, "embedding has 100 rows")):
        (src / "config.json").write_text(json.dumps({**cfg, **change}))
        _bad(tmp_path, capsys, src, fragment)
    (src / "config.json").write_text(json.dumps(cfg))

    weights = (src / "model.safetensors").read_bytes()
    (src / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    _bad(tmp_path, capsys, src, "truncated")
    (src / "model.safetensors").unlink()
    _bad(tmp_path, capsys, src, "no weights")

    shard = _copy("qwen2_tied", tmp_path)
    (shard / "model-00002-of-00003.safetensors").unlink()
    _bad(tmp_path, capsys, shard, "model-00002-of-00003.safetensors is missing")

    (tmp_path / "out").mkdir()
    rc = convert_main(["import-hf", "--input", str(FIX / "llama_gqa"), "--output",
                       str(tmp_path / "out")])
    assert rc == 2 and "already exists" in capsys.readouterr().err
    assert not any((tmp_path / "out").iterdir())


def test_safetensors_writer_round_trip(tmp_path):
    import ml_dtypes

    t = {"b": np.arange(6, dtype=np.float32).reshape(2, 3),
         "a": np.ones((4,), ml_dtypes.bfloat16), "c": np.array([1, 2], np.int64)}
    save_file(t, tmp_path / "x.safetensors")
    f = SafetensorsFile(tmp_path / "x.safetensors")
    assert f.names == ["a", "b", "c"]
    for k, v in t.items():
        np.testing.assert_array_equal(f.get(k), v)
        assert f.get(k).dtype == v.dtype
