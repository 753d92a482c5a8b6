"""Test-time memorisation (docs/streaming.md, "Who keeps it") as the harnesses use it.

Per item: memorise a prompt (token ids) into a fast state with `steps` passes of the
online scan, from a fresh state (reset) or from the previous item's state
(--memorize-no-reset), then score with that state. Variants without CMS levels
(transformer, titans) have nothing to write: memorisation is a no-op, reported as such.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from nested_jax.data.tokenizer import EOS_ID
from nested_jax.eval.scoring import pad_len


@dataclasses.dataclass(frozen=True)
class MemoOptions:
    enabled: bool = False
    steps: int = 1
    reset: bool = True
    use_correct_answer: bool = False
    teach_scale: float | None = None  # None: the checkpoint step's scheduled teach scale

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


class Memorizer:
    """Holds the running fast state and the summed update counts of one harness run."""

    def __init__(self, model, opts: MemoOptions):
        self.model, self.opts = model, opts
        self.fast = None
        self.counts: dict = {}
        self.calls = 0
        self.tokens = 0

    @property
    def active(self) -> bool:
        return self.opts.enabled and self.model.can_memorize

    def noop_reason(self) -> str | None:
        if not self.opts.enabled:
            return None
        if not self.model.can_memorize:
            return (f"variant {self.model.name} has no CMS levels (no fast state to write): "
                    "memorisation is a no-op, memorised scores equal the baseline")
        return None

    def memorize(self, ids: list[int], pad_id: int = EOS_ID):
        """Memorise one prompt; returns the fast state (one row) to score with. The prompt is
        right-padded to the model's length with `pad_id` (EOS: a document end, which the
        memories saw in training); padded targets carry no teach signal."""
        ids = list(ids)
        if len(ids) < 2:
            return self.fast
        t = pad_len(len(ids) - 1, self.model)
        tokens = np.full((1, t + 1), pad_id, np.int32)
        tokens[0, :len(ids)] = ids
        mask = np.zeros((1, t), np.float32)
        mask[0, :len(ids) - 1] = 1.0
        reset = self.opts.reset or self.fast is None
        self.fast, counts = self.model.memorize(tokens, mask, steps=self.opts.steps,
                                                fast=self.fast, reset=reset,
                                                teach_scale=self.opts.teach_scale)
        for k, v in counts.items():
            self.counts[k] = self.counts.get(k, 0.0) + v
        self.calls += 1
        self.tokens += len(ids)
        return self.fast

    def report(self) -> dict:
        out = {**self.opts.to_json(), "applied": self.active, "prompts": self.calls,
               "prompt_tokens": self.tokens,
               "updates": {k: round(v, 4) for k, v in self.counts.items()},
               "updates_total": round(sum(self.counts.values()), 4)}
        if self.noop_reason():
            out["note"] = self.noop_reason()
        return out
