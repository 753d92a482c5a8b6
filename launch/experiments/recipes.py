"""The six experiment studies, one function each of a Study (study_base.py): what each one
trains, evaluates and checks. RUNNERS maps a study's name to its function; study.py runs it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from driver import disp, shown
from study_base import Study, count_params, load_config, machine_info, match_d_ff, merge

VARIANTS = ("hope", "titans", "transformer")
TEACH_SCALES = (0.0, 0.05, 0.10, 0.20)
OPTIMIZER_ROW_SCALE = 0.10
# Outer optimizers compared at one teach scale, all at the preset's lr (untuned). Muon's
# orthogonalised matrix step has RMS ~1/sqrt(width), so it would usually get a larger lr on
# matrices with `optim.adam_lr` = the AdamW lr for the rest; here it runs with one lr like M3
# (whose step is not comparable with AdamW's either, m3.py), untuned. M3's first steps are
# ~lr·0.125/|g| per element (|g| ~ 1e-3 here), ~80x larger than AdamW's at the same lr: one
# more row divides the preset's lr by 30.
OPTIMIZER_NOTE = ("AdamW, Muon and M3 run at the preset's learning rate, untuned, plus M3 at a "
                  "30x smaller lr (its AdaGrad-like step is ~1/|g| per element). Muon would "
                  "normally take a larger matrix lr plus `optim.adam_lr` for the other "
                  "parameters; here it has one lr.")
MEMO_SETTINGS = (  # (key, label, flags)
    ("prompt_1", "prompt, 1 step", ["--memorize", "--memorize-steps", "1"]),
    ("prompt_2", "prompt, 2 steps", ["--memorize", "--memorize-steps", "2"]),
    ("answer_1", "prompt + answer, 1 step",
     ["--memorize", "--memorize-steps", "1", "--memorize-use-correct-answer"]),
    ("answer_2", "prompt + answer, 2 steps",
     ["--memorize", "--memorize-steps", "2", "--memorize-use-correct-answer"]),
)


def variants_of(a) -> list[str]:
    vs = [v.strip() for v in (a.variants or ",".join(VARIANTS)).split(",") if v.strip()]
    bad = [v for v in vs if v not in VARIANTS]
    if bad:
        raise SystemExit(f"error: --variants {bad} unknown; choose from {VARIANTS}.")
    return vs


def matched_runs(st: Study, variants: list[str]) -> dict:
    """{variant: flags} at HOPE's parameter count (the baselines' SwiGLU width d_ff is the
    multiple of 64 whose count, by jax.eval_shape, is closest to HOPE's)."""
    target = count_params(st.config, merge(st.flags, ["--config.model.variant=hope"]))
    pm = st.doc["param_matching"] = {"target_variant": "hope", "target_params": target,
                                     "variants": {}}
    out = {}
    for v in variants:
        out[v], dff, n = [f"--config.model.variant={v}"], "default", target
        if v != "hope":
            dff, n = match_d_ff(st.config, st.flags, v, target)
            out[v].append(f"--config.model.d_ff={dff}")
        pm["variants"][v] = {"params": n, "d_ff": dff, "ratio_to_hope": round(n / target, 4)}
    return out


def hope_vs_titans(st: Study) -> None:
    st.doc["title"] = "HOPE vs Titans vs Transformer++ at a matched token budget and parameter count"
    runs = matched_runs(st, variants_of(st.a))
    for v, flags in runs.items():
        st.train(v, flags)
    for v in runs:
        st.eval_suite(v)


def teach_schedule(steps: int) -> dict:
    """The experiments report's 220-step schedule (warm-up 60, decay start 140, duration 80),
    scaled to `steps`."""
    return {"model.online.teach_warmup_steps": max(1, round(steps * 60 / 220)),
            "model.online.teach_decay_start": max(1, round(steps * 140 / 220)),
            "model.online.teach_decay_duration": max(1, round(steps * 80 / 220))}


def teach_scale_sweep(st: Study) -> None:
    st.doc["title"] = "Teach-scale sweep (HOPE) and outer optimizers at one teach scale"
    variant = st.a.variant or "hope"
    if st.preset == "gpu" and not st.a.steps:  # 7 runs: half the GPU preset's steps each
        st.set_flags(["--config.train.steps=1000"])
    base = load_config(st.config, st.flags)
    sched = teach_schedule(int(base.train.steps))
    st.doc["notes"].append(OPTIMIZER_NOTE)
    rows = []
    st.doc["sweep"] = {"variant": variant, "schedule": sched, "scales": list(TEACH_SCALES),
                       "optimizer_row_scale": OPTIMIZER_ROW_SCALE, "rows": rows}

    def flags(scale, *more):
        return [f"--config.model.variant={variant}", f"--config.model.online.teach_scale={scale}",
                *(f"--config.{k}={v}" for k, v in sched.items()), *more]

    for s in TEACH_SCALES:
        rows.append({"run": f"ts{s:.2f}_adamw", "teach_scale": s, "optimizer": "adamw"})
        st.train(rows[-1]["run"], flags(s), allow_diverge=True)
    # seed replicate of the control: how far two seeds (init + data order) move the losses
    seed = base.seed + 1
    rows.append({"run": f"ts0.00_adamw_seed{seed}", "teach_scale": 0.0, "optimizer": "adamw",
                 "replicate_of": "ts0.00_adamw", "seed": seed})
    st.train(rows[-1]["run"], flags(0.0, f"--config.seed={seed}"), allow_diverge=True)
    lr_div30 = float(f"{base.optim.lr / 30:.3g}")
    for name, more in (("adamw", None), ("muon", ["--config.optim.name=muon"]),
                       ("m3", ["--config.optim.name=m3"]),
                       ("m3_lr_div30", ["--config.optim.name=m3", f"--config.optim.lr={lr_div30}"])):
        rows.append({"run": f"ts{OPTIMIZER_ROW_SCALE:.2f}_{name}", "teach_scale": OPTIMIZER_ROW_SCALE,
                     "optimizer": name, "optimizer_row": True})
        if more:  # (AdamW at this scale is the sweep's run)
            st.train(rows[-1]["run"], flags(OPTIMIZER_ROW_SCALE, *more), allow_diverge=True)
    st.save()


def multi_device_smoke(st: Study) -> None:
    st.doc["title"] = "Multi-device smoke: the smoke model on every local device, then every evaluation"
    variant = st.a.variant or "hope"
    env, one = None, None
    if st.preset != "gpu":  # simulated CPU devices, and the same run on one device
        n = st.a.devices or 2
        env = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={n} "
                                                    f"{os.environ.get('XLA_FLAGS', '')}".strip()}
        one = {"JAX_PLATFORMS": "cpu"}
    if st.preset != "tiny" and not st.a.steps:  # a smoke: half the CPU preset's steps, 200 on GPU
        st.set_flags([f"--config.train.steps={100 if st.preset == 'cpu' else 200}"])
    if not st.dry:
        st.doc["devices"] = machine_info({**st.env, **(env or {})}).get("devices")
        st.doc["device_env"] = " ".join(f"{k}={v}" for k, v in (env or {}).items())
    flags = [f"--config.model.variant={variant}", "--config.mesh.data=-1"]
    st.train("multi", flags, env=env)
    # The same run on one device: HOPE's per-sequence online algorithm gives the same
    # parameters on 1 and N devices (tests/test_distributed.py); here we compare the losses.
    if one:
        st.train("single", flags, env=one)
    st.check("checkpoint_verify", [sys.executable, "-m", "nested_jax.checkpoint", "verify",
                                   "--checkpoint", st.doc["runs"]["multi"]["workdir"]],
             "checkpoint verify", env=env)
    st.eval_suite("multi", env=env)
    st.evaluate("multi_zeroshot_memorize", "multi", "zeroshot",
                [*st.ev_args("memo_zeroshot"), "--memorize"], env=env,
                label="zero-shot, memorised prompt")
    st.evaluate("multi_passkey_memorize", "multi", "passkey",
                [*st.ev_args("passkey"), "--memorize"], env=env, label="passkey, memorised prompt")


def memorisation_pilot(st: Study) -> None:
    st.doc["title"] = "Test-time memorisation pilot: zero-shot and passkey with and without --memorize"
    runs = matched_runs(st, variants_of(st.a))
    for v, flags in runs.items():
        st.train(v, flags)
    st.doc["memo_settings"] = [{"key": k, "label": lab, "flags": " ".join(f)}
                               for k, lab, f in MEMO_SETTINGS]
    for v in runs:
        # every --memorize run also reports the baseline (no memorisation) side by side;
        # for transformer/titans one run documents the no-op
        for k, lab, flags in MEMO_SETTINGS if v.startswith("hope") else MEMO_SETTINGS[:1]:
            st.evaluate(f"{v}_zeroshot_{k}", v, "zeroshot", [*st.ev_args("memo_zeroshot"), *flags],
                        label=f"zero-shot, {lab}")
            st.evaluate(f"{v}_passkey_{k}", v, "passkey", [*st.ev_args("passkey"), *flags],
                        label=f"passkey, {lab}")


def pilot_release(st: Study) -> None:
    st.doc["title"] = "Pilot release: train (or take) a checkpoint, evaluate, bundle, verify"
    if st.a.checkpoint:
        wd = st.a.checkpoint
        st.doc["runs"]["pilot"] = {"command": "(given with --checkpoint)", "workdir": wd, "given": True}
        if not st.dry:
            files = st.copy(Path(wd), "train/pilot", ("metrics.jsonl", "summary.json", "config.json"))
            if files:
                st.doc["runs"]["pilot"]["files"] = files
    elif st.preset == "tiny":
        st.train("pilot", ["--config.model.variant=hope_hybrid"])
    else:
        if st.preset == "cpu":  # the pilot's own smoke config, not the CPU preset's model
            steps = st.a.steps or 60
            st.set_flags([f"--config.train.steps={steps}", f"--config.checkpoint.every_steps={steps // 2}",
                          "--config.checkpoint.max_to_keep=10", f"--config.eval.every_steps={steps // 2}",
                          "--config.logging.progress_bar=False"], config="configs/pilot_smoke.py")
        st.train("pilot", [])
    st.eval_suite("pilot", sequential=False)
    bundle = st.runs / "release"
    evals = [disp(st.runs / "evals" / f"pilot_{k}.json") for k in ("zeroshot", "passkey", "niah", "curve")]
    st.check("release_build", [sys.executable, "-m", "nested_jax.release", "--checkpoint",
                               st.doc["runs"]["pilot"]["workdir"], "--evals", *evals,
                               "--output", disp(bundle), "--force"], "release bundle")
    st.check("release_verify", [sys.executable, "-m", "nested_jax.release", "verify", disp(bundle)],
             "release verify")
    if st.dry:
        return
    # Tamper test on a copy: verify must fail when one bundled file changes.
    tam = st.runs / "release_tampered"
    if tam.exists():
        shutil.rmtree(tam)
    shutil.copytree(bundle, tam)
    card = tam / "MODEL_CARD.md"
    card.write_text(card.read_text() + "\ntampered\n")
    st.check("release_verify_tampered", [sys.executable, "-m", "nested_jax.release", "verify",
                                         disp(tam)],
             "release verify after appending a line to MODEL_CARD.md (must fail)")
    shutil.rmtree(tam)
    files = [p for p in bundle.rglob("*") if p.is_file()]
    st.doc["release"] = {"dir": disp(bundle), "files": len(files),
                         "bytes": sum(p.stat().st_size for p in files),
                         "copied": st.copy(bundle, "release",
                                           ("release.json", "MANIFEST.json", "MODEL_CARD.md"))}
    st.save()


CPT_PHASES = ("wikipedia", "math", "code")
CPT_DOMAINS = ("novels", *CPT_PHASES)
CPT_MANIFEST = "launch/experiments/data/continual_domains.py"
# (run prefix, label): the three ways of continuing the pre-trained transformer.
CPT_METHODS = (("finetune", "(a) fine-tune the transformer"),
               ("stacked", "(b) level-stacked HOPE-Attention, online CMS"),
               ("stacked_frozen", "(c) (b) with the backbone frozen"))
# The backbone of (c): everything but the CMS levels (the embedding is also the tied head).
CPT_FROZEN = ("embed.*", "blocks.attn.*", "blocks.attn_norm.*", "final_norm.*")
CPT_STEPS = {"cpu": 100, "gpu": 1000, "tiny": 2}  # optimizer steps per phase
# Pre-training values every phase run repeats (the same for the three methods).
CPT_SHARED = ("train.batch_size", "train.seq_len", "optim.name", "optim.weight_decay",
              "optim.b1", "optim.b2", "optim.eps", "optim.grad_clip", "optim.min_lr_ratio",
              "eval.batch_size", "eval.num_batches", "model.dtype")
CPT_LR = 1e-3  # every phase: AdamW, warm-up CPT_WARMUP steps then cosine, fresh optimizer
CPT_WARMUP = {"cpu": 10, "gpu": 50, "tiny": 1}


def _heldout_wikipedia(st: Study) -> Path:
    """The wikipedia domain's held-out articles (20 % of WikiText-2 valid by title hash, the
    split no phase trains on) as a .jsonl for `eval perplexity`."""
    path = st.runs / "wikitext2_heldout.jsonl"
    if not st.dry and not path.exists():
        from nested_jax.eval.domains import documents

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps({"text": t}) + "\n" for t in documents("wikipedia", "valid")))
        os.replace(tmp, path)
    return path


def continual_pretraining(st: Study) -> None:
    """Pre-train a transformer on novels, then continue through wikipedia → math → code by
    (a) fine-tuning it, (b) level-stacking it into HOPE-Attention (NL §7.3, `convert stack`)
    and training that with online CMS updates, (c) (b) with the backbone frozen; the same
    token budget per phase, every phase a `train` run from the previous one (train.init_from)."""
    st.doc["title"] = ("Continual pre-training from a pre-trained transformer: fine-tuning vs "
                       "level-stacked HOPE-Attention (NL §7.3), novels → wikipedia → math → code")
    if st.preset == "cpu":  # the smoke shape (d 128, 2 layers, seq 128, batch 16)
        st.set_flags([f"--config.train.steps={st.a.steps or 300}",
                      "--config.logging.progress_bar=False"], config="configs/smoke.py")
    base = load_config(st.config, st.flags)
    pre_steps = int(base.train.steps)
    st.set_flags([f"--config.checkpoint.every_steps={pre_steps}",
                  f"--config.eval.every_steps={pre_steps}"])
    pre = st.train("pretrain", ["--config.model.variant=transformer"])

    periods = tuple(int(p) for p in base.model.cms.periods)
    inner_lr = float(base.model.cms.lrs[0])
    stacked_init = st.runs / "stacked_init"
    argv = [sys.executable, "-m", "nested_jax.convert", "stack", "--checkpoint", pre["workdir"],
            "--periods", ",".join(map(str, periods)), "--lr", str(inner_lr),
            "--output", disp(stacked_init)]
    r = st.drv.run("stack", argv, creates=stacked_init)
    st.doc["stack"] = {"command": shown(argv), "workdir": disp(stacked_init), "periods": periods,
                       "inner_lr": inner_lr, "wall_s": r.get("wall_s")}
    steps = CPT_STEPS[st.preset]
    tokens = steps * int(base.train.batch_size) * int(base.train.seq_len)
    st.doc["protocol"] = {
        "phases": list(CPT_PHASES), "domains": list(CPT_DOMAINS), "steps_per_phase": steps,
        "tokens_per_phase": tokens, "lr": CPT_LR, "warmup_steps": CPT_WARMUP[st.preset],
        "manifest": CPT_MANIFEST, "frozen_backbone": list(CPT_FROZEN),
        "methods": {m: lab for m, lab in CPT_METHODS}}
    # the run-shaping flags only: the stacked runs take their model from the stacked config.py
    run_flags = [f for f in st.flags if not f.startswith("--config.model.")]
    # Every run-shaping value stated explicitly: the stacked config.py starts from the
    # default config (batch 32, weight decay 0.1, ...), not from the pre-training preset.
    same = [f"--config.{k}={base[g][f]}" for k in CPT_SHARED for g, f in [k.split(".")]]
    phase_common = [*same, f"--config.data.dataset={CPT_MANIFEST}", f"--config.train.steps={steps}",
                    f"--config.optim.lr={CPT_LR}", f"--config.optim.warmup_steps={CPT_WARMUP[st.preset]}",
                    f"--config.checkpoint.every_steps={steps}", f"--config.eval.every_steps={steps}"]
    chains = {}
    for method, _ in CPT_METHODS:
        prev = pre["workdir"] if method == "finetune" else disp(stacked_init)
        chain = [prev]
        for dom in CPT_PHASES:
            mix = ",".join(f"{d}={int(d == dom)}" for d in CPT_PHASES)
            extra = [*phase_common, f"--config.data.mixture={mix}", f"--config.train.init_from={prev}"]
            if method == "finetune":
                rec = st.train(f"{method}_{dom}", ["--config.model.variant=transformer", *extra])
            else:
                if method == "stacked_frozen":
                    extra.append("--config.model.freeze=" + repr(CPT_FROZEN).replace(" ", ""))
                rec = st.train(f"{method}_{dom}", extra, config=disp(stacked_init / "config.py"),
                               base=run_flags)
            prev = rec["workdir"]
            chain.append(prev)
        chains[method] = chain

    heldout = _heldout_wikipedia(st)
    windows = {"cpu": 16, "gpu": 32, "tiny": 2}[st.preset]
    for method, label in CPT_METHODS:
        st.evaluate(f"{method}_matrix", method, "continual",
                    ["--checkpoints", *chains[method], "--domains", ",".join(CPT_DOMAINS),
                     "--windows", str(windows), "--batch-size", "16"], checkpoint=False,
                    label=f"{label}: CE per domain after each phase")
    finals = {"pretrain": (pre["workdir"], [])}
    for method, _ in CPT_METHODS:  # HOPE: read as trained (levels learn while reading)
        finals[method] = (chains[method][-1], [] if method == "finetune" else ["--learn-online"])
    for name, (wd, more) in finals.items():
        for key, text in (("wikitext2", "wikitext2"), ("heldout", disp(heldout))):
            st.evaluate(f"{name}_{key}", name, "perplexity", ["--checkpoint", wd, "--text", text, *more],
                        checkpoint=False, label=f"{name}: bits per byte, {key}")
    st.doc["notes"].append(
        "WikiText-2 is the wikipedia domain's source: the wikipedia phase trains on 80 % of its "
        "articles (by title hash), so the full-WikiText-2 bits per byte after that phase is not "
        "held out; the held-out column scores the other 20 %, which no phase trains on.")
    st.save()


RUNNERS = {f.__name__: f for f in (hope_vs_titans, teach_scale_sweep, multi_device_smoke,
                                   memorisation_pilot, pilot_release,
                                   continual_pretraining)}
