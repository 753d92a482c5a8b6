"""The GPU program without a GPU: compile for an H100 / H200 on this machine and read the
program XLA:GPU makes of it (DESIGN.md §2.8).

With the `gpu-aot` extra (`EXTRAS=dev,gpu-aot bash launch/setup.sh`: the CUDA plugin of the
installed jax and ptxas, no CUDA libraries), `jax.experimental.topologies` gives compile-only
devices of the GPU described by `benchmarks/gpu_targets/<device>.txtpb` (XLA's own spec
files). `compile_for_gpu` lowers a jitted function for them and compiles it with XLA's dump
on; `read_dump` parses what XLA wrote:

- the optimized XLA:GPU HLO (`*gpu_after_optimizations.txt`): FLOPs and bytes with every
  loop body × its trip count (`benchmarks.hlo_cost`);
- the thunk sequence after XLA's thunk passes (`*thunk_sequence_after_thunk_passes.txt`,
  else `*thunk_sequence.txt`): what the runtime executes. `ThunkTree` counts, with every
  while body × its trip count (read from the HLO `while` the thunk came from): kernels,
  cuBLAS / cuDNN calls, copies and memsets (together: `device_ops`, the GPU's work items);
  command buffers (CUDA graphs) and how many of those device ops they hold; while loops,
  and which of them the host drives iteration by iteration (a `kWhile` outside any
  command buffer) versus loops inside a graph (`WHILE` command buffers);
- the memory-usage report / `compiled.memory_analysis()`: bytes per device.

Launch model (`launch_seconds`): a device op launched from the host stream costs
LAUNCH_US, a command-buffer (graph) launch GRAPH_LAUNCH_US, and an op inside a graph
GRAPH_NODE_US. These are estimates of order of magnitude, not measurements: NVIDIA's
"Getting Started with CUDA Graphs" (developer.nvidia.com/blog/cuda-graphs, 2019) shows
back-to-back launches of short kernels costing a few µs each on the host stream and about
1 µs per kernel once captured in a graph; `launch/gpu_check.sh` measures the real step
when a GPU is lent.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import os
import re
import tempfile

TARGETS_DIR = os.path.join(os.path.dirname(__file__), "gpu_targets")
TARGETS = {"h100": "h100_sxm.txtpb", "h200": "h200.txtpb"}
# NVLink 4 of the H100 / H200 SXM: 900 GB/s per GPU, both directions together (NVIDIA's
# H100 datasheet), so 450e9 bytes/s each way: the rate of a ring collective's per-device sends.
NVLINK_BYTES_PER_S = 450e9
# Dense bf16 tensor-core FLOP/s (no sparsity) and HBM bytes/s, from NVIDIA's H100 / H200
# SXM datasheets; the spec files' memory_bandwidth agrees (3.35e12, 4.8e12).
# fp32_flops: FP32 on the CUDA cores (67 TFLOP/s, both datasheets), what a Triton kernel's
# IEEE float32 matmuls run at; sms: streaming multiprocessors (132 on the SXM parts).
PEAKS = {"h100": {"name": "NVIDIA H100 SXM (80 GB)", "peak_flops": 989e12, "bandwidth": 3.35e12,
                  "memory_bytes": 84942979072, "link_bandwidth": NVLINK_BYTES_PER_S,
                  "fp32_flops": 67e12, "sms": 132},
         "h200": {"name": "NVIDIA H200 SXM (141 GB)", "peak_flops": 989e12, "bandwidth": 4.8e12,
                  "memory_bytes": 151397597184, "link_bandwidth": NVLINK_BYTES_PER_S,
                  "fp32_flops": 67e12, "sms": 132}}
LAUNCH_US = 4.0        # per device op launched from the host stream (estimate, see docstring)
GRAPH_LAUNCH_US = 8.0  # per command-buffer (CUDA graph) launch (estimate)
GRAPH_NODE_US = 1.0    # per device op inside a command buffer (estimate)

# XLA debug options that change the GPU program (passed as compile-time compiler_options,
# so one process can compile with several). "while_graphs" puts loops into CUDA graphs
# (conditional nodes): the host no longer drives their iterations.
FLAG_SETS = {
    "default": {},
    "while_graphs": {"xla_gpu_enable_command_buffer":
                     "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL"},
}

KERNEL_KINDS = {"kKernel", "kCustomKernel"}
GEMM_KINDS = {"kGemm", "kCublasLtMatmul"}
DNN_KINDS = {"kCuDnn", "kConvolution", "kNorm", "kFusedMHA", "kCudnnGraph"}
COPY_KINDS = {"kCopy", "kMemcpy", "kDeviceToDeviceCopy", "kHostToDeviceCopy",
              "kDeviceToHostCopy", "kCopyDone"}
MEMSET_KINDS = {"kMemset32BitValue", "kMemzero"}
CONTAINERS = {"kSequential", "kAsyncStart", "kAsyncDone", "kDynamicSliceFusion",
              "kCommandBuffer", "kWhile", "kConditional"}


class GpuAotUnavailable(RuntimeError):
    pass


def plugin_name() -> str | None:
    """The installed CUDA PJRT plugin module (jax_plugins.xla_cuda13 / 12), or None."""
    for mod in ("jax_plugins.xla_cuda13", "jax_plugins.xla_cuda12"):
        try:
            if importlib.util.find_spec(mod) is not None:
                return mod
        except ModuleNotFoundError:
            continue
    return None


def target_config(device: str) -> str:
    if device not in TARGETS:
        raise ValueError(f"unknown GPU {device!r}; choose one of {sorted(TARGETS)}.")
    with open(os.path.join(TARGETS_DIR, TARGETS[device])) as f:
        return f.read()


def gpu_devices(device: str = "h100", n: int = 1):
    """Compile-only devices of `n` GPUs of one host (needs the gpu-aot extra)."""
    if plugin_name() is None:
        raise GpuAotUnavailable(
            "the CUDA plugin is not installed, so nothing can be compiled for a GPU here. "
            "Fix: EXTRAS=dev,gpu-aot bash launch/setup.sh (about 1.3 GB), or use --device cpu.")
    from jax.experimental import topologies

    topo = topologies.get_topology_desc(platform="cuda", target_config=target_config(device),
                                        topology=f"1x1x{n}")
    return list(topo.devices)


@dataclasses.dataclass
class Compiled:
    compiled: object
    dump_dir: str
    flags: dict


def compile_for_gpu(lowered, dump_dir: str | None = None, flags: dict | None = None) -> Compiled:
    """Compile a `Lowered` (traced for GPU devices) with XLA's dump written to `dump_dir`."""
    dump_dir = dump_dir or tempfile.mkdtemp(prefix="nested_jax_gpu_aot-")
    for old in glob.glob(os.path.join(dump_dir, "module_*")):  # an earlier dump here only:
        os.remove(old)  # one module per folder for `read_dump`, nothing else is touched
    opts = {"xla_dump_to": dump_dir, **(flags or {})}
    return Compiled(lowered.compile(compiler_options=opts), dump_dir, dict(flags or {}))


# ------------------------------------------------------------------------ thunk tree
@dataclasses.dataclass
class Thunk:
    id: int
    kind: str
    text: str
    sections: dict = dataclasses.field(default_factory=dict)  # name -> [Thunk]

    def children(self):
        for ts in self.sections.values():
            yield from ts


_THUNK_RE = re.compile(r"^(\s*)(\d+):\s+(k\w+)\s*(.*)$")
_SECTION_RE = re.compile(r"^(\s*)([A-Za-z_][\w ]*\d*):\s*$")


def parse_thunks(text: str) -> list[Thunk]:
    """The thunk sequence as a tree: a thunk's nested thunks sit in `sections` ("condition",
    "body", "true_branch", …; "inner" for thunks nested without a header, e.g. in a command
    buffer). A section header belongs to the innermost open while / conditional (XLA prints
    "condition:" at column 0 whatever the depth, so its indentation says nothing)."""
    root: list[Thunk] = []
    stack: list[tuple[int, Thunk]] = []  # (indent, thunk) of the open thunks
    current: dict[int, str] = {}  # id(thunk) -> the section its next children go to
    for line in text.splitlines():
        m = _THUNK_RE.match(line)
        if not m:
            s = _SECTION_RE.match(line)
            if s:
                owner = next((t for _, t in reversed(stack)
                              if t.kind in ("kWhile", "kConditional")), None)
                if owner is not None:
                    current[id(owner)] = s.group(2).strip()
            continue
        ind = len(m.group(1))
        t = Thunk(int(m.group(2)), m.group(3), m.group(4))
        while stack and stack[-1][0] >= ind:
            stack.pop()
        if stack:
            parent = stack[-1][1]
            parent.sections.setdefault(current.get(id(parent), "inner"), []).append(t)
        else:
            root.append(t)
        stack.append((ind, t))
    return root


def parse_thunk_metadata(text: str) -> dict[int, str]:
    """{thunk_id: profile_annotation} from `*thunk_metadata.txt` (the HLO name a thunk
    came from: "while.6" for a loop)."""
    out = {}
    for block in text.split("thunk_metadata {")[1:]:
        a = re.search(r'profile_annotation:\s*"([^"]*)"', block)
        i = re.search(r"thunk_id:\s*(\d+)", block)
        if a and i:
            out[int(i.group(1))] = a.group(1)
    return out


def hlo_trip_counts(hlo_text: str) -> dict[str, int]:
    """{while instruction name: known trip count} of an optimized HLO module."""
    out = {}
    for m in re.finditer(r"%?([\w.\-]+) = [^\n]*? while\([^\n]*", hlo_text):
        n = re.search(r'"known_trip_count":\{"n":"(\d+)"', m.group(0))
        if n:
            out[m.group(1)] = int(n.group(1))
    return out


@dataclasses.dataclass
class ThunkCounts:
    kernels: float = 0.0
    matmuls: float = 0.0  # kernels XLA emitted for a dot (Triton "gemm_fusion…") + cuBLAS calls
    gemms: float = 0.0
    dnn: float = 0.0
    copies: float = 0.0
    memsets: float = 0.0
    other: float = 0.0
    graph_launches: float = 0.0  # command buffers launched by the host
    ops_in_graphs: float = 0.0  # device ops inside those graphs
    host_ops: float = 0.0  # device ops launched one by one from the host
    host_loop_iterations: float = 0.0  # iterations of loops the host drives
    loops: list = dataclasses.field(default_factory=list)
    kinds: dict = dataclasses.field(default_factory=dict)
    custom_kernels: dict = dataclasses.field(default_factory=dict)  # Pallas/Triton: name -> runs

    @property
    def device_ops(self) -> float:
        return self.kernels + self.gemms + self.dnn + self.copies + self.memsets + self.other

    def as_dict(self) -> dict:
        lists = ("loops", "kinds", "custom_kernels")
        d = {k: v for k, v in dataclasses.asdict(self).items() if k not in lists}
        return {**d, "device_ops": self.device_ops, "loops": self.loops, "kinds": self.kinds,
                "custom_kernels": self.custom_kernels}


class ThunkTree:
    """Counts of a thunk sequence; trip counts of loops from the HLO they came from."""

    def __init__(self, thunks: list[Thunk], annotations: dict[int, str], trips: dict[str, int],
                 cond_taken_fraction: float | None = None):
        self.thunks, self.annotations, self.trips = thunks, annotations, trips
        self.cond_taken_fraction = cond_taken_fraction
        self.counts = ThunkCounts()
        self._walk(self.thunks, 1.0, in_graph=False, depth=0)

    def _op(self, t: Thunk, mult: float, in_graph: bool) -> None:
        c = self.counts
        c.kinds[t.kind] = c.kinds.get(t.kind, 0.0) + mult
        if t.kind in KERNEL_KINDS:
            c.kernels += mult
            named = re.search(r"kernel=(\w+?)(?:__\d+)?,", t.text)
            if t.kind == "kCustomKernel" and named:  # XLA numbers repeated kernels name__N
                c.custom_kernels[named.group(1)] = c.custom_kernels.get(named.group(1), 0.0) + mult
            if re.search(r"kernel=\w*gemm", t.text):
                c.matmuls += mult
        elif t.kind in GEMM_KINDS:
            c.gemms += mult
            c.matmuls += mult
        elif t.kind in DNN_KINDS:
            c.dnn += mult
        elif t.kind in COPY_KINDS:
            c.copies += mult
        elif t.kind in MEMSET_KINDS:
            c.memsets += mult
        else:
            c.other += mult
        if in_graph:
            c.ops_in_graphs += mult
        else:
            c.host_ops += mult

    def _walk(self, thunks, mult: float, in_graph: bool, depth: int) -> None:
        for t in thunks:
            if t.kind == "kCommandBuffer":
                if not in_graph:
                    self.counts.graph_launches += mult
                self._walk(list(t.children()), mult, True, depth)
            elif t.kind == "kWhile":
                name = self.annotations.get(t.id, "")
                n = self.trips.get(name)
                known = n is not None
                n = n if known else 1
                self.counts.loops.append({"thunk": t.id, "hlo": name, "trip_count": n,
                                          "trip_count_known": known, "executions": mult,
                                          "depth": depth, "host_driven": not in_graph})
                if not in_graph:
                    self.counts.host_loop_iterations += mult * n
                # with a known trip count the runtime skips the condition
                if not known:
                    self._walk(t.sections.get("condition", []), mult * (n + 1), in_graph, depth + 1)
                self._walk(t.sections.get("body", []), mult * n, in_graph, depth + 1)
            elif t.kind == "kConditional":
                branches = list(t.sections.values())
                if not branches:
                    continue
                f = 1.0 if self.cond_taken_fraction is None else self.cond_taken_fraction
                sizes = [self._size(b) for b in branches]
                hi, lo = branches[sizes.index(max(sizes))], branches[sizes.index(min(sizes))]
                self._walk(hi, mult * f, in_graph, depth)
                if f < 1.0:
                    self._walk(lo, mult * (1.0 - f), in_graph, depth)
            elif t.kind in CONTAINERS:
                self._walk(list(t.children()), mult, in_graph, depth)
            else:
                self._op(t, mult, in_graph)

    def _size(self, thunks) -> int:
        return sum(1 + self._size(list(t.children())) for t in thunks)


def _pick(files, suffix):
    hits = sorted(f for f in files if f.endswith(suffix))
    return hits[0] if hits else None


def read_dump(dump_dir: str, cond_taken_fraction: float | None = None) -> dict:
    """Everything `compile_for_gpu` left in `dump_dir`: HLO costs, thunk counts, memory."""
    from benchmarks import hlo_cost

    files = glob.glob(os.path.join(dump_dir, "*"))
    # One dump directory holds one module here (compile_for_gpu clears it first); take the
    # largest module's files if XLA wrote helper modules too.
    hlo_files = [f for f in files if f.endswith("gpu_after_optimizations.txt")]
    if not hlo_files:
        raise FileNotFoundError(f"no optimized GPU HLO in {dump_dir}")
    hlo_path = max(hlo_files, key=os.path.getsize)
    prefix = hlo_path.split(".sm_")[0]
    mine = [f for f in files if f.startswith(prefix + ".")]
    seq = _pick(mine, "thunk_sequence_after_thunk_passes.txt") or _pick(mine, "thunk_sequence.txt")
    before = _pick(mine, ".thunk_sequence.txt")
    meta = _pick(mine, "thunk_metadata.txt")
    hlo_text = open(hlo_path).read()
    costs = hlo_cost.hlo_costs(hlo_text, cond_taken_fraction=cond_taken_fraction)
    trips = hlo_trip_counts(hlo_text)
    annotations = parse_thunk_metadata(open(meta).read()) if meta else {}
    counts = ThunkTree(parse_thunks(open(seq).read()), annotations, trips,
                       cond_taken_fraction).counts
    out = {"hlo": costs, "thunks": counts.as_dict(), "thunk_file": os.path.basename(seq),
           "hlo_file": os.path.basename(hlo_path)}
    if before and before != seq:  # the same program before the thunk passes (no graphs)
        out["thunks_before_passes"] = ThunkTree(parse_thunks(open(before).read()), annotations,
                                                trips, cond_taken_fraction).counts.as_dict()
    report = _pick(mine, "memory-usage-report.txt")
    if report:
        out["memory_report_head"] = open(report).read(4000)
    return out


def in_kernel_seconds(thunks: dict, dev: dict) -> tuple[float, float]:
    """(seconds, FLOPs) per step inside our Pallas kernels (nested_jax/ops/kernel_scan.py),
    which XLA's cost analysis cannot see: each launch runs its programs in waves of one per
    SM, a program's chunk steps at one SM's share of the FP32 rate — a floor (ideal
    issue, no stalls), in series with the rest of the step."""
    from nested_jax.ops import kernel_scan

    per_sm = dev["fp32_flops"] / dev["sms"]
    seconds = flops = 0.0
    for name, runs in thunks.get("custom_kernels", {}).items():
        k = kernel_scan.GPU_KERNELS.get(name)
        if k is None:
            continue
        f = k["flops"]()
        waves = -(-k["programs"] // dev["sms"])
        seconds += runs * waves * f / per_sm
        flops += runs * k["programs"] * f
    return seconds, flops


def launch_seconds(thunks: dict) -> float:
    """Host launch time of one run under the launch model (module docstring)."""
    return 1e-6 * (thunks["host_ops"] * LAUNCH_US + thunks["graph_launches"] * GRAPH_LAUNCH_US
                   + thunks["ops_in_graphs"] * GRAPH_NODE_US)


def memory_bytes(compiled) -> dict:
    """Per-device bytes from the GPU executable's own memory analysis."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        m = None
    if m is None:
        return {}
    out = {k: int(getattr(m, f"{k}_size_in_bytes", 0) or 0)
           for k in ("argument", "output", "temp", "alias", "generated_code")}
    out["peak"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
    return out
