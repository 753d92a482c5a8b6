"""Release bundle: one folder with everything needed to use and audit a trained model.

    python -m nested_jax.release --checkpoint runs/x [--step N] --evals zs.json niah.json \\
        --output release/x
    python -m nested_jax.release verify release/x

Layout (like the PyTorch reproduction's pilot release, kmccleary3301/nested_learning):

    MODEL_CARD.md         generated from release_card.md.tmpl: architecture, parameters,
                          data, training, eval table, limitations, provenance, how to use
                          and verify
    release.json          step, tokens seen, parameter count, tokenizer, commits, versions
    config.json           the training config (from the checkpoint's metadata)
    checkpoints/<step>/   the Orbax step (params, optimizer, fast state, data state, meta);
                          `python -m nested_jax.eval ... --checkpoint <release>` reads it
    tokenizer/            the SentencePiece .model / .vocab (+ .json card) it was trained with
    evals/*.json          the eval results given with --evals
    logs/                 metrics.jsonl, loss_curve.png, summary.json of the training run
    MANIFEST.json         sha256 and size of every file above
    SHA256SUMS            `sha256sum -c SHA256SUMS` format, MANIFEST.json included

`verify` recomputes every hash and reports missing, changed and unlisted files (exit 1).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shutil
import string
import sys
from pathlib import Path

import nested_jax
from nested_jax.cli import ArgumentParser, UserError, check_output_dir, run
from nested_jax.checkpoint.integrity import hash_tree, inspect_step
from nested_jax.checkpoint.io import Checkpointer, CheckpointError, checkpoint_dir
from nested_jax.checkpoint.verify import check_tokenizer
from nested_jax.data.assets import file_sha256
from nested_jax.model.variants import get as get_variant

FORMAT = "nested_jax-release/1"
MANIFEST, SUMS, CARD = "MANIFEST.json", "SHA256SUMS", "MODEL_CARD.md"
CARD_TEMPLATE = "release_card.md.tmpl"  # MODEL_CARD.md's text, next to this module


class ReleaseError(UserError, RuntimeError):
    """A release cannot be built or does not verify; the message names the fix."""


def _param_count(step_dir: str) -> tuple[int, dict]:
    """(total parameters, {top-level group: count}) from the Orbax metadata (no array read)."""
    import jax
    import orbax.checkpoint as ocp

    ck = ocp.StandardCheckpointer()
    tree = ck.metadata(os.path.join(step_dir, "params")).item_metadata.tree
    ck.close()
    groups: dict[str, int] = {}
    for path, m in jax.tree_util.tree_leaves_with_path(tree):
        n = math.prod(m.shape)
        key = str(getattr(path[0], "key", path[0])) if path else "params"
        groups[key] = groups.get(key, 0) + n
    return sum(groups.values()), groups


def _eval_rows(doc: dict) -> list[tuple[str, object]]:
    """(metric, value) rows of one eval JSON: nested_jax.eval.report's summary when it knows
    the command, else every number under "metrics" (flattened, at most 40)."""
    try:
        from nested_jax.eval.report import summarize

        return list(summarize(doc).items())
    except Exception:  # noqa: BLE001 - unknown command or an older eval JSON
        pass
    rows: list[tuple[str, object]] = []

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}" if not prefix else f"{prefix}.{k}")
        elif isinstance(node, (int, float)) and not isinstance(node, bool):
            rows.append((prefix, node))

    walk(doc.get("metrics", doc), "")
    return rows[:40]


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4f}" if math.isfinite(v) else str(v)
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _render(template: str, values: dict, blocks: dict[str, list[str]]) -> str:
    """Fill a card template: `${name}` takes values[name]; a line holding only `${block}`
    becomes that block's lines (none: the line goes)."""
    out: list[str] = []
    for line in template.splitlines():
        name = line[2:-1] if line.startswith("${") and line.endswith("}") else None
        if name in blocks:
            out += blocks[name]
        else:
            out.append(string.Template(line).substitute(values))
    return "\n".join(out) + "\n"


def model_card(info: dict, cfg: dict, evals: list[tuple[str, dict]], files: dict) -> str:
    """MODEL_CARD.md: CARD_TEMPLATE filled with the release's numbers."""
    m, t, o, d = cfg["model"], cfg["train"], cfg["optim"], cfg["data"]
    variant = m["variant"]
    head_dim = m.get("head_dim") or m["d_model"] // m["n_heads"]
    rows = []
    spec = get_variant(variant)
    if spec.reads("titans"):
        tt = m["titans"]
        rows.append(("Titans memory", f"{tt['memory']} ({tt.get('mode', '')}), chunk "
                                      f"{tt['chunk_size']}"))
    if spec.reads("selfmod"):
        sm = m["selfmod"]
        rows.append(("self-modifying Titans", f"chunk {sm['chunk_size']}, output-memory chunk "
                                              f"{sm.get('chunk_size_mem') or sm['chunk_size']}"))
    if spec.online:
        cms, on = m["cms"], m["online"]
        rows.append(("CMS levels (period, inner optimizer)", ", ".join(
            f"{n} ({p}, {op})" for n, p, op in zip(cms["names"], cms["periods"],
                                                    cms["optimizers"]))))
        rows.append(("online segment / fast-state reset", f"{on['segment_len']} / {on['reset']}"))
    for group, n in sorted(info["param_groups"].items()):
        rows.append((f"parameters in {group}", n))
    evaluation = [] if evals else ["No evaluation results were bundled.", ""]
    for name, doc in evals:
        ck = doc.get("checkpoint", {}) if isinstance(doc.get("checkpoint"), dict) else {}
        where = f", checkpoint step {ck['step']}" if "step" in ck else ""
        note = ""
        if "step" in ck and ck["step"] != info["step"]:
            note = f" **Note: evaluated at step {ck['step']}, not the released step.**"
        evaluation += [f"### {doc.get('command', 'eval')}: `evals/{name}.json`{where}{note}", "",
                       "| metric | value |", "|---|---|"]
        evaluation += [f"| {k} | {_fmt(v)} |" for k, v in _eval_rows(doc)]
        evaluation.append("")
    values = {
        "variant": variant, "step": f"{info['step']:,}", "n_params": f"{info['n_params']:,}",
        "tokens_seen": f"{info['tokens_seen']:,}", "d_model": _fmt(m["d_model"]),
        "n_layers": _fmt(m["n_layers"]), "heads": f"{m['n_heads']} × {head_dim}",
        "d_ff": _fmt(m.get("d_ff") or "auto (8/3·d_model)"), "vocabulary": _fmt(m["vocab_size"]),
        "tie_embeddings": _fmt(m.get("tie_embeddings")),
        "attention_window": _fmt(m.get("attention_window") or "full causal"),
        "dtype": _fmt(m.get("dtype")), "dataset": d["dataset"],
        "mixture": d.get("mixture") or "as prepared", "tokenizer": info["tokenizer"]["name"],
        "vocab_size": f"{m['vocab_size']:,}", "tokenizer_sha256": info["tokenizer"]["sha256"][:16],
        "seq_len": t["seq_len"], "planned_steps": f"{t['steps']:,}", "batch_size": t["batch_size"],
        "optimizer": o["name"], "lr": f"{o['lr']:g}", "schedule": o["schedule"],
        "warmup_steps": o["warmup_steps"], "weight_decay": f"{o['weight_decay']:g}",
        "grad_clip": f"{o['grad_clip']:g}", "seed": cfg.get("seed"),
        "final_train_loss": _fmt(info.get("final_train_loss")),
        "final_eval_loss": _fmt(info.get("final_eval_loss")),
        "ln_vocab": f"{math.log(m['vocab_size']):.4f}",
        "nonfinite_skipped": info.get("nonfinite_skipped", 0),
        "package_version": info["package_version"], "git_commit": info["git_commit"]}
    blocks = {
        "model_rows": [f"| {k} | {_fmt(v)} |" for k, v in rows],
        "loss_curve": (["![loss curve](logs/loss_curve.png)", ""]
                       if os.path.basename(files.get("loss_curve", "")) else []),
        "evaluation": evaluation,
        "files": [f"| `{rel}` | {size:,} |" for rel, size in files["sizes"]]}
    template = (Path(__file__).parent / CARD_TEMPLATE).read_text(encoding="utf-8")
    return _render(template, values, blocks)


def build(checkpoint: str, output: str, *, evals: list[str] = (), step: int | None = None,
          force: bool = False, log=print) -> dict:
    """Assemble the bundle in `output`; return release.json's content."""
    ck_dir = checkpoint_dir(checkpoint)
    if not os.path.isdir(ck_dir):
        raise ReleaseError(f"no checkpoint folder at {checkpoint!r}. Fix: pass a training "
                           "--workdir or its checkpoints/ folder.")
    workdir = os.path.dirname(ck_dir) if os.path.basename(ck_dir) == "checkpoints" else ck_dir
    output = os.path.abspath(output)
    if os.path.exists(output) and os.listdir(output):
        if not force:
            raise ReleaseError(f"output folder {output} exists and is not empty. Fix: pick a "
                               "new --output, or pass --force to replace it.")
        shutil.rmtree(output)
    docs = []
    for p in evals:
        try:
            with open(p) as f:
                doc = json.load(f)
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            raise ReleaseError(f"cannot read eval result {p!r} ({type(e).__name__}: {e}). Fix: "
                               "pass JSON files written by `python -m nested_jax.eval`.") from None
        docs.append((os.path.splitext(os.path.basename(p))[0], p, doc))
    names = [n for n, _, _ in docs]
    if len(set(names)) != len(names):
        raise ReleaseError(f"two eval files share a name ({names}); rename one.")

    try:  # the newest step whose files match their sha256 (corrupt newer ones: warned, skipped)
        ck = Checkpointer(ck_dir, read_only=True)
        try:
            step, skipped = ck.pick_step(step)
        finally:
            ck.manager.close()
    except CheckpointError as e:
        raise ReleaseError(str(e)) from None
    src = os.path.join(ck_dir, str(step))
    rep = inspect_step(src, check_hashes=False)  # hashed by pick_step
    meta = rep.meta
    for key in ("config", "tokenizer_sha256"):
        if key not in meta:
            raise ReleaseError(f"step {step} metadata lacks {key!r}; it was not written by "
                               "nested_jax.train. Fix: release a checkpoint of a training run.")
    cfg = json.loads(meta["config"])

    tc = check_tokenizer(meta)
    if tc.problem:
        raise ReleaseError(f"{tc.problem}. Fix: restore the original tokenizer file (`git "
                           "checkout -- nested_jax/assets/tokenizers`) or release from a "
                           "machine that has it.")
    tok_name, tok_model, tok_sha = tc.name, tc.path, tc.sha256

    os.makedirs(output, exist_ok=True)
    log(f"[nested_jax.release] copying checkpoint step {step} from {ck_dir}")
    shutil.copytree(src, os.path.join(output, "checkpoints", str(step)))
    with open(os.path.join(output, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    os.makedirs(os.path.join(output, "tokenizer"))
    stem = os.path.splitext(tok_model)[0]
    for ext in (".model", ".vocab", ".json"):
        if os.path.isfile(stem + ext):
            shutil.copy2(stem + ext, os.path.join(output, "tokenizer",
                                                  os.path.basename(stem) + ext))
    if docs:
        os.makedirs(os.path.join(output, "evals"))
    for name, p, _ in docs:
        shutil.copy2(p, os.path.join(output, "evals", name + ".json"))
    logs = os.path.join(output, "logs")
    os.makedirs(logs)
    from nested_jax.git_info import git_commit
    from nested_jax.train.metrics import plot_loss_curve, read_metrics

    metrics_path = os.path.join(workdir, "metrics.jsonl")
    recs = [r for r in read_metrics(metrics_path) if r.get("step", 0) <= step]
    if recs:  # the run's records up to the released step
        with open(os.path.join(logs, "metrics.jsonl"), "w") as f:
            for r in recs:
                f.write(json.dumps(r) + "\n")
        plot_loss_curve(os.path.join(logs, "metrics.jsonl"), os.path.join(logs, "loss_curve.png"),
                        title=f"{cfg['model']['variant']} on {cfg['data']['dataset']}")
    else:
        log(f"[nested_jax.release] warning: no metrics.jsonl in {workdir}; logs/ stays empty.")
    if os.path.isfile(os.path.join(workdir, "summary.json")):
        shutil.copy2(os.path.join(workdir, "summary.json"), os.path.join(logs, "summary.json"))

    n_params, groups = _param_count(src)
    train_losses = [r["loss"] for r in recs if "loss" in r]
    eval_losses = [r["eval_loss"] for r in recs if "eval_loss" in r]
    info = {
        "format": FORMAT,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "step": step,
        "tokens_seen": int(meta.get("tokens_seen", step * cfg["train"]["batch_size"]
                                    * cfg["train"]["seq_len"])),
        "variant": cfg["model"]["variant"],
        "n_params": n_params,
        "param_groups": groups,
        "tokenizer": {"name": tok_name, "sha256": tok_sha, "vocab_size": cfg["model"]["vocab_size"]},
        "package_version": meta.get("package_version", "unknown"),
        "git_commit": meta.get("git_commit", "unknown"),
        "release_package_version": nested_jax.__version__,
        "release_git_commit": git_commit(),
        "nonfinite_skipped": meta.get("nonfinite_skipped", 0),
        "final_train_loss": train_losses[-1] if train_losses else None,
        "final_eval_loss": eval_losses[-1] if eval_losses else None,
        "evals": [f"evals/{n}.json" for n in names],
        "source": {"checkpoint_dir": ck_dir, "step_dir_sha256_record": rep.has_sums,
                   "skipped_corrupt_steps": skipped},
    }
    with open(os.path.join(output, "release.json"), "w") as f:
        json.dump(info, f, indent=2)
        f.write("\n")

    sizes = sorted((os.path.relpath(os.path.join(dp, n), output).replace(os.sep, "/"),
                    os.path.getsize(os.path.join(dp, n)))
                   for dp, _, names in os.walk(output) for n in names)
    grouped: dict[str, int] = {}
    for rel, b in sizes:  # one row per checkpoint item, every other file on its own
        key = "/".join(rel.split("/")[:3]) + "/" if rel.startswith("checkpoints/") and \
            rel.count("/") > 2 else rel
        grouped[key] = grouped.get(key, 0) + b
    card = model_card(info, cfg, [(n, d) for n, _, d in docs],
                      {"sizes": sorted(grouped.items()),
                       "loss_curve": os.path.join(logs, "loss_curve.png") if recs else ""})
    with open(os.path.join(output, CARD), "w") as f:
        f.write(card)

    files = hash_tree(output)
    with open(os.path.join(output, MANIFEST), "w") as f:
        json.dump({"format": FORMAT, "algorithm": "sha256", "files": files,
                   "total_bytes": sum(v["bytes"] for v in files.values())}, f, indent=1)
        f.write("\n")
    everything = dict(files, **{MANIFEST: {"sha256": file_sha256(os.path.join(output, MANIFEST))}})
    with open(os.path.join(output, SUMS), "w") as f:
        for rel, v in sorted(everything.items()):
            f.write(f"{v['sha256']}  {rel}\n")
    log(f"[nested_jax.release] wrote {output}: step {step}, {n_params:,} parameters, "
        f"{len(everything) + 1} files, {len(docs)} eval file(s)")
    return info


def verify(output: str, log=print) -> int:
    """Recompute every sha256; 0 when the bundle is intact, 1 otherwise."""
    output = os.path.abspath(output)
    sums_path = os.path.join(output, SUMS)
    if not os.path.isfile(sums_path):
        raise ReleaseError(f"{output} has no {SUMS}; it is not a nested_jax release (or is "
                           "incomplete). Fix: pass the folder written by `python -m "
                           "nested_jax.release --output`.")
    want: dict[str, str] = {}
    with open(sums_path) as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line:
                continue
            digest, sep, rel = line.partition("  ")
            if not sep or len(digest) != 64:
                raise ReleaseError(f"{SUMS} line {n} is malformed: {line[:80]!r}.")
            want[rel] = digest
    problems = []
    got = hash_tree(output, skip_top={SUMS})
    for rel, digest in want.items():
        if rel not in got:
            problems.append(f"missing: {rel}")
        elif got[rel]["sha256"] != digest:
            problems.append(f"changed: {rel} (sha256 {got[rel]['sha256'][:12]}…, "
                            f"recorded {digest[:12]}…)")
    for rel in sorted(set(got) - set(want)):
        problems.append(f"not listed in {SUMS}: {rel}")
    try:
        with open(os.path.join(output, MANIFEST)) as f:
            manifest = json.load(f)["files"]
        for rel, v in manifest.items():
            if want.get(rel) != v["sha256"]:
                problems.append(f"{MANIFEST} and {SUMS} disagree on {rel}")
        for rel in set(want) - set(manifest) - {MANIFEST}:
            problems.append(f"{rel} is not in {MANIFEST}")
    except (OSError, ValueError, KeyError, TypeError) as e:
        problems.append(f"{MANIFEST} is unreadable ({type(e).__name__})")
    ok = len(want) - sum(1 for p in problems if p.startswith(("missing", "changed")))
    log(f"release: {output}")
    log(f"{ok} of {len(want)} files match {SUMS}")
    for p in problems:
        log(f"  FAIL {p}")
    log("OK: the release is intact." if not problems else
        f"FAILED: {len(problems)} problem(s).")
    return 0 if not problems else 1


def main(argv: list[str] | None = None) -> int:
    """Build (or `verify`) a release; bad input is one `error: … Fix: …` paragraph, exit 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verifying = bool(argv) and argv[0] == "verify"
    prog = "python -m nested_jax.release" + (" verify" if verifying else "")

    def body() -> int:
        if verifying:
            p = ArgumentParser(prog=prog, description="Re-check every sha256 of a release folder.")
            p.add_argument("output", help="the release folder")
            args = p.parse_args(argv[1:])
        else:
            p = ArgumentParser(prog=prog, description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
            p.add_argument("--checkpoint", required=True,
                           help="training --workdir or its checkpoints/ folder")
            p.add_argument("--step", type=int, default=None,
                           help="step to release (default: the newest intact one)")
            p.add_argument("--evals", nargs="*", default=[], help="eval JSON files to bundle")
            p.add_argument("--output", "--out", dest="output", required=True,
                           help="release folder to create")
            p.add_argument("--force", action="store_true", help="replace a non-empty --output")
            args = p.parse_args(argv)
            check_output_dir(args.output, "--output")
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
        if verifying:
            return verify(args.output)
        build(args.checkpoint, args.output, evals=args.evals, step=args.step, force=args.force)
        return 0

    return run(body, prog=prog)


if __name__ == "__main__":
    sys.exit(main())
