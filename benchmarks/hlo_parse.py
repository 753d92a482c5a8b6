"""The optimized HLO text of a compiled XLA program, parsed: computations, their
instructions (name, shape, opcode, operands, attributes) and the module's source-location
tables, plus the sizes of HLO shape strings. benchmarks/hlo_cost.py costs what this reads.

    comps = parse_module(compiled.as_text())   # {computation name: Computation}
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections import defaultdict

DTYPE_BYTES = {"pred": 1, "s2": 0.25, "u2": 0.25, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1,
               "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
               "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "token": 0}

_SHAPE_RE = re.compile(r"\b(pred|token|bf16|[suf]\d+(?:e\d+m\d+\w*)?|c\d+)\[([\d,]*)\]")
_HEADER_RE = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s+\(.*\)\s*->\s*.*\{\s*$")
_NAME_RE = re.compile(r"^\s*(ROOT\s+)?%?([\w.\-]+)\s*=\s*")


def shape_dims(shape: str) -> list[tuple[str, tuple[int, ...]]]:
    """[(dtype, dims)] of every array in a (possibly tuple) HLO shape string."""
    return [(dt, tuple(int(d) for d in dims.split(",") if d)) for dt, dims in _SHAPE_RE.findall(shape)]


def _prod(xs) -> int:
    out = 1
    for x in xs:
        out *= x
    return out


def shape_elems(shape: str) -> int:
    return sum(_prod(d) for _, d in shape_dims(shape))


def shape_bytes(shape: str) -> float:
    return sum(_prod(d) * DTYPE_BYTES.get(dt, 1 if dt.startswith("f8") else 4)
               for dt, d in shape_dims(shape))


@dataclasses.dataclass
class Inst:
    name: str
    shape: str
    opcode: str
    operands: list[str]
    attrs: str
    root: bool = False
    literal: str = ""  # constant(...) / parameter(...) contents

    def attr(self, key: str) -> str | None:
        m = re.search(rf"\b{key}=(%?[\w.\-]+|\{{[^}}]*\}})", self.attrs)
        return m.group(1).lstrip("%") if m else None

    def op_name(self) -> str:
        m = re.search(r'op_name="([^"]*)"', self.attrs)
        return m.group(1) if m else ""


@dataclasses.dataclass
class Computation:
    name: str
    insts: list[Inst]
    entry: bool = False

    def __post_init__(self):
        self.by_name = {i.name: i for i in self.insts}
        self.users: dict[str, list[Inst]] = defaultdict(list)
        for i in self.insts:
            for o in i.operands:
                self.users[o].append(i)
        self.root = next((i for i in self.insts if i.root), self.insts[-1] if self.insts else None)


def _balanced(s: str, start: int) -> int:
    """Index just past the bracket group opening at s[start]."""
    depth, pairs = 0, {"(": ")", "{": "}", "[": "]"}
    closers = set(pairs.values())
    for k in range(start, len(s)):
        c = s[k]
        if c in pairs:
            depth += 1
        elif c in closers:
            depth -= 1
            if depth == 0:
                return k + 1
        elif c == '"':  # skip strings (metadata)
            k2 = s.find('"', k + 1)
            if k2 < 0:
                break
    return len(s)


def _split_top(s: str) -> list[str]:
    parts, depth, cur = [], 0, []
    for c in s:
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        if c == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
    if cur:
        parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def parse_instruction(line: str) -> Inst | None:
    m = _NAME_RE.match(line)
    if not m:
        return None
    rest = line[m.end():]
    rest = re.sub(r"/\*[^*]*\*/", "", rest)  # /*index=5*/ comments in long tuples
    if rest.startswith("("):
        end = _balanced(rest, 0)
    else:
        end = rest.find(" ")
    shape, rest = rest[:end], rest[end:].lstrip()
    om = re.match(r"([\w\-]+)\(", rest)
    if not om:
        return None
    opcode = om.group(1)
    close = _balanced(rest, om.end() - 1)
    inner = rest[om.end():close - 1]
    if opcode in ("constant", "parameter"):
        return Inst(m.group(2), shape, opcode, [], rest[close:], bool(m.group(1)), inner.strip())
    operands = [p.split()[-1].lstrip("%") for p in _split_top(inner)]
    return Inst(m.group(2), shape, opcode, operands, rest[close:], bool(m.group(1)))


def parse_locations(text: str) -> dict[int, str]:
    """{stack_frame_id: "file.py:line function"} from the module's source-location tables
    (the op's innermost frame)."""
    tables: dict[str, dict[int, str]] = defaultdict(dict)
    section = None
    for line in text.splitlines():
        if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            section = line
            continue
        if section is None:
            continue
        m = re.match(r"^(\d+) (.*)$", line)
        if not m:
            if line.strip():
                section = None
            continue
        tables[section][int(m.group(1))] = m.group(2)
    files, funcs = tables["FileNames"], tables["FunctionNames"]
    out = {}
    for fid, frame in tables["StackFrames"].items():
        lm = re.search(r"file_location_id=(\d+)", frame)
        loc = tables["FileLocations"].get(int(lm.group(1)), "") if lm else ""
        f = re.search(r"file_name_id=(\d+)", loc)
        fn = re.search(r"function_name_id=(\d+)", loc)
        ln = re.search(r"\bline=(\d+)", loc)
        if f and fn and ln:
            path = files.get(int(f.group(1)), "?").strip('"')
            path = path.split("nested_jax/")[-1] if "nested_jax/" in path else os.path.basename(path)
            func = funcs.get(int(fn.group(1)), "?").strip('"').split(".<locals>.")
            out[fid] = f"{path}:{ln.group(1)} {'.'.join(func[-2:])}"
    return out


def parse_module(text: str) -> dict[str, Computation]:
    comps, cur, insts, entry = {}, None, [], False
    for line in text.splitlines():
        if cur is None:
            h = _HEADER_RE.match(line)
            if h:
                cur, insts, entry = h.group(2), [], bool(h.group(1))
            continue
        if line.strip() == "}":
            comps[cur] = Computation(cur, insts, entry)
            cur = None
            continue
        inst = parse_instruction(line)
        if inst is not None:
            insts.append(inst)
    return comps
