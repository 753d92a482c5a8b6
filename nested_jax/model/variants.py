"""What each model variant is, declared once (docs/architecture.md, "Variants").

Each block class in `nested_jax.model.blocks` carries a `Variant` as its `spec`; training,
validation, evaluation, decoding, the audit, the release card and the converters ask the
spec instead of comparing variant names. `get(name)` looks one up with a clear error.

A spec says:
  online        the block has CMS levels: the online segment scan trains and scores it
                (teach signals, inner optimizers; `nested_jax.model.online`)
  attention     it attends (a key/value buffer in its carry)
  memory        "titans" | "selfmod" | None: the chunk-scanned memory its blocks run
  groups        the model config groups it reads besides the shared fields
  tilings       the chunk sizes its forward computes in, in order (`Tiling`)
  titans_mode   the Titans architecture (MAG / MAL / MAC, persistent tokens) is a choice
  hf_export     how `convert export-hf` writes it: "direct" (a Llama/Qwen2 model),
                "stacked" (its SwiGLU CMS levels as Llama MLPs) or None (cannot)
"""

from __future__ import annotations

import dataclasses
import math

from nested_jax.ops.scan import call_chunk


@dataclasses.dataclass(frozen=True)
class Tiling:
    """A chunk size a call length must be a multiple of. `field` and `remat_field` are
    dotted paths under `config.model`. scope=True: the following tilings apply within one
    chunk of this one (Titans MAC: the memory scans each MAC segment). `unset_field`: the
    field whose value a 0 in `field` stands for."""

    what: str
    field: str
    remat_field: str | None = None
    scope: bool = False
    unset_field: str | None = None

    def size(self, m) -> int:
        v = int(_get(m, self.field) or 0)
        return v if v or not self.unset_field else int(_get(m, self.unset_field))


def _get(m, dotted: str):
    for part in dotted.split("."):
        m = m[part] if isinstance(m, dict) else getattr(m, part)
    return m


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    summary: str                 # one line: audit table, model card
    source: str                  # "paper" | "choice": where the variant itself comes from
    online: bool = False
    attention: bool = True
    memory: str | None = None
    groups: tuple = ()
    tilings: tuple = ()
    titans_mode: bool = False
    hf_export: str | None = None

    def active_tilings(self, m) -> tuple:
        """The tilings in force for this config (Titans MAC only in mode "mac")."""
        if self.titans_mode and m.titans.mode != "mac":
            return tuple(t for t in self.tilings if not t.scope)
        return self.tilings

    def read_block(self, m) -> int:
        """The smallest run of tokens the model computes exactly on its own from a carry
        at a multiple of it (the decoder's read block, eval/decode.py): the lcm of the
        top-level chunks, each as a call of the segment's length runs it (`call_chunk`);
        1 for attention and per-token MLPs alone."""
        limit = int(m.online.segment_len) if self.online else None
        block = 1
        for t in self.active_tilings(m):
            block = math.lcm(block, call_chunk(t.size(m), limit) if limit else t.size(m))
            if t.scope:
                break
        if limit and limit % block:
            return limit
        return block

    def reads(self, group: str) -> bool:
        """Whether the variant reads config group `group` (e.g. "selfmod", "cms")."""
        return group in self.groups


def registry() -> dict:
    """{name: Variant} of every block class (model/blocks.py), in declaration order."""
    from nested_jax.model.blocks import BLOCKS

    return {name: cls.spec for name, cls in BLOCKS.items()}


def get(name: str) -> Variant:
    reg = registry()
    if name not in reg:
        raise ValueError(f"model.variant={name!r} is unknown; choose one of {sorted(reg)}.")
    return reg[name]


def online_names() -> tuple:
    """The variants trained by the online segment scan."""
    return tuple(n for n, v in registry().items() if v.online)
