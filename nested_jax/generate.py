"""python -m nested_jax.generate --checkpoint DIR --prompt TEXT [--max-new-tokens N] ...

Text generation from a training checkpoint with incremental decoding: the attention
key/value cache and the memories' fast state are carried token by token (per block of
the model's own chunk / segment length, exact; see nested_jax/eval/decode.py), not a
full forward per token. Prints the completion on stdout and the speed on stderr;
--output writes a JSON record.
"""

from __future__ import annotations

import argparse
import os
import sys

from nested_jax.eval.errors import EvalError

EXAMPLES = """examples:
  python -m nested_jax.generate --checkpoint runs/smoke --prompt "It was a dark and stormy night"
  python -m nested_jax.generate --checkpoint runs/smoke --prompt-file p.txt --max-new-tokens 200 \\
      --temperature 0.8 --top-p 0.95 --seed 1 --output out/gen.json
  python -m nested_jax.generate --checkpoint runs/hope --prompt "..." --learn-online

decoding:
  --temperature 0 (default) is greedy and deterministic. Otherwise token n is drawn with
  the key fold_in(PRNGKey(seed), n) from softmax(logits / T), cut to --top-k and then to
  the --top-p nucleus: the same seed gives the same text.

  The prompt is preceded by EOS, the document separator the models saw before every
  document in training (an imported Hugging Face model: its tokenizer's own leading token,
  e.g. Llama 3's <|begin_of_text|>, or none for Qwen2; --no-doc-start leaves it out). Generation stops at EOS unless
  --ignore-eos.

--learn-online (HOPE variants: hope, hope_attention, hope_hybrid; formerly --memorize):
  Plain decoding reads the CMS levels with their trained (meta) weights: they do not change
  while the model reads the prompt and writes the completion (the Titans / self-modifying
  memories inside each layer still update as in every forward). With --learn-online the model
  keeps learning at test time: whenever a segment of model.online.segment_len tokens is
  complete, the online training scan runs on it with the running fast state (teach signal
  from the segment's own next-token loss, the levels' inner optimizers, their periods) —
  exactly what training does inside a sequence, over the prompt and the model's own
  output. Costs one extra forward + backward per segment. Other variants have no CMS
  levels: --learn-online is then a no-op (reported in the output).
"""


def build_parser() -> argparse.ArgumentParser:
    from nested_jax.cli import ArgumentParser, add_alias, float_at_least, int_at_least

    ap = ArgumentParser(prog="python -m nested_jax.generate",
                                 description=__doc__.split("\n\n")[1],
                                 epilog=EXAMPLES,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="training workdir (or its checkpoints/)")
    ap.add_argument("--step", type=int_at_least(0), default=None, help="checkpoint step (default: latest)")
    ap.add_argument("--prompt", default=None, help="prompt text")
    ap.add_argument("--prompt-file", default=None, help="read the prompt from this UTF-8 file")
    ap.add_argument("--max-new-tokens", type=int_at_least(1), default=64, help="tokens to generate")
    ap.add_argument("--temperature", type=float_at_least(0.0), default=0.0, help="0 = greedy (default)")
    ap.add_argument("--top-k", type=int_at_least(0), default=0, help="sample among the k likeliest (0 = all)")
    ap.add_argument("--top-p", type=float_at_least(0.0), default=1.0, help="nucleus probability (1 = off)")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed")
    ap.add_argument("--max-length", type=int_at_least(0), default=0,
                    help="prompt + new tokens allowed (0 = the checkpoint's train.seq_len; "
                         "longer is extrapolation beyond the trained context)")
    ap.add_argument("--learn-online", action="store_true",
                    help="HOPE variants: CMS levels keep learning from the text (see below)")
    add_alias(ap, "--memorize", "--learn-online")
    ap.add_argument("--ignore-eos", action="store_true", help="do not stop at EOS")
    ap.add_argument("--no-doc-start", action="store_true",
                    help="do not put EOS (document start) before the prompt")
    ap.add_argument("--tokenizer", default=None,
                    help="override the tokenizer (.model path); its sha256 must match")
    ap.add_argument("--output", default=None, help="JSON file to write")
    return ap


def _check_args(a) -> None:
    if a.prompt is not None and a.prompt_file is not None:
        raise EvalError("give either --prompt TEXT or --prompt-file F, not both. Fix: drop one.")
    if a.max_new_tokens < 1:
        raise EvalError(f"--max-new-tokens={a.max_new_tokens}; it must be ≥ 1. Fix: e.g. "
                        "--max-new-tokens 64.")
    if a.temperature < 0:
        raise EvalError(f"--temperature={a.temperature} is negative. Fix: 0 (greedy) or > 0.")
    if a.top_k < 0 or not 0 < a.top_p <= 1:
        raise EvalError(f"--top-k={a.top_k} / --top-p={a.top_p}: need top-k ≥ 0 and "
                        "0 < top-p ≤ 1. Fix: e.g. --top-k 50 --top-p 0.95.")
    if a.max_length < 0:
        raise EvalError(f"--max-length={a.max_length} is negative. Fix: 0 (the trained "
                        "length) or a positive number of tokens.")


def read_prompt(a) -> str:
    if a.prompt_file is not None:
        try:
            with open(a.prompt_file, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            raise EvalError(f"prompt file {a.prompt_file!r} not found. Fix: check the path.") \
                from None
        except (OSError, UnicodeDecodeError) as e:
            raise EvalError(f"cannot read the prompt file {a.prompt_file!r} as UTF-8 text "
                            f"({type(e).__name__}). Fix: pass a UTF-8 text file.") from None
        text = text[:-1] if text.endswith("\n") else text
    elif a.prompt is not None:
        text = a.prompt
    else:
        raise EvalError("no prompt given. Fix: pass --prompt TEXT or --prompt-file F.")
    if not text.strip():
        raise EvalError("the prompt is empty. Fix: pass some text with --prompt TEXT or "
                        "--prompt-file F.")
    return text


def run(a, argv: list[str]) -> dict:
    """Load, decode, return the output record (the CLI without printing)."""
    import time

    import numpy as np

    from nested_jax.eval import decode, output, restore

    _check_args(a)
    text = read_prompt(a)
    loaded = restore.load(a.checkpoint, a.step, tokenizer=a.tokenizer)
    tok = loaded.tokenizer
    start = None if a.no_doc_start else tok.doc_start_id
    ids = ([] if start is None else [start]) + tok.encode(text)
    trained = int(loaded.cfg.train.seq_len)
    max_len = a.max_length or trained
    if len(ids) >= max_len:
        raise EvalError(
            f"the prompt is {len(ids)} tokens but the model takes at most {max_len} "
            f"(prompt + new tokens; {'--max-length' if a.max_length else 'train.seq_len'}). "
            f"Fix: shorten the prompt, or pass --max-length ≥ {len(ids) + a.max_new_tokens} "
            f"(beyond the trained {trained} tokens the model extrapolates).")
    if len(ids) + a.max_new_tokens > max_len:
        raise EvalError(
            f"{len(ids)} prompt tokens + --max-new-tokens {a.max_new_tokens} exceed the "
            f"{max_len} tokens the model takes. Fix: --max-new-tokens "
            f"{max_len - len(ids)}, or --max-length {len(ids) + a.max_new_tokens} (beyond the "
            f"trained {trained} tokens the model extrapolates).")
    memorize = bool(a.learn_online and loaded.online)
    dec = decode.Decoder(loaded.fn, loaded.params, max_len=max_len, memorize=memorize,
                         step=loaded.step, eos_id=tok.eos_id)
    t0 = time.perf_counter()
    g = dec.generate(np.asarray([ids], np.int32), a.max_new_tokens, temperature=a.temperature,
                     top_k=a.top_k, top_p=a.top_p, seed=a.seed, stop_at_eos=not a.ignore_eos)
    wall = time.perf_counter() - t0
    n = int(g.n_new[0])
    new_ids = [int(x) for x in g.tokens[0, :n]]
    mem = {"requested": bool(a.learn_online), "applied": memorize}
    if a.learn_online and not memorize:
        mem["note"] = (f"variant {loaded.cfg.model.variant} has no CMS levels (no fast state "
                       "to write): --learn-online is a no-op")
    return {
        "prompt": text,
        "completion": tok.decode(new_ids),
        "tokens": new_ids,
        "prompt_tokens": len(ids),
        "new_tokens": n,
        "stopped": g.stopped[0],
        "token_logprobs": [round(float(x), 5) for x in g.logprobs[0, :n]],
        "tokens_per_sec": round(n / max(g.decode_s, 1e-9), 2),
        "checkpoint": loaded.directory,
        "step": loaded.step,
        "variant": loaded.cfg.model.variant,
        "sampling": {"temperature": a.temperature, "top_k": a.top_k, "top_p": a.top_p,
                     "seed": a.seed, "greedy": a.temperature <= 0,
                     "doc_start": not a.no_doc_start, "stop_at_eos": not a.ignore_eos},
        "learn_online": mem,
        "decoding": {"block": dec.block, "max_length": max_len, "train_seq_len": trained,
                     "incremental": True},
        "timing_s": {"compile": round(g.compile_s, 3), "prefill": round(g.prefill_s, 4),
                     "decode": round(g.decode_s, 4), "total": round(wall, 3)},
        "config": loaded.summary(),
        "header": output.header("generate", argv),
    }


def main(argv: list[str] | None = None) -> int:
    from nested_jax.cli import run as run_cli

    argv = list(sys.argv[1:] if argv is None else argv)
    p = build_parser()
    return run_cli(lambda: _main(p.parse_args(argv), argv), prog=p.prog)


def _main(a, argv: list[str]) -> int:
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)
    doc = run(a, argv)
    doc["header"]["command_line"] = "python -m nested_jax.generate " + " ".join(argv)
    print(doc["completion"], flush=True)
    t = doc["timing_s"]
    print(f"[nested_jax.generate] {doc['new_tokens']} tokens in {t['decode']:.3f} s: "
          f"{doc['tokens_per_sec']:.1f} tokens/s (prompt {doc['prompt_tokens']} tokens, "
          f"prefill {t['prefill']:.3f} s, compile {t['compile']:.1f} s; stopped at "
          f"{doc['stopped']})", file=sys.stderr, flush=True)
    if a.output:
        from nested_jax.eval import output

        try:
            path = output.write_json(a.output, doc)
        except OSError as e:
            raise EvalError(f"cannot write --output {a.output!r} ({e.strerror or e}). Fix: "
                            "pass a path in a writable folder.") from None
        print(f"[nested_jax.generate] wrote {path}", file=sys.stderr)
    return 0

if __name__ == "__main__":
    rc = main()
    if rc:  # skip interpreter teardown: Orbax's I/O threads can print noise after a failed read
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    sys.exit(rc)
