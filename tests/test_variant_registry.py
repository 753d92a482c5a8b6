"""The variant registry (nested_jax/model/variants.py): every variant declares what it is once,
and everything else asks. A sixth variant defined here, in the test alone (a block class with
its spec), validates, trains online, decodes, audits and is refused with a clear error when its
chunk does not tile the segment — nothing else in the package had to change."""

from __future__ import annotations

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nested_jax.audit import audit
from nested_jax.eval.decode import Decoder, block_len
from nested_jax.model.blocks import BLOCKS, _TITANS_CHUNK, _Base, _out_std
from nested_jax.model.layers import RMSNorm
from nested_jax.model.lm import init_params
from nested_jax.model.loss import token_losses
from nested_jax.model.online import online_forward
from nested_jax.model.titans import TitansMemory
from nested_jax.model.variants import Variant, get, online_names, registry
from nested_jax.train.validate import ConfigError, check_values
from tests.tiny_checkpoint import tiny_config

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "nested_jax"


def test_registry_is_the_block_table():
    reg = registry()
    assert tuple(reg) == tuple(BLOCKS)
    for name, spec in reg.items():
        assert spec.name == name and BLOCKS[name].spec is spec
    assert online_names() == ("hope", "hope_attention", "hope_hybrid")
    assert [n for n, v in reg.items() if not v.attention] == ["hope"]
    with pytest.raises(ValueError, match="choose one of"):
        get("nope")


def test_no_variant_name_branches_outside_the_registry():
    """What a variant is lives in its spec: no `variant == "…"` or membership lists."""
    pattern = re.compile(r"variant\s*==|variant\s+(not\s+)?in\s*\(|ONLINE_VARIANTS")
    hits = [f"{p.relative_to(PACKAGE)}:{i}: {line.strip()}"
            for p in PACKAGE.rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert hits == []


@pytest.mark.parametrize("variant,fields,block", [
    ("transformer", {}, 1),
    ("hope_attention", {}, 1),
    ("titans", {"titans.chunk_size": 8}, 8),
    ("titans", {"titans.chunk_size": 8, "titans.mode": "mac", "titans.mac_segment": 32}, 32),
    ("hope_hybrid", {"titans.chunk_size": 8}, 8),
    ("hope_hybrid", {"titans.chunk_size": 64}, 16),  # a call of one segment: one chunk
    ("hope", {"selfmod.chunk_size": 4, "selfmod.chunk_size_mem": 8}, 8),
    ("hope", {"selfmod.chunk_size": 4, "selfmod.chunk_size_mem": 0}, 4),  # 0: = chunk_size
])
def test_read_block_from_the_spec(variant, fields, block):
    c = tiny_config(variant)
    for dotted, v in fields.items():
        group, name = dotted.split(".")
        c.model[group][name] = v
    assert block_len(c.model) == block


class TitansCMSBlock(_Base):
    """A sixth variant, for this test only: Titans memory → CMS chain, no attention."""

    spec = Variant("titans_cms", "test: Titans memory → CMS", "choice", online=True,
                   attention=False, memory="titans", groups=("titans", "cms", "online"),
                   tilings=(_TITANS_CHUNK,))

    def __init__(self, cfg, *, rngs, dtype=jnp.float32):
        self.mem_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, dtype=dtype)
        self.titans = TitansMemory(cfg, out_std=_out_std(cfg), rngs=rngs, dtype=dtype)
        self._cms(cfg, _out_std(cfg), rngs, dtype)

    def __call__(self, x, pos_T, carry=None, probes=None):
        new, aux = {}, {}
        m, new["titans"] = self.titans(self.mem_norm(x), None if carry is None else carry["titans"])
        x = x + m.astype(x.dtype)
        x = self._run_cms(x, carry, probes, new, aux)
        return x, (new if carry is not None else None), aux


@pytest.fixture
def sixth(monkeypatch):
    monkeypatch.setitem(BLOCKS, "titans_cms", TitansCMSBlock)
    c = tiny_config("titans_cms", seq_len=32)
    c.model.titans.chunk_size = 8
    return c


@pytest.mark.slow  # ~19 s (an online run of a Titans-memory variant); suite time budget
def test_a_sixth_variant_needs_only_its_block_and_spec(sixth):
    c = sixth
    check_values(c)  # the variant name and its chunk tiling come from the spec
    assert get("titans_cms").online and "titans_cms" in online_names()
    # trains online: the segment scan with teach signals and CMS updates
    fn, params = init_params(c.model, 0)
    toks = jax.random.randint(jax.random.key(0), (2, 33), 0, c.model.vocab_size)
    _, ce, metrics, fast = token_losses(fn, params, toks, 0)
    assert ce.shape == (2, 32) and np.isfinite(np.asarray(ce)).all()
    assert fast is not None and "titans" in fast["carry"] and "kv" not in fast["carry"]
    assert sum(float(v) for k, v in metrics.items() if k.endswith("/updates")) > 0
    grads = jax.grad(lambda p: token_losses(fn, p, toks, 0).loss)(params)
    assert float(jnp.abs(grads["blocks"]["cms"]["levels"]["fast"]["w1"]).sum()) > 0
    # decodes in its read block (the Titans chunk); the first greedy token is the argmax
    # of the frozen full forward at the prompt's last position (causal: later tokens unread)
    assert block_len(c.model) == 8
    dec = Decoder(fn, params, max_len=32, prefill=1)
    g = dec.generate(np.asarray(toks[:1, :9]), 6, stop_at_eos=False)
    _, aux = online_forward(fn, params, toks[:1, :17], step=0, update=False,
                            collect_argmax=True)
    assert g.tokens.shape == (1, 6) and int(g.tokens[0, 0]) == int(aux["argmax"][0, 8])
    # audits: its spec's summary and the Titans / CMS rows
    rows, _ = audit(c)
    items = {(r.component, r.item) for r in rows}
    assert ("model", "variant") in items and ("Titans memory", "memory depth L_M") in items
    assert any(r.component == "CMS" for r in rows)
    assert [r.note for r in rows if r.item == "variant"] == ["test: Titans memory → CMS"]


def test_a_sixth_variant_gets_the_chunk_error_from_its_tiling(sixth):
    sixth.model.titans.chunk_size = 5
    with pytest.raises(ConfigError, match=r"model\.titans\.chunk_size=5 does not divide the "
                                          r"16-token online segment"):
        check_values(sixth)
