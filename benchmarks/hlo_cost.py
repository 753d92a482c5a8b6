"""FLOPs, bytes and kernel counts of a compiled XLA program, with every loop's trip count.

    costs = hlo_costs(jax.jit(f).lower(*args).compile().as_text())

XLA's own `compiled.cost_analysis()` counts the body of a `while` loop once, so for a
program made of `lax.scan`s (layers, online segments, memory chunks, nested in each other)
it is off by the product of the trip counts. This module reads the optimized HLO text
instead (parsed by benchmarks/hlo_parse.py): it costs each instruction of every
computation, and multiplies a while body by its trip count (`known_trip_count` in the
loop's backend_config, else the constant bound of its `compare` condition), recursively,
so nested scans multiply.

Per instruction (close to XLA's HloCostAnalysis):
- FLOPs: dot (and a GPU text's cuBLAS gemm custom call) 2·|out|·|contracted|;
  convolution 2·|out|·|kernel| / out-features;
  elementwise arithmetic 1 per output element (exp, log, tanh, … are counted as
  transcendentals instead, as XLA does); reduce / reduce-window one per input element
  (per window element); a fusion the sum of what it fuses.
- Bytes: what each kernel reads and writes at its boundary (operands + result) for every
  top-level instruction and fusion. In-place and sliced accesses count the slice only: a
  dynamic-update-slice writes its update, a (dynamic-)slice or gather of a fusion
  parameter reads the slice — otherwise a scan's stacked inputs and outputs would count
  whole at every iteration. Tuples, get-tuple-element, bitcasts, parameters, constants
  move no bytes; the loops themselves are costed through their bodies.
- Kernels: every top-level instruction that does work (fusion, custom call, dot, copy, …),
  times the trip counts around it: an estimate of launches per step on a GPU (where
  XLA's fusion decisions differ from the CPU compiler's that produced the text).
- Collectives (all-gather, reduce-scatter, all-reduce, …): their result bytes × executions,
  per kind, as `collective_bytes` — the inputs of a communication-time estimate.
- A `conditional` runs one branch: costed as the most expensive branch, or, with
  `cond_taken_fraction=f`, as f·(dearest) + (1-f)·(cheapest) (callers that know how often
  the expensive branch is taken, e.g. CMS updates every period, pass it).
"""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict

from benchmarks.hlo_parse import (Computation, Inst, _prod, _split_top, parse_locations,
                                  parse_module, shape_bytes, shape_dims, shape_elems)

TRANSCENDENTAL = {"exponential", "exponential-minus-one", "log", "log-plus-one", "tanh",
                  "logistic", "rsqrt", "sqrt", "cbrt", "power", "sine", "cosine", "tan",
                  "atan2", "erf"}
ELEMENTWISE = {"add", "subtract", "multiply", "divide", "maximum", "minimum", "negate", "abs",
               "compare", "select", "and", "or", "xor", "not", "remainder", "sign", "floor",
               "ceil", "round-nearest-afz", "round-nearest-even", "clamp", "shift-left",
               "shift-right-logical", "shift-right-arithmetic", "is-finite", "real", "imag",
               "popcnt", "count-leading-zeros", "stochastic-convert"}
# No kernel and no bytes of their own (views, plumbing, control flow costed via bodies).
FREE = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast", "while", "call",
        "conditional", "after-all", "opt-barrier", "partition-id", "replica-id",
        "add-dependency", "domain", "async-done", "async-update"}
SLICING = {"dynamic-slice", "slice", "gather"}
# Cross-device ops of a partitioned (FSDP / data-parallel) program: `hlo_costs` sums their
# result bytes per step (× executions) as "collective_bytes" (what moves between devices).
COLLECTIVES = {"all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute"}


# ----------------------------------------------------------------------------- costs
@dataclasses.dataclass
class Cost:
    flops: float = 0.0
    transcendentals: float = 0.0
    bytes: float = 0.0
    kernels: float = 0.0

    def add(self, other: "Cost", k: float = 1.0) -> None:
        self.flops += k * other.flops
        self.transcendentals += k * other.transcendentals
        self.bytes += k * other.bytes
        self.kernels += k * other.kernels

    def scaled(self, k: float) -> "Cost":
        return Cost(self.flops * k, self.transcendentals * k, self.bytes * k, self.kernels * k)


def _dims_attr(inst: Inst, key: str) -> list[int]:
    v = inst.attr(key)
    return [int(x) for x in v.strip("{}").split(",") if x.strip()] if v else []


class ModuleCost:
    """Costs of a parsed HLO module; see the module docstring."""

    def __init__(self, text: str, cond_taken_fraction: float | None = None):
        self.comps = parse_module(text)
        self.locations = parse_locations(text)
        self.entry = next(c for c in self.comps.values() if c.entry)
        self.cond_taken_fraction = cond_taken_fraction
        self._memo: dict[str, tuple[Cost, dict]] = {}
        self.loops: list[dict] = []
        self.conditionals = 0
        self.context: dict[str, str] = {}  # computation -> op_name of the loop that runs it
        for comp in self.comps.values():
            for inst in comp.insts:
                if inst.opcode == "while":
                    where = re.sub(r"^jit\([^)]*\)/", "", inst.op_name()) or inst.name
                    self.context[inst.attr("body") or ""] = where + "/body"
                    self.context[inst.attr("condition") or ""] = where + "/cond"

    # --------------------------------------------------------------- per instruction
    def _shape_of(self, comp: Computation, name: str) -> str:
        i = comp.by_name.get(name)
        return i.shape if i is not None else ""

    def inst_flops(self, comp: Computation, inst: Inst) -> tuple[float, float]:
        """(flops, transcendentals) of one instruction (fusions: of what they fuse)."""
        op = inst.opcode
        out = shape_elems(inst.shape)
        if op == "dot":
            lhs = shape_dims(self._shape_of(comp, inst.operands[0]))
            dims = lhs[0][1] if lhs else ()
            k = _prod(dims[d] for d in _dims_attr(inst, "lhs_contracting_dims") if d < len(dims))
            return 2.0 * out * k, 0.0
        if op == "custom-call" and "__cublas" in inst.attrs:  # GPU gemm (GPU-compiled text)
            lhs = shape_dims(self._shape_of(comp, inst.operands[0]))
            res = shape_dims(inst.shape)
            m = re.search(r'"lhs_contracting_dimensions":\[([^\]]*)\]', inst.attrs)
            if lhs and res and m:
                dims = lhs[0][1]
                ks = [int(x.strip('" ')) for x in m.group(1).split(",") if x.strip('" ')]
                return 2.0 * _prod(res[0][1]) * _prod(dims[d] for d in ks if d < len(dims)), 0.0
            return 0.0, 0.0
        if op == "convolution":
            rhs = shape_dims(self._shape_of(comp, inst.operands[1]))
            kdims = rhs[0][1] if rhs else ()
            labels = inst.attr("dim_labels") or ""
            kl = labels.split("_")[1].split("->")[0] if "_" in labels else ""
            o = kdims[kl.index("o")] if "o" in kl and len(kl) == len(kdims) else 1
            return 2.0 * out * _prod(kdims) / max(o, 1), 0.0
        if op in ("fusion", "call", "async-start"):
            called = inst.attr("calls") or inst.attr("to_apply")
            if called in self.comps:
                f, t = 0.0, 0.0
                c = self.comps[called]
                for i in c.insts:
                    fi, ti = self.inst_flops(c, i)
                    f, t = f + fi, t + ti
                return f, t
            return 0.0, 0.0
        if op in TRANSCENDENTAL:
            return 0.0, float(out)
        if op in ELEMENTWISE:
            return float(out), 0.0
        if op in ("reduce", "reduce-window", "select-and-scatter", "scatter"):
            src = inst.operands[2] if op == "scatter" else inst.operands[0]
            n_in = shape_elems(self._shape_of(comp, src))
            if op == "reduce-window":
                w = re.search(r"size=([\dx]+)", inst.attrs)
                return float(out * (_prod(int(x) for x in w.group(1).split("x")) if w else 1)), 0.0
            return float(n_in), 0.0
        if op == "triangular-solve":
            a = shape_dims(self._shape_of(comp, inst.operands[0]))
            n = a[0][1][-1] if a and a[0][1] else 1
            return float(out * n), 0.0
        return 0.0, 0.0

    def _read_bytes(self, comp: Computation, name: str, full: float) -> float:
        """Bytes a fused computation really reads of value `name` (slices, in-place)."""
        total = 0.0
        for u in comp.users.get(name, []):
            if u.opcode == "bitcast":
                total += self._read_bytes(comp, u.name, full)
            elif u.opcode in SLICING and u.operands[0] == name:
                total += shape_bytes(u.shape)
            elif u.opcode == "dynamic-update-slice" and u.operands[0] == name:
                continue  # written in place: the update is counted with the result
            else:
                return full
        return min(total, full)

    def _written_bytes(self, comp: Computation, inst: Inst) -> float:
        """Bytes a result really writes: a dynamic-update-slice writes its update only."""
        if inst.opcode == "dynamic-update-slice":
            return shape_bytes(self._shape_of(comp, inst.operands[1]))
        if inst.opcode == "bitcast" and inst.operands and inst.operands[0] in comp.by_name:
            return self._written_bytes(comp, comp.by_name[inst.operands[0]])
        if inst.opcode == "tuple":
            return sum(self._written_bytes(comp, comp.by_name[o]) if o in comp.by_name else 0.0
                       for o in inst.operands)
        return shape_bytes(inst.shape)

    def inst_bytes(self, comp: Computation, inst: Inst) -> float:
        op = inst.opcode
        if op in FREE:
            return 0.0
        if op in ("dynamic-slice", "slice"):
            return 2.0 * shape_bytes(inst.shape)
        if op == "dynamic-update-slice":
            return 2.0 * shape_bytes(self._shape_of(comp, inst.operands[1]))
        if op == "fusion":
            fc = self.comps.get(inst.attr("calls") or "")
            if fc is None:
                return sum(shape_bytes(self._shape_of(comp, o)) for o in inst.operands) + \
                    shape_bytes(inst.shape)
            params = {int(i.literal): i for i in fc.insts if i.opcode == "parameter"}
            read = 0.0
            for k, o in enumerate(inst.operands):
                full = shape_bytes(self._shape_of(comp, o))
                p = params.get(k)
                read += full if p is None else self._read_bytes(fc, p.name, full)
            return read + self._written_bytes(fc, fc.root)
        return sum(shape_bytes(self._shape_of(comp, o)) for o in inst.operands) + \
            shape_bytes(inst.shape)

    # ----------------------------------------------------------------- computations
    def trip_count(self, comp: Computation, inst: Inst) -> tuple[int, str]:
        m = re.search(r'"known_trip_count":\{"n":"(\d+)"', inst.attrs)
        if m:
            return int(m.group(1)), "known_trip_count"
        cond = self.comps.get(inst.attr("condition") or "")
        if cond is not None:  # i < N with i from 0: the largest integer constant of the condition
            consts = [int(i.literal) for i in cond.insts
                      if i.opcode == "constant" and re.fullmatch(r"-?\d+", i.literal)]
            if consts:
                return max(consts), "condition_constant"
        return 1, "unknown"

    def comp_cost(self, name: str) -> tuple[Cost, dict]:
        """(total cost, {op label: Cost}) of one execution of computation `name`."""
        if name in self._memo:
            return self._memo[name]
        comp = self.comps[name]
        total, by_label = Cost(), defaultdict(Cost)

        def merge(sub_by_label, k):
            for lab, c in sub_by_label.items():
                by_label[lab].add(c, k)

        for inst in comp.insts:
            op = inst.opcode
            if op == "while":
                body, cond = inst.attr("body"), inst.attr("condition")
                n, how = self.trip_count(comp, inst)
                bc, bl = self.comp_cost(body)
                cc, cl = self.comp_cost(cond)
                one = Cost()
                one.add(bc, n)
                one.add(cc, n + 1)
                total.add(one)
                merge(bl, n)
                merge(cl, n + 1)
                self.loops.append({"name": inst.name, "computation": name, "op_name": inst.op_name(),
                                   "source": self.label(inst, name).split("] ", 1)[-1],
                                   "trip_count": n, "trip_count_from": how, "body": body,
                                   "cost": one})
                continue
            if op in ("call", "async-start"):  # XLA:GPU wraps some fusions in async pairs
                c, l = self.comp_cost(inst.attr("to_apply") or inst.attr("calls"))
                total.add(c)
                merge(l, 1)
                continue
            if op == "conditional":
                self.conditionals += 1
                names = self._branches(inst)
                costs = sorted((self.comp_cost(b) for b in names),
                               key=lambda cl: cl[0].flops + cl[0].bytes)
                if not costs:
                    continue
                f = 1.0 if self.cond_taken_fraction is None else self.cond_taken_fraction
                hi, lo = costs[-1], costs[0]
                total.add(hi[0], f)
                total.add(lo[0], 1.0 - f)
                merge(hi[1], f)
                merge(lo[1], 1.0 - f)
                continue
            if op in FREE:
                continue
            fl, tr = self.inst_flops(comp, inst)
            c = Cost(fl, tr, self.inst_bytes(comp, inst), 1.0)
            total.add(c)
            by_label[self.label(inst, name)].add(c)
        self._memo[name] = (total, dict(by_label))
        return self._memo[name]

    def _branches(self, inst: Inst) -> list[str]:
        m = re.search(r"branch_computations=\{([^}]*)\}", inst.attrs)
        if m:
            return [b.strip().lstrip("%") for b in m.group(1).split(",") if b.strip()]
        return [x for x in (inst.attr("true_computation"), inst.attr("false_computation")) if x]


    def label(self, inst: Inst, comp_name: str) -> str:
        """Readable name: opcode, forward / backward / update, the JAX primitive and the
        source line it came from; unnamed instructions (copies XLA added) by their loop."""
        name = inst.op_name()
        if not name:
            return f"[{inst.opcode}] {self.context.get(comp_name, 'top level')} (added by XLA)"
        phase = "bwd " if "transpose(" in name else "fwd " if "jvp(" in name else ""
        prim = name.rsplit("/", 1)[-1]
        m = re.search(r"stack_frame_id=(\d+)", inst.attrs)
        where = self.locations.get(int(m.group(1)), "") if m else ""
        return f"[{inst.opcode}] {phase}{prim} @ {where}" if where else f"[{inst.opcode}] {name}"

    def multipliers(self) -> tuple[dict[str, float], dict[str, int]]:
        """({computation: executions per run of the entry}, {computation: loop depth})."""
        mult, depth = {self.entry.name: 1.0}, {self.entry.name: 0}
        todo = [self.entry.name]
        while todo:
            name = todo.pop()
            for inst in self.comps[name].insts:
                subs = []
                if inst.opcode == "while":
                    n = self.trip_count(self.comps[name], inst)[0]
                    subs = [(inst.attr("body"), n, 1), (inst.attr("condition"), n + 1, 1)]
                elif inst.opcode in ("call", "async-start"):
                    subs = [(inst.attr("to_apply") or inst.attr("calls"), 1, 0)]
                elif inst.opcode == "conditional":
                    subs = [(b, 1, 0) for b in self._branches(inst)]
                for sub, k, d in subs:
                    if sub in self.comps and sub not in mult:
                        mult[sub], depth[sub] = mult[name] * k, depth[name] + d
                        todo.append(sub)
        return mult, depth


def _cost_dict(c: Cost) -> dict:
    return {"flops": c.flops, "transcendentals": c.transcendentals, "bytes": c.bytes,
            "kernels": c.kernels}


def hlo_costs(text: str, cond_taken_fraction: float | None = None, top: int = 12) -> dict:
    """Totals of one execution of the module's entry computation (every loop counted
    trip-count times), the while loops (trip count, executions per run, their share), the
    source functions and the ops with the most bytes (and FLOPs), custom calls and
    conditionals."""
    mc = ModuleCost(text, cond_taken_fraction)
    total, by_label = mc.comp_cost(mc.entry.name)
    mult, depth = mc.multipliers()
    loops = []
    for lp in mc.loops:
        execs = mult.get(lp["computation"], 0.0)
        loops.append({"name": lp["name"], "op_name": lp["op_name"], "source": lp["source"],
                      "trip_count": lp["trip_count"],
                      "trip_count_from": lp["trip_count_from"],
                      "depth": depth.get(lp["computation"], 0), "executions": execs,
                      **{f"{k}_per_run": v for k, v in _cost_dict(lp["cost"].scaled(execs)).items()}})
    loops.sort(key=lambda r: (r["depth"], -r["bytes_per_run"]))
    custom = defaultdict(float)
    for name, comp in mc.comps.items():
        for inst in comp.insts:
            if inst.opcode == "custom-call":
                m = re.search(r'custom_call_target="([^"]*)"', inst.attrs)
                custom[m.group(1) if m else "?"] += mult.get(name, 0.0)
    collectives = defaultdict(float)  # opcode -> result bytes per run (× executions)
    for name, comp in mc.comps.items():
        for inst in comp.insts:
            kind = inst.opcode.removesuffix("-start")
            if kind in COLLECTIVES and not inst.opcode.endswith("-done"):
                shape = inst.shape
                if kind in ("all-gather", "collective-permute") and inst.opcode.endswith(
                        "-start") and shape.startswith("("):
                    shape = _split_top(shape[1:-1])[1]  # (operand, result, ...): the result
                collectives[kind] += shape_bytes(shape) * mult.get(name, 0.0)
    rows = [{"op": lab, **_cost_dict(c)} for lab, c in by_label.items()]
    by_source = defaultdict(Cost)  # "file function" (XLA's own additions by their loop)
    for lab, c in by_label.items():
        m = re.search(r"@ (\S+):\d+ (\S+)", lab)
        by_source[f"{m.group(1)} {m.group(2)}" if m else lab.split("] ", 1)[-1]].add(c)
    sources = [{"source": k, **_cost_dict(c)} for k, c in by_source.items()]
    return {**_cost_dict(total), "while_loops": len(mc.loops), "loops": loops,
            "conditionals": mc.conditionals, "cond_taken_fraction": cond_taken_fraction,
            "custom_calls": dict(custom), "collective_bytes": dict(collectives),
            "by_source": sorted(sources, key=lambda r: -r["bytes"])[:top],
            "top_bytes": sorted(rows, key=lambda r: -r["bytes"])[:top],
            "top_flops": sorted(rows, key=lambda r: -r["flops"])[:top]}


def xla_cost_analysis(compiled) -> dict:
    """XLA's own numbers (loop bodies counted once), for comparison."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return {k: float(cost.get(k, 0.0)) for k in ("flops", "transcendentals", "bytes accessed")} \
        if cost else {}
