"""`NestedJaxLM`: a nested_jax checkpoint as an lm-evaluation-harness language model.

The three request types use the project's own scorers, so that the harness's numbers and
ours are the same quantities:
  loglikelihood          (context, continuation) → (Σ log p(continuation), is_greedy):
                         `nested_jax.eval.scoring.score_requests` on the pairs tokenised as the
                         harness does (`encode_pair`), after the EOS document separator that
                         `eval zeroshot` also prepends, context cut on the left to `max_length`,
                         length-sorted batches. With `memorize=True` (HOPE variants) every
                         distinct context is first memorised (as `eval zeroshot --memorize`
                         memorises a prompt) and its continuations are read with that state.
  loglikelihood_rolling  the document's log-likelihood with `eval perplexity`'s rolling windows
                         (EOS prefix, disjoint windows of `max_length` tokens, or a `stride`,
                         each token scored once): `nested_jax.eval.perplexity.score_token_lists`.
  generate_until         the incremental decoder (`nested_jax.eval.decode.Decoder`, greedy unless
                         `temperature` > 0) from the tokenizer's document start + the context, up
                         to `max_gen_toks` tokens, stopping at EOS; the text is cut at the first
                         of the `until` strings.

Model arguments (`--model_args checkpoint=DIR,step=300,...`): see `ARGS`.
"""

from __future__ import annotations

import numpy as np

from lm_eval.api.model import LM

from nested_jax.cli import DEFAULT_BATCH_SIZE

# name → (type, default, help). Anything else in --model_args is an error naming it.
ARGS = {
    "checkpoint": (str, None, "training workdir (or its checkpoints/ folder); required"),
    "step": (int, None, "checkpoint step (default: the latest)"),
    "batch_size": (int, DEFAULT_BATCH_SIZE, "rows per scoring batch"),
    "max_length": (int, 0, "window length in tokens (default: the model's train.seq_len)"),
    "memorize": (bool, False, "HOPE variants: memorise each context before scoring it"),
    "memorize_steps": (int, 1, "passes over each context when memorising"),
    "dtype": (str, None, "compute dtype: float32 | bfloat16 (default: the checkpoint's)"),
    "tokenizer": (str, None, "another tokenizer than the checkpoint's (path or name)"),
    "max_gen_toks": (int, 256, "generate_until: default new-token budget"),
    "stride": (int, 0, "loglikelihood_rolling: window stride (0 = max_length: disjoint "
                       "windows, the harness's definition; as `eval perplexity --stride`)"),
}
# The last model this process loaded: {(checkpoint, step, tokenizer, dtype): (Loaded, model)}.
_LOADED: dict = {}
# Passed by the harness itself (its --batch_size / --device flags); batch_size is ours too.
HARNESS_ARGS = {"max_batch_size", "device"}


class ModelArgsError(ValueError):
    """A bad --model_args value: one line naming the argument and the fix."""


def _convert(name: str, value):
    kind = ARGS[name][0]
    if value is None or isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    text = str(value).strip()
    if kind is bool:
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ModelArgsError(f"model_args {name}={value!r} is not a boolean. Fix: {name}=True "
                             f"or {name}=False.")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ModelArgsError(f"model_args {name}={value!r} is not an integer. Fix: e.g. "
                                 f"{name}={ARGS[name][1] or 300}.") from None
    return text


def parse_model_args(kwargs: dict) -> dict:
    """The adapter's arguments from the harness's keyword arguments, typed and checked."""
    unknown = sorted(set(kwargs) - set(ARGS) - HARNESS_ARGS)
    if unknown:
        raise ModelArgsError(f"unknown model_args {', '.join(unknown)}. Valid: "
                             f"{', '.join(ARGS)}.")
    if str(kwargs.get("batch_size", "")).startswith("auto"):
        raise ModelArgsError("batch_size=auto is not supported. Fix: pass a number, e.g. 8.")
    out = {k: _convert(k, kwargs.get(k, d)) for k, (_, d, _) in ARGS.items()}
    if not out["checkpoint"]:
        raise ModelArgsError("model_args needs checkpoint=DIR (a nested_jax training workdir).")
    for k in ("batch_size", "memorize_steps", "max_gen_toks"):
        if out[k] < 1:
            raise ModelArgsError(f"model_args {k}={out[k]} must be ≥ 1.")
    if out["max_length"] < 0 or out["stride"] < 0 or (out["step"] is not None and out["step"] < 0):
        raise ModelArgsError("model_args max_length, stride and step must be ≥ 0.")
    if out["dtype"] not in (None, "float32", "bfloat16"):
        raise ModelArgsError(f"model_args dtype={out['dtype']!r}. Fix: float32 or bfloat16.")
    return out


class NestedJaxLM(LM):
    """lm-evaluation-harness model `nested_jax` (module docstring)."""

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None):
        """model_args win over the harness's own flags (its --batch_size defaults to 1: taken
        only when model_args has no batch_size and it is larger)."""
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        kwargs = dict(arg_dict)
        hb = extra.pop("batch_size", None)
        if "batch_size" not in kwargs and hb is not None and str(hb).isdigit() and int(hb) > 1:
            kwargs["batch_size"] = int(hb)
        for k, v in extra.items():
            kwargs.setdefault(k, v)
        return cls(**kwargs)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        from lm_eval import utils

        return cls.create_from_arg_obj(utils.simple_parse_args_string(arg_string),
                                       additional_config)

    def __init__(self, **kwargs):
        super().__init__()
        from nested_jax.eval import models, restore
        from nested_jax.eval.errors import EvalError

        a = parse_model_args(kwargs)
        self.args = a
        key = (a["checkpoint"], a["step"], a["tokenizer"], a["dtype"])
        if key in _LOADED:  # the same checkpoint again (several evaluations in one process):
            self.loaded, self.model = _LOADED[key]  # no restore, and its compiled programs
            self._setup()
            return
        try:
            loaded = restore.load(a["checkpoint"], a["step"], tokenizer=a["tokenizer"])
        except EvalError as e:
            raise ModelArgsError(f"model_args checkpoint={a['checkpoint']!r}: {e}") from None
        if a["dtype"] and a["dtype"] != loaded.cfg.model.dtype:  # same params, other compute
            import dataclasses

            from nested_jax.model.lm import abstract_model

            cfg = loaded.cfg.copy_and_resolve_references()
            cfg.unlock()
            cfg.model.dtype = a["dtype"]
            loaded = dataclasses.replace(loaded, cfg=cfg, fn=abstract_model(cfg.model))
        self.loaded = loaded
        self.model = models.from_loaded(loaded)
        _LOADED.clear()  # keep one model: a checkpoint's params can be large
        _LOADED[key] = (self.loaded, self.model)
        self._setup()

    def _setup(self) -> None:
        a, loaded = self.args, self.loaded
        self.tok = loaded.tokenizer
        self.max_length = a["max_length"] or int(loaded.cfg.train.seq_len)
        self.batch_size = a["batch_size"]
        self._mem = None
        if a["memorize"]:
            from nested_jax.eval.memo import Memorizer, MemoOptions

            self._mem = Memorizer(self.model, MemoOptions(enabled=True, steps=a["memorize_steps"]))
        self._decoder = None

    # -------------------------------------------------------------------- harness hooks
    @property
    def tokenizer_name(self) -> str:  # fingerprints the harness's request cache
        return f"nested_jax-{self.tok.sha256[:16]}"

    # ---------------------------------------------------------------- loglikelihood
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        from nested_jax.eval.progress import bar
        from nested_jax.eval.scoring import encode_pair, score_requests

        pairs = [encode_pair(self.tok, *r.args) for r in requests]
        prefix = [self.tok.eos_id]
        if self._mem is None or not self._mem.active:
            with bar(len(pairs), "loglikelihood", not disable_tqdm) as pb:
                got = score_requests(self.model, pairs, max_len=self.max_length,
                                     batch_size=self.batch_size, progress=pb, prefix=prefix)
            return [(float(lp), bool(g)) for lp, g in zip(got.logprob, got.greedy)]
        out: list = [None] * len(pairs)
        groups: dict = {}
        for i, r in enumerate(requests):
            groups.setdefault(r.args[0], []).append(i)
        with bar(len(groups), "loglikelihood (memorised)", not disable_tqdm) as pb:
            for context, idx in groups.items():
                fast = self._mem.memorize(prefix + self.tok.encode(context), pad_id=self.tok.eos_id)
                got = score_requests(self.model, [pairs[i] for i in idx], max_len=self.max_length,
                                     batch_size=len(idx), fast=fast, prefix=prefix)
                for j, i in enumerate(idx):
                    out[i] = (float(got.logprob[j]), bool(got.greedy[j]))
                pb.update(1)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        from nested_jax.eval.perplexity import score_token_lists

        seqs = [[self.tok.eos_id] + self.tok.encode(r.args[0]) for r in requests]
        stride = min(self.args["stride"] or self.max_length, self.max_length)
        lps = score_token_lists(self.model, seqs, max_len=self.max_length, stride=stride,
                                batch_size=self.batch_size, memorize=bool(self._mem),
                                pad_id=self.tok.eos_id, progress=not disable_tqdm)
        return [float(lp.sum()) for lp in lps]

    # ------------------------------------------------------------------ generation
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from nested_jax.eval import decode
        from nested_jax.eval.progress import bar

        if self._decoder is None:
            self._decoder = decode.Decoder(
                self.loaded.fn, self.loaded.params, max_len=self.max_length,
                memorize=bool(self._mem and self._mem.active), step=self.loaded.step,
                eos_id=self.tok.eos_id)
        start = self.tok.doc_start_id
        out = []
        with bar(len(requests), "generate_until", not disable_tqdm) as pb:
            for r in requests:
                context, kw = r.args
                kw = dict(kw or {})
                until = kw.pop("until", None) or []
                until = [until] if isinstance(until, str) else list(until)
                n_new = int(kw.pop("max_gen_toks", self.args["max_gen_toks"]))
                temperature = float(kw.pop("temperature", 0.0) or 0.0)
                kw.pop("do_sample", None)
                ids = ([] if start is None else [start]) + self.tok.encode(context)
                n_new = max(1, min(n_new, self.max_length - 1))
                ids = ids[-(self.max_length - n_new):]  # left-truncate the context
                g = self._decoder.generate(np.asarray([ids], np.int32), n_new,
                                           temperature=temperature,
                                           seed=int(kw.pop("seed", 0) or 0))
                new = [int(x) for x in g.tokens[0, :int(g.n_new[0])] if int(x) != self.tok.eos_id]
                text = self.tok.decode(new)
                for s in until:
                    if s and s in text:
                        text = text[:text.index(s)]
                out.append(text)
                pb.update(1)
        return out
