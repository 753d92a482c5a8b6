"""The GPU program without a GPU (benchmarks/gpu_aot.py, issue 20 item 1): the thunk-sequence
accounting on a program whose structure is known, from a committed XLA:GPU dump (always)
and compiled live for an H100 when the gpu-aot extra is installed; the H100 compile of the
smoke training step (slow); the GPU extras resolve (slow: asks the package index)."""

import os
import subprocess
import sys

import pytest

from benchmarks import gpu_aot

HERE = os.path.dirname(__file__)
FIXTURE = os.path.join(HERE, "fixtures", "gpu_aot")
sys.path.insert(0, os.path.join(HERE, "fixtures"))
import make_gpu_aot_dump as prog  # noqa: E402

needs_plugin = pytest.mark.skipif(gpu_aot.plugin_name() is None,
                                  reason="gpu-aot extra not installed (EXTRAS=dev,gpu-aot)")


def _check_known(flags: str, dump: dict, trips: int, outer: int):
    """Counts that follow from the program alone: every matmul of `known_program` runs once
    per application (K per chain, one chain per inner step and one at the end), the loops
    run their trip counts, and who launches them depends on the flags."""
    th = dump["thunks"]
    K = prog.K
    assert th["matmuls"] == K * (trips * outer + 1)
    loops = sorted((lp["trip_count"], lp["executions"]) for lp in th["loops"])
    assert loops == sorted([(outer, 1.0), (trips, float(outer))])
    assert all(lp["trip_count_known"] for lp in th["loops"])
    if flags == "default":  # loops stay on the host; each inner body is one graph
        assert th["host_loop_iterations"] == outer + outer * trips
        assert th["graph_launches"] == outer * trips + 1
    else:  # WHILE command buffers: the whole program is one graph, the GPU runs the loops
        assert th["host_loop_iterations"] == 0
        assert th["graph_launches"] == 1
        assert th["host_ops"] == 0
    assert th["device_ops"] == th["host_ops"] + th["ops_in_graphs"]
    assert th["device_ops"] >= th["matmuls"] + th["copies"]
    assert dump["hlo"]["flops"] >= 2 * prog.N**3 * K * (trips * outer + 1)


@pytest.mark.parametrize("flags", ["default", "while_graphs"])
def test_thunk_accounting_on_the_committed_dump(flags):
    _check_known(flags, gpu_aot.read_dump(os.path.join(FIXTURE, flags)), prog.TRIPS, prog.OUTER)


def test_parse_thunks_nests_loops_and_sections():
    text = ("001: kWhile [a]\ncondition:\n    002: kCustomKernel [x] kernel=c\n  body:\n"
            "    003: kWhile [b]\ncondition:\n        004: kCustomKernel [x] kernel=c2\n"
            "      body:\n        005: kCustomKernel [x] kernel=gemm_fusion_dot\n"
            "    006: kCopy [x] kCopy\n007: kCustomKernel [x] kernel=loop_add\n")
    (w, k), = [tuple(gpu_aot.parse_thunks(text))]
    assert (w.kind, k.id) == ("kWhile", 7)
    assert [t.id for t in w.sections["body"]] == [3, 6]  # 6 follows the inner loop, in the body
    inner = w.sections["body"][0]
    assert [t.id for t in inner.sections["condition"]] == [4]
    assert [t.id for t in inner.sections["body"]] == [5]


@needs_plugin
@pytest.mark.parametrize("flags", ["default", "while_graphs"])
def test_thunk_accounting_compiled_live(flags, tmp_path):
    """The same program compiled here with other trip counts: the counts follow."""
    c = gpu_aot.compile_for_gpu(prog.lower(trips=4, outer=3), str(tmp_path / "dump"),
                                gpu_aot.FLAG_SETS[flags])
    _check_known(flags, gpu_aot.read_dump(c.dump_dir), 4, 3)
    mem = gpu_aot.memory_bytes(c.compiled)
    assert mem["argument"] == 4 * prog.N * prog.N * (1 + prog.K)


@pytest.mark.slow
@needs_plugin
def test_smoke_train_step_compiles_for_the_h100(tmp_path):
    """benchmarks.cost_model on the smoke step, compiled for the H100 deviceless: device
    ops counted, HBM bytes, GPU memory; hope has more kernels per token than transformer,
    and the work inside its Pallas kernels enters the projected step time."""
    from benchmarks import cost_model

    rows = cost_model.main(["--preset", "smoke", "--variants", "transformer,hope",
                            "--device", "h100", "--output", str(tmp_path)])
    by = {r["variant"]: r for r in rows}
    for r in rows:
        assert r["compiled_for"] == "gpu"
        assert r["kernels_per_step"] > 0 and r["device_bytes"] > 0
        assert r["step_time_s"] == pytest.approx(r["roofline_s"] + r["launch_s"] + r["comm_s"]
                                                 + r["in_kernel_s"])
    assert by["hope"]["kernels_per_step"] > 5 * by["transformer"]["kernels_per_step"]
    # hope's chunk scans are Pallas kernels for a GPU ("auto"): their own work is counted
    assert by["hope"]["in_kernel_s"] > 0 and by["hope"]["in_kernel_flops_per_step"] > 0
    assert by["transformer"]["in_kernel_s"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("extra,plugin", [("cuda12", "jax-cuda12-plugin"),
                                          ("cuda13", "jax-cuda13-plugin"),
                                          ("gpu-aot", "jax-cuda13-plugin")])
def test_gpu_extras_resolve_to_one_jax(extra, plugin, tmp_path):
    """`pip install --dry-run nested_jax[<extra>]` (asks the package index): jax, jaxlib and
    the CUDA plugin resolve to one version."""
    import json

    root = os.path.dirname(HERE)
    report = tmp_path / "report.json"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet",
                        "--ignore-installed", "--report", str(report), f"{root}[{extra}]"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    got = {i["metadata"]["name"]: i["metadata"]["version"]
           for i in json.loads(report.read_text())["install"]}
    assert got["jax"] == got["jaxlib"] == got[plugin], got
