"""Static fidelity report of a config against the papers (Nested Learning arXiv 2512.24695
§7–8 and Table 6; Titans arXiv 2501.00663 §3–5): which HOPE / Titans / CMS component is the
paper's, a paper ablation, or a project choice; which CMS levels are live, read, or dead and
at what cadence; the teach-signal path. Nothing is built or run.

    rows, problems = audit(config)      # rows: Row(component, item, setting, kind, note)

kind: "paper" (as the paper defines it), "ablation" (a Table 6 / Titans §5 switch away from
the paper: the model is not the paper's), "deviation" (not the paper's algorithm, e.g. a
scale-invariant CMS step or a level whose updates are never read), "addition" (a project
stabiliser on top of the paper's algorithm, e.g. v-normalisation), "choice" (the papers
leave it open). `problems` lists every ablation and deviation: what `--strict` refuses.
"""

from __future__ import annotations

import dataclasses

from nested_jax.model.variants import get as get_variant

FAILING = ("ablation", "deviation")


@dataclasses.dataclass(frozen=True)
class Row:
    component: str
    item: str
    setting: str
    kind: str
    note: str


def _selfmod(m, rows):
    s = m.selfmod
    add = lambda *a: rows.append(Row("self-modifying Titans", *a))  # noqa: E731
    add("memories", "k, v, η, α, mem" + (", q" if s.adaptive_q else ""), "paper",
        "residual 2-layer MLPs (NL Eq. 89), initial states meta-learned (§8.1)")
    add("self-generated targets", "v̂ = M_□,ξ(v_t), outer gradient through v_t", "paper",
        "NL Eq. 84; every M_□,0 (M_v included) gets an outer gradient")
    add("inner rule", "DGD (α I − η k kᵀ)" if s.dgd else "plain GD", "paper" if s.dgd else "ablation",
        "NL Eq. 88" if s.dgd else "NL Table 6 'DGD → GD'")
    add("retention α_t", "data-dependent" if s.retention else "α ≡ 1",
        "paper" if s.retention else "ablation",
        "weight decay of Eq. 88" if s.retention else "NL Table 6 'w/o weight decay'")
    for name, on in (("k", s.inner_k), ("v", s.inner_v)):
        add(f"inner {name}", "learned in context" if on else f"fixed at M_{name},0",
            "paper" if on else "ablation", "" if on else f"NL Table 6 'w/o inner {name}'")
    add("inner q", "M_q learned in context" if s.adaptive_q else "fixed projection", "choice",
        "§8.1 text: q is the only non-adaptive projection; Table 6 ablates 'inner q'")
    add("M_mem read", f"{s.mem_read}", "paper" if s.mem_read == "dual" else "ablation",
        "after the in-chunk writes (§8.2 dual form)" if s.mem_read == "dual"
        else "chunk-start state: blind to its own chunk")
    chunk_mem = s.chunk_size_mem or s.chunk_size
    add("chunk sizes", f"{s.chunk_size} (k, v, q, η, α) / {chunk_mem} (M_mem)", "paper",
        "two chunk sizes, gradients at the previous chunk boundary (Eqs. 90–91)")
    add("momentum", f"β = {s.momentum}", "choice",
        "Eq. 88 has none; Table 6 ablates 'w/o momentum'")
    add("v normalisation", "ℓ2(v_t)" if s.v_norm else "off", "addition" if s.v_norm else "paper",
        "project stabiliser (the paper normalises q, k only)" if s.v_norm else "")
    add("η, α heads", f"η = {s.eta_scale}·softplus(·), α = sigmoid(·)", "choice",
        "scalar gates from D→1 memories: the paper leaves the squashing open")


def _titans(m, rows, variant):
    """variant: its registry spec (the architecture rows only where the mode is a choice)."""
    t = m.titans
    add = lambda *a: rows.append(Row("Titans memory", *a))  # noqa: E731
    if variant.titans_mode:
        add("architecture", t.mode.upper(), "paper", {"mag": "memory as gate (§4.2)",
            "mal": "memory as layer (§4.3)", "mac": f"memory as context (§4.1), segment "
            f"{t.mac_segment}"}[t.mode])
    depth = 1 if t.memory == "linear" else t.depth
    add("memory depth L_M", str(depth), "paper", "Titans §3.1, §5.5 (L_M = 1…4)")
    add("update", f"momentum + forgetting, chunk {t.chunk_size}", "paper",
        "Titans Eqs. 13–14, gradients at the chunk start (§3.2)")
    add("q, k normalisation", "SiLU + ℓ2 after a causal conv", "paper", "Titans §4.4")
    add("v normalisation", "ℓ2(v)" if t.v_norm else "off", "addition" if t.v_norm else "paper",
        "project stabiliser" if t.v_norm else "")
    if t.memory == "mlp":
        add("residual LayerNorm", "k + LN(MLP(k))" if t.residual_norm else "off",
            "addition" if t.residual_norm else "paper",
            "project stabiliser (lucidrains' ResidualNorm)" if t.residual_norm else "")
    if variant.titans_mode:
        add("persistent tokens", str(t.persistent_tokens), "paper", "Titans Eq. 19")


SCALE_INVARIANT = ("precond", "precond_repro")


def _cms(m, seq_len, rows, problems):
    c, o = m.cms, m.online
    add = lambda *a: rows.append(Row("CMS", *a))  # noqa: E731
    for name, p, opt, lr in zip(c.names, c.periods, c.optimizers, c.lrs):
        if p == 0:
            add(f"level {name}", "period 0", "choice",
                "outer-loop-only level: a plain FFN trained by the outer optimizer")
            continue
        updates = seq_len // p
        read = updates - (1 if seq_len % p == 0 else 0)  # the one at the last token is not read
        if o.reset == "never":
            add(f"level {name}", f"every {p} tokens, streams across sequences", "paper",
                f"{p} tokens per update (reset=never)")
        elif read <= 0:
            add(f"level {name}", f"period {p} ≥ sequence {seq_len}", "deviation",
                "dead level: its updates are never read")
            problems.append(f"CMS level {name!r}: period {p} >= seq_len {seq_len} with "
                            "per-sequence reset, its updates are never read")
        else:
            add(f"level {name}", f"every {p} tokens: {updates} updates, {read} read per "
                f"sequence", "paper", "NL Eq. 71: one step per period")
        kind = "deviation" if opt in SCALE_INVARIANT else "paper"
        add(f"level {name} step", f"{opt}, lr {lr}", kind,
            "gradient step on the period's NTP loss (Eq. 71)" if kind == "paper"
            else "Adam-like and reset per sequence: ≈ lr·sign(g), ignores the teach signal's size")
        if kind == "deviation":
            problems.append(f"CMS level {name!r}: inner optimizer {opt!r} is scale-invariant "
                            "(not Eq. 71's gradient step); use 'gd' or 'momentum'")
    sched = (f"scale {o.teach_scale}, warm-up {o.teach_warmup_steps}, decay from "
             f"{o.teach_decay_start} over {o.teach_decay_duration}, clip {o.teach_clip}")
    rows.append(Row("teach signal", "δ = ∂(segment NTP loss)/∂(level output)",
                    f"per segment of {o.segment_len} tokens; {sched}", "paper",
                    "S1's reading of Eq. 71 (the task loss); later segments' losses are not used"))
    if o.surprise_threshold > 0:
        rows.append(Row("teach signal", "surprise gate", f"threshold {o.surprise_threshold}",
                        "addition", "reproduction's gate: skip a level update if mean ‖δ‖ is small"))


def _provenance(config, rows):
    """Where the starting weights come from (train.init_from): a converted workdir's
    provenance.json (import-hf / stack: source, sha256, level mapping)."""
    import json
    import os

    src = config.train.get("init_from", "")
    m = config.model
    if m.get("freeze"):
        rows.append(Row("training", "frozen parameters", ", ".join(m.freeze), "choice",
                        "left unchanged by the outer optimizer (model.freeze)"))
    if not src:
        return
    path = os.path.join(src.partition("@")[0], "provenance.json")
    prov = json.load(open(path)) if os.path.isfile(path) else {}
    add = lambda *a: rows.append(Row("provenance", *a))  # noqa: E731
    add("initial weights", src, "choice", prov.get("kind", "a checkpoint (train.init_from)"))
    if prov.get("kind") == "stack":
        add("stacked from", f"{prov['source']} step {prov['source_step']}", "paper",
            "NL §7.3 ad-hoc level stacking: CMS levels initialised from the pre-trained MLPs")
        add("level mapping", f"levels {', '.join(prov['levels'])}: W1, W3, norm <- gate, up, "
            f"mlp_norm; W2 <- down in {prov['mlp_level']!r}, 0 elsewhere", "choice",
            "identity extra levels: the chain equals the source MLP (docs/pretrained.md)")
        prov = prov.get("source_provenance") or {}
    if prov.get("kind") == "import-hf":
        files = ", ".join(f"{n} sha256 {v['sha256'][:12]}…" for n, v in prov["files"].items())
        add("imported from", f"{prov['source']} ({prov.get('model_type')})", "choice", files)
    if prov.get("tokenizer_sha256"):
        add("tokenizer", f"sha256 {prov['tokenizer_sha256'][:12]}…", "choice", "")


def audit(config) -> tuple[list[Row], list[str]]:
    """(rows, problems) for a config (see the module docstring)."""
    m = config.model
    rows: list[Row] = []
    problems: list[str] = []
    variant = get_variant(m.variant)
    rows.append(Row("model", "variant", variant.name, variant.source, variant.summary))
    if variant.reads("selfmod"):
        _selfmod(m, rows)
    if variant.reads("titans"):
        _titans(m, rows, variant)
    if variant.online:
        _cms(m, config.train.seq_len, rows, problems)
        if m.cms.get("mlp", "gelu") == "swiglu":
            rows.append(Row("CMS", "level MLP", "SwiGLU", "choice",
                            "a transformer's MLP form, so levels can start from pre-trained ones"))
    _provenance(config, rows)
    for r in rows:
        if r.kind == "ablation":
            problems.append(f"{r.component}: {r.item} = {r.setting} ({r.note})")
    return rows, problems


def table(rows: list[Row]) -> str:
    head = ("component", "item", "setting", "kind", "note")
    cells = [head] + [tuple(getattr(r, f) for f in ("component", "item", "setting", "kind", "note"))
                      for r in rows]
    width = [max(len(c[i]) for c in cells) for i in range(4)]
    lines = []
    for i, c in enumerate(cells):
        lines.append("  ".join(c[j].ljust(width[j]) for j in range(4)) + "  " + c[4])
        if i == 0:
            lines.append("  ".join("-" * w for w in width) + "  " + "-" * 4)
    return "\n".join(lines)
