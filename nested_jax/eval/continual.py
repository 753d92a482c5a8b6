"""Continual learning: (a) a forgetting curve over checkpoints on fixed domain sets,
(b) the real protocol: train sequentially through domains, score every domain after
each phase (CE and token-accuracy matrices, forgetting per domain)."""

from __future__ import annotations

import numpy as np

from nested_jax.data.tokenizer import EOS_ID
from nested_jax.eval import domains as domains_lib
from nested_jax.eval.errors import EvalError
from nested_jax.eval.memo import Memorizer, MemoOptions
from nested_jax.eval.models import OnlineLM
from nested_jax.eval.progress import bar
from nested_jax.eval.trainer import Trainer


def score_windows(model, windows_NxT1: np.ndarray, *, batch_size: int, memo: MemoOptions,
                  mem: Memorizer | None = None) -> dict:
    """Mean per-token CE and token accuracy of the windows (and memorised, if asked).

    Memorised: each window is memorised, then re-scored with the resulting fast state
    (the reproduction's protocol); with --memorize-no-reset the state runs on across the
    windows of a domain."""
    n, t1 = windows_NxT1.shape
    t = t1 - 1
    tp = model.fit(t)  # right-pad to a length the model accepts (never changes the scores)

    def run(w_BxT1, fast=None):
        b = w_BxT1.shape[0]
        tok = np.zeros((b, tp + 1), np.int32)
        tok[:, :t1] = w_BxT1
        mask = np.zeros((b, tp), np.float32)
        mask[:, :t] = 1.0
        logp, am = model.run(tok, mask, fast=fast, want_argmax=True)
        return logp[:, :t], am[:, :t]

    ce_sum = acc_sum = 0.0
    for i in range(0, n, batch_size):
        tok = windows_NxT1[i:i + batch_size]
        rows = tok.shape[0]
        if rows < batch_size:  # keep one compiled shape
            tok = np.concatenate([tok, np.repeat(tok[-1:], batch_size - rows, 0)])
        logp, am = run(tok)
        ce_sum += float(-logp[:rows].sum())
        acc_sum += float((am[:rows] == tok[:rows, 1:]).sum())
    tokens = n * (t1 - 1)
    out = {"ce": ce_sum / tokens, "acc": acc_sum / tokens, "tokens": tokens}
    if memo.enabled:
        if mem is not None and mem.active:
            mem.fast = None  # a fresh state per domain
            ce_m = acc_m = 0.0
            for w in windows_NxT1:
                fast = mem.memorize(list(w), pad_id=EOS_ID)
                logp, am = run(w[None], fast)
                ce_m += float(-logp.sum())
                acc_m += float((am[0] == w[1:]).sum())
            out["memorized"] = {"ce": ce_m / tokens, "acc": acc_m / tokens}
        else:
            out["memorized"] = {"ce": out["ce"], "acc": out["acc"]}
    return out


def _check_train_len(model, seq_len: int) -> None:
    """Training runs the online scan on whole windows: seq_len must fit the segments."""
    if isinstance(model, OnlineLM) and model.fit(seq_len) != seq_len:
        raise EvalError(f"--seq-len {seq_len} is not a multiple of the segment length "
                        f"{model.segment_len} of this online variant. Fix: pass a multiple of it.")


def eval_sets(tok, names, seq_len: int, windows: int) -> dict:
    return {d: domains_lib.eval_windows(tok, d, seq_len, windows) for d in names}


def score_domains(model, sets: dict, *, batch_size: int, memo: MemoOptions,
                  mem: Memorizer | None = None, progress: bool = False, desc: str = "") -> dict:
    out = {}
    with bar(len(sets), desc or "score domains", progress) as pb:
        for d, w in sets.items():
            out[d] = score_windows(model, w, batch_size=batch_size, memo=memo, mem=mem)
            pb.update(1)
    return out


def forgetting_curve(entries: list[dict], names) -> dict:
    """(a) entries: [{"path", "step", "domains": {d: {...}}}] in the given order."""
    return {"checkpoints": entries,
            "ce": {d: [e["domains"][d]["ce"] for e in entries] for d in names},
            "acc": {d: [e["domains"][d]["acc"] for e in entries] for d in names}}


def sequential(model, fn, params, tok, *, phases, names, seq_len: int, windows: int,
               steps_per_phase: int, train_batch_size: int, lr: float, weight_decay: float,
               seed: int, start_step: int, batch_size: int, memo: MemoOptions,
               progress: bool = True) -> dict:
    """(b) Train through `phases` (domain names) in order from `params`; after the initial
    state and after every phase, score every domain in `names` with `model` (eval.models,
    whose .params is set to the trained parameters)."""
    sets = eval_sets(tok, names, seq_len, windows)
    trainer = Trainer(fn, params, lr=lr, weight_decay=weight_decay, start_step=start_step)
    rows, losses = [], []
    model.params = trainer.params
    _check_train_len(model, seq_len)
    mem = Memorizer(model, memo)
    rows.append({"after": "initial", **score_domains(model, sets, batch_size=batch_size,
                                                     memo=memo, mem=mem, progress=progress,
                                                     desc="score: initial")})
    for p, dom in enumerate(phases):
        data = domains_lib.train_windows(tok, dom, seq_len, steps_per_phase * train_batch_size,
                                         seed + p)
        phase_losses = []
        with bar(steps_per_phase, f"phase {p + 1}/{len(phases)}: {dom}", progress) as pb:
            for s in range(steps_per_phase):
                loss = trainer.step(data[s * train_batch_size:(s + 1) * train_batch_size])
                phase_losses.append(float(loss))  # blocks: the bar shows real speed
                pb.update(1)
        losses.append({"domain": dom, "loss": [float(x) for x in phase_losses]})
        model.params = trainer.params
        rows.append({"after": dom, **score_domains(model, sets, batch_size=batch_size,
                                                   memo=memo, mem=mem, progress=progress,
                                                   desc=f"score: after {dom}")})
    ce = [[r[d]["ce"] for d in names] for r in rows]
    acc = [[r[d]["acc"] for d in names] for r in rows]
    out = {"phases": list(phases), "domains": list(names), "rows": [r["after"] for r in rows],
           "ce_matrix": ce, "acc_matrix": acc, "train_loss": losses,
           "forgetting": _forgetting(rows, phases, names)}
    if memo.enabled:
        out["memorized_ce_matrix"] = [[r[d]["memorized"]["ce"] for d in names] for r in rows]
        out["memorized_acc_matrix"] = [[r[d]["memorized"]["acc"] for d in names] for r in rows]
        out["memorize"] = mem.report()
    return out


def _forgetting(rows, phases, names) -> dict:
    """Per domain: CE at the end minus CE right after its own (last) phase (> 0 = forgot),
    the same for accuracy (own − final), and CE at the end minus the best CE seen."""
    out = {}
    for d in names:
        final = rows[-1][d]
        entry = {"ce_final": final["ce"],
                 "ce_increase_from_best": final["ce"] - min(r[d]["ce"] for r in rows)}
        own = [i + 1 for i, p in enumerate(phases) if p == d]
        if own:
            r = rows[own[-1]][d]
            entry.update(ce_after_own_phase=r["ce"], ce_forgetting=final["ce"] - r["ce"],
                         acc_forgetting=r["acc"] - final["acc"])
        out[d] = entry
    return out


def plot_sequential(result: dict, path: str, title: str) -> None:
    """CE matrix heatmap (rows: after each phase) and CE per domain across phases."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ce = np.asarray(result["ce_matrix"])
    names, rows = result["domains"], result["rows"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    im = a.imshow(ce, cmap="viridis_r", aspect="auto")
    a.set_xticks(range(len(names)), names)
    a.set_yticks(range(len(rows)), [f"after {r}" for r in rows])
    a.set_title("cross-entropy (nats/token)", fontsize=10)
    for (i, j), v in np.ndenumerate(ce):
        a.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8, color="w")
    fig.colorbar(im, ax=a, shrink=0.8)
    for j, d in enumerate(names):
        b.plot(range(len(rows)), ce[:, j], marker="o", label=d)
    b.set_xticks(range(len(rows)), rows, rotation=20)
    b.set_xlabel("after phase")
    b.set_ylabel("CE")
    b.legend(fontsize=8)
    b.grid(alpha=0.3)
    fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_curve(result: dict, path: str, title: str) -> None:
    """CE per domain across the checkpoints of a forgetting curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [e["step"] for e in result["checkpoints"]]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for d, ys in result["ce"].items():
        ax.plot(range(len(steps)), ys, marker="o", label=d)
    ax.set_xticks(range(len(steps)), [str(s) for s in steps])
    ax.set_xlabel("checkpoint step")
    ax.set_ylabel("CE (nats/token)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
