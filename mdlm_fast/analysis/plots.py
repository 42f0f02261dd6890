"""PNG plots of the analyses (matplotlib, Agg backend: no display needed).

Each function writes one file atomically (to a temporary name, then renamed) and returns its path.
matplotlib is imported inside the functions so the package imports without it.

Equation numbers (eq. 3-8) are those of arXiv:2604.02340 (Sedykh, Sorokin, Malykh 2026), which
docs/design.md keeps.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from mdlm_fast.util.atomic import atomic_file

__all__ = ["plot_importance", "plot_segment_frequency", "plot_segment_scores", "plot_sweep", "plot_bars"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> Path:
    try:
        with atomic_file(path, "wb") as f:
            fig.savefig(f, format="png", dpi=120, bbox_inches="tight")
    finally:
        _pyplot().close(fig)
    return Path(path)


def plot_importance(profile, path: str | os.PathLike) -> Path:
    """Eq. 6 and eq. 7 against t; with a heavy twin also the heavy-vs-heavy floor and,
    in a third panel, the normalized ratios."""
    plt = _pyplot()
    norm = profile.normalized
    fig, axes = plt.subplots(1, 3 if norm else 2, figsize=(14 if norm else 10, 3.6))
    for ax, metric, label in (
        (axes[0], "ce_abs_diff", "mean |CE diff| per token (eq. 6)"),
        (axes[1], "kl", "mean KL(heavy || light) (eq. 7)"),
    ):
        ax.plot(profile.ts, profile.values(metric), "o-", label="heavy vs light")
        if norm:
            ax.plot(
                profile.ts,
                [getattr(p, f"{metric}_ref") for p in profile.points],
                "s--",
                label="heavy vs heavy (other seed)",
            )
        ax.set_xlabel("t (1 = all masked)")
        ax.set_ylabel(label + ("" if norm else ", unnormalized"))
        ax.legend(fontsize=8)
    if norm:
        for metric, label in (("ce_abs_diff_normalized", "eq. 6 ratio"), ("kl_normalized", "eq. 7 ratio")):
            ax_values = [
                v if v is not None and v == v and abs(v) != float("inf") else float("nan")
                for v in profile.values(metric)
            ]
            axes[2].plot(profile.ts, ax_values, "o-", label=label)
        axes[2].set_xlabel("t (1 = all masked)")
        axes[2].set_ylabel("light / heavy-seed ratio")
        axes[2].legend(fontsize=8)
    fig.suptitle("Step importance" + ("" if norm else " (no second heavy seed: unnormalized)"))
    fig.tight_layout()
    return _save(fig, path)


def plot_segment_frequency(
    top: Sequence[int], bottom: Sequence[int], n: int, path: str | os.PathLike, metric: str = "gen-PPL"
) -> Path:
    """How often each segment is light among the best / worst ``n`` schedules."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.4))
    k = range(len(top))
    ax.bar([i - 0.2 for i in k], top, width=0.4, label=f"top {n} (lowest {metric})")
    ax.bar([i + 0.2 for i in k], bottom, width=0.4, label=f"bottom {n} (highest {metric})")
    ax.set_xticks(list(k))
    ax.set_xlabel("segment (0 = first steps, t near 1)")
    ax.set_ylabel("schedules with this segment light")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_segment_scores(
    scores: Sequence[float],
    path: str | os.PathLike,
    *,
    ylabel: str = "segment score (eq. 8), gen-PPL",
    highlight: Sequence[int] | None = None,
) -> Path:
    """Per-segment bars: eq. 8 scores (green = negative: light there tends to help), or, with
    ``highlight``, any per-segment value with the highlighted (e.g. chosen light) segments green."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    if highlight is None:
        colors = ["tab:green" if s < 0 else "tab:red" for s in scores]
    else:
        colors = ["tab:green" if k in set(highlight) else "tab:gray" for k in range(len(scores))]
    ax.bar(range(len(scores)), scores, color=colors)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(scores)))
    ax.set_xlabel("segment (0 = first steps, t near 1)")
    ax.set_ylabel(ylabel)
    return _save(fig, path)


def plot_sweep(
    rows: Sequence[dict], x: str, path: str | os.PathLike, *, group: str | None = None, xlabel: str | None = None
) -> Path:
    """Gen-PPL (with SE bars) and unigram entropy against ``x``; a second panel shows the predicted
    FLOPs saving beside the measured saving in sampling time (vs the ``x = 0`` row of the group)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    groups: dict = {}
    for r in rows:
        groups.setdefault(r.get(group) if group else None, []).append(r)
    for name, members in groups.items():
        members = sorted(members, key=lambda r: r[x])
        xs = [r[x] for r in members]
        label = str(name) if name is not None else None
        if all("gen_ppl" in r for r in members):
            axes[0].errorbar(
                xs,
                [r["gen_ppl"] for r in members],
                yerr=[r.get("gen_ppl_se") or 0 for r in members],
                marker="o",
                capsize=3,
                label=label,
            )
        axes[1].plot(xs, [r["unigram_entropy"] for r in members], "o-", label=label)
        axes[2].plot(
            xs,
            [r["predicted_saving"] for r in members],
            "o--",
            label=f"predicted (eq. 3){' ' + label if label else ''}",
        )
        base = next((r for r in members if r[x] == 0), None)
        if base and base.get("wall_time_s"):
            axes[2].plot(
                xs,
                [1 - r["wall_time_s"] / base["wall_time_s"] for r in members],
                "s-",
                label=f"measured time{' ' + label if label else ''}",
            )
    axes[0].set_yscale("log")  # gen-PPL grows by orders of magnitude toward all-light
    for ax, ylabel in zip(axes, ("gen-PPL (log scale)", "unigram entropy (nats)", "saving vs all-heavy")):
        ax.set_xlabel(xlabel or x)
        ax.set_ylabel(ylabel)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_bars(rows: Sequence[dict], path: str | os.PathLike, label: str = "key") -> Path:
    """One bar per row (e.g. placements): gen-PPL with SE bars, and unigram entropy."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    names = [str(r[label]) for r in rows]
    if all("gen_ppl" in r for r in rows):
        axes[0].bar(names, [r["gen_ppl"] for r in rows], yerr=[r.get("gen_ppl_se") or 0 for r in rows], capsize=3)
    axes[0].set_ylabel("gen-PPL (log scale)")
    axes[0].set_yscale("log")  # an all-light baseline can be orders of magnitude above the rest
    axes[1].bar(names, [r["unigram_entropy"] for r in rows], color="tab:orange")
    axes[1].set_ylabel("unigram entropy (nats)")
    for ax in axes:
        ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    return _save(fig, path)
