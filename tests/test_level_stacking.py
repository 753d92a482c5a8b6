"""Ad-hoc level stacking (NL §7.3; nested_jax/convert/stack.py) and model.freeze.

The paper's defining property: with every CMS level's inner learning rate 0 the stacked
HOPE-Attention model IS the source transformer — checked on the imported Llama fixture
(tests/fixtures/hf) through the plain forward, the online (training) forward and greedy
generation; with a nonzero rate the levels update and later tokens change.
"""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nested_jax.convert import workdir
from nested_jax.convert.__main__ import main as convert_main
from nested_jax.convert.stack import stack

FIX = Path(__file__).parent / "fixtures" / "hf"


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("stack")
    src = workdir.import_hf(FIX / "llama_gqa", root / "src")["output"]
    zero = stack(src, root / "zero", periods=(16, 32), lr=0.0)["output"]
    live = stack(src, root / "live", periods=(16, 32), lr=1.0)["output"]
    return {"src": src, "zero": zero, "live": live, "root": root}


def _load(path):
    from nested_jax.eval.restore import load

    return load(str(path))


def _tokens():
    return jax.random.randint(jax.random.key(0), (2, 65), 0, 384)


def test_zero_inner_lr_is_the_source_model(dirs):
    from nested_jax.model.online import online_forward
    from nested_jax.ops.losses import token_cross_entropy

    src, st = _load(dirs["src"]), _load(dirs["zero"])
    assert st.cfg.model.variant == "hope_attention" and st.cfg.model.cms.mlp == "swiglu"
    toks = _tokens()
    logits_src = src.fn.bind(src.params)(toks[:, :-1])
    logits_st = st.fn.bind(st.params)(toks[:, :-1])
    assert float(jnp.abs(logits_src - logits_st).max()) <= 1e-5
    ce_src = token_cross_entropy(logits_src, toks[:, 1:])
    _, aux = online_forward(st.fn, st.params, toks, step=0)
    assert float(jnp.abs(aux["ce"] - ce_src).max()) <= 1e-5
    # the levels did take their (zero) steps: the stacked model runs the online update path
    assert float(aux["cms_updates"]["fast"][0]) == 4.0
    assert all(float(jnp.abs(d).max()) == 0.0
               for d in jax.tree.leaves(aux["fast"]["carry"]["cms"]))


def test_nonzero_inner_lr_updates_levels_and_changes_later_tokens(dirs):
    from nested_jax.model.online import online_forward
    from nested_jax.ops.losses import token_cross_entropy

    src, st = _load(dirs["src"]), _load(dirs["live"])
    toks = _tokens()
    ce_src = token_cross_entropy(src.fn.bind(src.params)(toks[:, :-1]), toks[:, 1:])
    _, aux = online_forward(st.fn, st.params, toks, step=0)
    diff = jnp.abs(aux["ce"] - ce_src).max(0)
    assert float(diff[:16].max()) <= 1e-5  # the first segment reads the untouched levels
    assert float(diff[16:].max()) > 1e-3  # later ones read updated levels
    deltas = aux["fast"]["carry"]["cms"]
    assert float(jnp.abs(deltas["fast"]["w2"]).max()) > 0  # identity level started learning
    assert float(jnp.abs(deltas["mid"]["w1"]).max()) > 0


def test_generate_equals_source_at_zero_lr(dirs, tmp_path):
    from nested_jax.generate import main as generate_main

    outs = {}
    for k in ("src", "zero"):
        out = tmp_path / f"{k}.json"
        argv = ["--checkpoint", dirs[k], "--prompt", "Once upon a time, there was a",
                "--max-new-tokens", "10", "--output", str(out)]
        if k == "zero":
            argv.append("--memorize")  # levels keep learning (at rate 0: they do not move)
        assert generate_main(argv) == 0
        outs[k] = json.loads(out.read_text())["tokens"]
    assert outs["src"] == outs["zero"] and len(outs["src"]) == 10


def test_provenance_and_audit(dirs, capsys):
    prov = json.loads((Path(dirs["zero"]) / "provenance.json").read_text())
    assert prov["kind"] == "stack" and prov["mlp_level"] == "mid"
    assert prov["source_provenance"]["kind"] == "import-hf"
    import runpy

    from nested_jax.audit import audit

    cfg = runpy.run_path(str(Path(dirs["zero"]) / "config.py"))["get_config"]()
    rows, problems = audit(cfg)
    items = {r.item: r.setting for r in rows if r.component == "provenance"}
    assert "stacked from" in items and "imported from" in items and not problems


def test_stack_refuses_non_transformers_and_existing_output(dirs, capsys):
    rc = convert_main(["stack", "--checkpoint", dirs["zero"], "--output",
                       str(dirs["root"] / "again")])
    err = capsys.readouterr().err
    assert rc == 2 and "error:" in err and "'hope_attention' model" in err
    assert not (dirs["root"] / "again").exists()
    rc = convert_main(["stack", "--checkpoint", dirs["src"], "--output", dirs["zero"]])
    assert rc == 2 and "already exists" in capsys.readouterr().err
    rc = convert_main(["stack", "--checkpoint", dirs["src"], "--periods", "16,x",
                       "--output", str(dirs["root"] / "x")])
    assert rc == 2 and "--periods" in capsys.readouterr().err


def test_export_of_a_stacked_model(dirs, tmp_path):
    """export-hf of HOPE-Attention: collapsed to the source when only one level has a down
    projection (export(stack(x)) is x), expanded to one layer per level (zero attention in
    the extra layers) otherwise; either way the exported transformer, imported back, gives
    the stacked model's logits at inner learning rate 0."""
    from nested_jax.convert.safetensors_io import SafetensorsFile

    out = workdir.export_hf(dirs["zero"], tmp_path / "collapsed")
    assert out["stacked_layout"] == "collapsed" and out["layers"] == 2
    src_out = workdir.export_hf(dirs["src"], tmp_path / "src_hf")
    a = SafetensorsFile(Path(out["output"]) / "model.safetensors")
    b = SafetensorsFile(Path(src_out["output"]) / "model.safetensors")
    assert sorted(a.names) == sorted(b.names)
    assert all(np.array_equal(a.get(n), b.get(n)) for n in a.names)

    st = _load(dirs["zero"])
    rng = np.random.default_rng(0)
    params = jax.tree.map(np.asarray, st.params)
    for n, lv in params["blocks"]["cms"]["levels"].items():  # every level "learned"
        lv["w2"] = lv["w2"] + rng.normal(0, 0.05, lv["w2"].shape).astype(np.float32)
    workdir.write_workdir(tmp_path / "trained", params=params, config=st.cfg,
                          tokenizer_sha256=st.tokenizer.sha256, preset="", provenance={},
                          tokenizer_src=Path(dirs["zero"]) / "tokenizer")
    out = workdir.export_hf(str(tmp_path / "trained"), tmp_path / "expanded")
    assert out["stacked_layout"] == "expanded" and out["layers"] == 4
    note = (Path(out["output"]) / "EXPORT_NOTE.md").read_text()
    assert "test-time learning" in note and "4 layers" in note
    back = _load(workdir.import_hf(out["output"], tmp_path / "back")["output"])
    assert back.cfg.model.variant == "transformer" and back.cfg.model.n_layers == 4
    toks = _tokens()[:, :-1]
    want = st.fn.bind(jax.tree.map(jnp.asarray, params))(toks)
    got = back.fn.bind(back.params)(toks)
    assert float(jnp.abs(want - got).max()) <= 1e-4 * float(jnp.abs(want).max())


def test_freeze_leaves_frozen_parameters_bitwise_unchanged():
    import functools

    from nested_jax.configs.default import get_config
    from nested_jax.model.lm import init_params
    from nested_jax.train import optim, step as step_lib
    from tests.helpers import tiny_model_config

    cfg = tiny_model_config(freeze=("embed.*", "blocks.attn.*"))
    o = get_config().optim
    o.warmup_steps = 0
    fn, params = init_params(cfg, seed=0)
    tx = optim.build_optimizer(o, 10, freeze=cfg.freeze)
    state = step_lib.init_train_state(params, tx)
    step = jax.jit(functools.partial(step_lib.train_step, fn=fn, tx=tx,
                                     lr_schedule=optim.schedule(o, 10)))
    tokens = jax.random.randint(jax.random.key(1), (2, 17), 0, cfg.vocab_size)
    for _ in range(3):
        state, _ = step(state, {"tokens": tokens})
    labels = optim.frozen_labels(params, cfg.freeze)
    n_frozen = 0
    for (path, before), after, label in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                                            jax.tree.leaves(state["params"]),
                                            jax.tree.leaves(labels)):
        if label == "frozen":
            n_frozen += 1
            np.testing.assert_array_equal(np.asarray(before), np.asarray(after))
        else:
            assert not np.array_equal(np.asarray(before), np.asarray(after)), path
    assert n_frozen == 5  # embedding, wq, wk, wv, wo
    with pytest.raises(ValueError, match="matches no parameter"):
        optim.check_freeze(params, ("blocks.atn.*",))


@pytest.mark.parametrize("variant", ["transformer", "hope_attention"])
def test_frozen_leaves_get_no_gradient_and_the_rest_the_same(variant):
    """model.freeze stops the outer gradient at the frozen leaves (their weight-gradient work
    is skipped): exactly 0 there, and every trained leaf's gradient is unchanged."""
    from nested_jax.model.lm import init_params
    from nested_jax.train import optim, step as step_lib
    from tests.tiny import tiny_model

    pats = ("embed.*", "blocks.attn.*")
    tokens = jax.random.randint(jax.random.key(2), (2, 33), 0, 64)
    out = {}
    for freeze in ((), pats):
        cfg = tiny_model(variant, vocab_size=64, d_model=32, n_layers=1, n_heads=2,
                         online=dict(segment_len=16), freeze=freeze,
                         cms=dict(names=("fast", "mid"), periods=(16, 32), optimizers=("gd", "gd"),
                                  lrs=(1e-1, 1e-1)))
        fn, params = init_params(cfg, seed=0)
        (loss, _), grads = step_lib.loss_and_grads(params, tokens, jnp.int32(0), fn=fn)
        out[freeze] = (float(loss), grads, optim.frozen_labels(params, pats))
    (l0, g0, labels), (l1, g1, _) = out[()], out[pats]
    assert l0 == l1
    for a, b, lab in zip(jax.tree.leaves(g0), jax.tree.leaves(g1), jax.tree.leaves(labels)):
        if lab == "frozen":
            assert float(jnp.abs(b).max()) == 0.0 and float(jnp.abs(a).max()) > 0.0
        else:
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-8)


def test_stack_llama_preset_trains_a_stacked_model_with_fsdp(dirs, tmp_path):
    """configs/stack_llama.py:WORKDIR (the GPU preset of launch/stack_llama.sh) rebuilds the
    converted model exactly, starts from its weights and trains it with parameters sharded
    over both (CPU) devices in the gspmd FSDP mode; the shape-only form (`3b`) is Llama-3.2-3B
    stacked, and a non-stacked workdir is refused."""
    from nested_jax.configs.stack_llama import get_config
    from nested_jax.data import assets
    from nested_jax.train.loop import train_and_evaluate
    from tests.tiny import rolled

    st = stack(dirs["src"], tmp_path / "st", periods=(16, 32), lr=1e-2, seq_len=64)["output"]
    c = get_config(st)
    assert c.train.init_from == str(Path(st).resolve()) and c.mesh.mode == "gspmd"
    assert c.model.variant == "hope_attention" and c.model.cms.periods == (16, 32)
    text = next(assets.novels("valid"))["text"][:20000]
    (tmp_path / "a.txt").write_text(text)
    (tmp_path / "m.json").write_text(json.dumps({"name": "t", "row_len": 64, "sources": [
        {"domain": "d", "path": str(tmp_path / "a.txt"), "split": {"valid_fraction": 0.2}}]}))
    c.data.dataset, c.data.cache_dir = str(tmp_path / "m.json"), str(tmp_path / "cache")
    c.train.seq_len, c.train.batch_size, c.train.steps = 64, 2, 2
    c.model.dtype = "float32"
    rolled(c)  # scans as loops: compile time only (the preset's model and run are unchanged)
    c.optim.warmup_steps, c.eval.every_steps, c.eval.num_batches = 1, 2, 1
    c.checkpoint.every_steps, c.logging.progress_bar = 2, False
    summary = train_and_evaluate(c, str(tmp_path / "run"))
    assert summary["final_step"] == 2 and np.isfinite(summary["eval_loss"])
    cfg3 = get_config("3b")
    assert (cfg3.model.d_model, cfg3.model.n_layers, cfg3.model.vocab_size) == (3072, 28, 128256)
    with pytest.raises(ValueError, match="convert stack"):
        get_config(dirs["src"])
