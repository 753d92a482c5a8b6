"""The experiments report's shared figures (matplotlib, Agg backend): training loss curves,
held-out CE per domain over checkpoints, CE-matrix heatmaps and grouped bars; each call
writes one PNG.
"""

from __future__ import annotations

import os

from report_common import _finite


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)


def plot_loss_curves(runs: list[dict], path: str, title: str, ln_vocab=None) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in runs:
        xs = [m["step"] for m in r["train"] if _finite(m.get("loss"))]
        ys = [m["loss"] for m in r["train"] if _finite(m.get("loss"))]
        line, = ax.plot(xs, ys, label=f"{r['name']} (train)")
        ex = [m["step"] for m in r["evals"]]
        ey = [m["eval_loss"] for m in r["evals"]]
        if ex:
            ax.plot(ex, ey, "o--", color=line.get_color(), ms=4, label=f"{r['name']} (held-out)")
    if ln_vocab:
        ax.axhline(ln_vocab, color="gray", lw=0.8, ls=":", label="ln V (uniform)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_domain_curves(curves: dict, path: str, title: str) -> None:
    """curves: {variant: continual forgetting-curve metrics}."""
    plt = _plt()
    doms = []
    for m in curves.values():
        doms.extend(d for d in m.get("ce", {}) if d not in doms)
    if not doms:
        return
    fig, axes = plt.subplots(1, len(doms), figsize=(3.2 * len(doms), 3.2), squeeze=False)
    for ax, d in zip(axes[0], doms):
        for v, m in curves.items():
            steps = [e["step"] for e in m.get("checkpoints", [])]
            ys = m.get("ce", {}).get(d)
            if ys:
                ax.plot(steps, ys, "o-", ms=3, label=v)
        ax.set_title(d)
        ax.set_xlabel("checkpoint step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("held-out CE (nats/token)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def plot_matrices(mats: dict, path: str, title: str) -> None:
    """mats: {variant: sequential metrics} → one CE heatmap per variant."""
    plt = _plt()
    items = [(v, m) for v, m in mats.items() if m and m.get("ce_matrix")]
    if not items:
        return
    fig, axes = plt.subplots(1, len(items), figsize=(3.8 * len(items), 3.4), squeeze=False)
    for ax, (v, m) in zip(axes[0], items):
        ce = m["ce_matrix"]
        im = ax.imshow(ce, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(m["domains"])), m["domains"], rotation=30, fontsize=7)
        ax.set_yticks(range(len(m["rows"])),
                      [r if r == "initial" else f"after {r}" for r in m["rows"]], fontsize=7)
        for i, row in enumerate(ce):
            for j, val in enumerate(row):
                ax.text(j, i, f"{val:.2f}", ha="center", va="center", fontsize=6, color="w")
        ax.set_title(v, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def plot_bars(groups: list[str], series: dict, path: str, title: str, ylabel: str) -> None:
    """series: {name: [value per group]} → grouped bars."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(groups) + 2), 3.6))
    n = max(1, len(series))
    w = 0.8 / n
    for i, (name, vals) in enumerate(series.items()):
        xs = [g + (i - (n - 1) / 2) * w for g in range(len(groups))]
        ax.bar(xs, [0 if v is None else v for v in vals], width=w, label=name)
    ax.set_xticks(range(len(groups)), groups, rotation=20, fontsize=8)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    _save(fig, path)


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------
