"""The compiled-step cost model counts every loop iteration (benchmarks/hlo_cost.py,
benchmarks/cost_model.py): scans multiply their body by the trip count, nested scans by
the product, and a transformer's count matches the analytic 6·N + attention."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import cost_model, hlo_cost
from tests.tiny import tiny_config

SDS = jax.ShapeDtypeStruct


def _body(c, w):
    return jnp.tanh(c @ w) * 0.5 + c


def _costs(f, *args, **kw):
    compiled = jax.jit(f).lower(*args).compile()
    return hlo_cost.hlo_costs(compiled.as_text(), **kw), hlo_cost.xla_cost_analysis(compiled)


X, W = SDS((16, 64), jnp.float32), SDS((64, 64), jnp.float32)


def test_per_instruction_costs_match_xla_without_loops():
    ours, xla = _costs(_body, X, W)
    assert ours["while_loops"] == 0
    assert ours["flops"] == pytest.approx(xla["flops"], rel=0.01)
    assert ours["flops"] >= 2 * 16 * 64 * 64


def test_scan_counts_trip_count_times_body():
    body, _ = _costs(_body, X, W)

    def scanned(x, w):
        return jax.lax.scan(lambda c, _: (_body(c, w), None), x, None, length=7)[0]

    ours, xla = _costs(scanned, X, W)
    assert [lp["trip_count"] for lp in ours["loops"]] == [7]
    assert ours["flops"] == pytest.approx(7 * body["flops"], rel=0.01)
    assert xla["flops"] < 2 * body["flops"]  # XLA's own analysis counts the body once

    unrolled = lambda x, w: jax.lax.scan(  # noqa: E731  same program without a loop
        lambda c, _: (_body(c, w), None), x, None, length=7, unroll=True)[0]
    _, xla_unrolled = _costs(unrolled, X, W)
    assert ours["flops"] == pytest.approx(xla_unrolled["flops"], rel=0.01)


def test_nested_scans_multiply_trip_counts():
    body, _ = _costs(_body, X, W)

    def nested(x, w):
        def outer(c, _):
            return jax.lax.scan(lambda c2, _: (_body(c2, w), None), c, None, length=5)[0], None

        return jax.lax.scan(outer, x, None, length=3)[0]

    ours, _ = _costs(nested, X, W)
    assert sorted(lp["trip_count"] for lp in ours["loops"]) == [3, 5]
    inner = next(lp for lp in ours["loops"] if lp["trip_count"] == 5)
    assert inner["executions"] == 3 and inner["depth"] == 1
    assert ours["flops"] == pytest.approx(15 * body["flops"], rel=0.01)


def test_scan_outputs_count_one_slice_per_iteration():
    """A scan's stacked output is written in place: bytes grow linearly with the length."""

    def stacked(n):
        def f(x, w):
            return jax.lax.scan(lambda c, _: (_body(c, w), c), x, None, length=n)[1]

        return _costs(f, X, W)[0]["bytes"]

    assert 6 < stacked(64) / stacked(8) < 10  # whole-buffer counting would give ~64


def test_conditional_taken_fraction():
    def f(x, w, p):
        return jax.lax.cond(p, lambda: _body(x, w), lambda: x)

    args = (X, W, SDS((), jnp.bool_))
    hi, _ = _costs(f, *args)
    quarter, _ = _costs(f, *args, cond_taken_fraction=0.25)
    assert hi["conditionals"] == 1
    assert quarter["flops"] == pytest.approx(0.25 * hi["flops"], rel=0.02)


def _tiny_transformer(unroll_layers):
    return tiny_config("transformer", vocab_size=256, d_model=64, n_layers=3, n_heads=4,
                       unroll_layers=unroll_layers, train=dict(seq_len=64, batch_size=4))


def test_transformer_flops_match_analytic_through_the_layer_scan():
    c = _tiny_transformer(unroll_layers=0)  # layers run in a lax.scan (while loops)
    compiled, params = cost_model.compile_train_step(c)
    costs = hlo_cost.hlo_costs(compiled.as_text())
    assert any(lp["trip_count"] == 3 for lp in costs["loops"])
    per_token = costs["flops"] / (c.train.seq_len * c.train.batch_size)
    analytic = cost_model.analytic_flops_per_token(c, params)  # 6·N + 12·L·T·D
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    assert analytic == 6 * n + 12 * 3 * 64 * 64
    assert 0.7 < per_token / analytic < 1.3
    # The same step with the layers unrolled has no loop, so XLA's own count is right there.
    flat, _ = cost_model.compile_train_step(_tiny_transformer(unroll_layers=3))
    xla_flat = hlo_cost.xla_cost_analysis(flat)["flops"]
    assert costs["flops"] == pytest.approx(xla_flat, rel=0.03)
    assert hlo_cost.xla_cost_analysis(compiled)["flops"] < 0.8 * xla_flat  # bodies once


def test_cli_writes_projection(tmp_path, capsys):
    rows = cost_model.main(["--preset", "smoke", "--variants", "transformer", "--device", "h100",
                            "--compile-on", "cpu", "--output", str(tmp_path)])
    out = capsys.readouterr().out
    assert "not a GPU measurement" in out
    with open(tmp_path / "results.json") as f:
        res = json.load(f)
    row = res["rows"][0]
    for key in ("variant", "params", "flops_per_token", "bytes_per_token", "arithmetic_intensity",
                "projected_tokens_per_sec", "projected_mfu", "bound", "kernels_per_step"):
        assert key in row, key
    assert row["bound"] in ("compute", "memory", "launch")
    assert row["projected_tokens_per_sec"] == pytest.approx(row["tokens_per_step"]
                                                            / row["step_time_s"])
    assert row["compiled_for"] == "cpu" and "CPU compilation" in res["note"]
    assert row["step_time_s"] == pytest.approx(row["roofline_s"] + row["launch_s"])
    assert 0.7 < row["flops_vs_analytic"] < 1.3
    assert "not a GPU measurement" in res["note"]
    assert os.path.getsize(tmp_path / "roofline.png") > 0
    assert rows[0]["variant"] == "transformer"


def test_collective_bytes_and_communication_time():
    """An all-gather over the 2 (CPU) test devices: its result bytes are counted once per
    execution, ×3 inside a 3-step scan; the projection charges (n−1)/n of them to the link
    and divides the per-token numbers by the tokens one device processes."""
    from jax.sharding import Mesh, PartitionSpec as P

    mesh = Mesh(np.array(jax.devices()[:2]), ("x",))

    def gather(a):
        return jax.lax.all_gather(a, "x", tiled=True)

    def f(a):
        g = jax.shard_map(gather, mesh=mesh, in_specs=P("x"), out_specs=P(), check_vma=False)

        def body(c, _):
            return c + g(a * c).sum(), None  # depends on the carry: stays in the loop

        return jax.lax.scan(body, jnp.float32(0), None, length=3)[0]

    ours, _ = _costs(f, SDS((8, 16), jnp.float32))  # each device: [4,16] → gathered [8,16]
    assert ours["collective_bytes"] == {"all-gather": 3 * 8 * 16 * 4}
    dev = {"peak_flops": 1e12, "bandwidth": 1e11, "link_bandwidth": 1e9}
    costs = {"flops": 2e12, "bytes": 1e9, "kernels": 0, "collective_bytes": {"all-gather": 4e9}}
    p = cost_model.project(costs, tokens=8, model_fpt=1.0, dev=dev, n_devices=4)
    assert p["comm_s"] == pytest.approx(4e9 * 3 / 4 / 1e9)
    assert p["step_time_s"] == pytest.approx(2.0 + 3.0) and p["bound"] == "communication"
    assert p["flops_per_token"] == pytest.approx(2e12 / 2)  # 2 tokens per device
    assert cost_model.project(costs, 8, 1.0, dev)["comm_s"] == 0.0  # one device: no links
