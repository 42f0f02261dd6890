"""Plots from benchmarks/results/*.json (the benchmarks write data; this script only draws).

  python benchmarks/plot_results.py                 # every results file it knows how to draw
Writes PNGs next to the data: measured wall-clock saving vs predicted FLOPs saving (with y = x and the
range over paired repeats) for both samplers, and the fused head vs matmul ratio over N.

Equation numbers (eq. 3-8) are those of arXiv:2604.02340 (Sedykh, Sorokin, Malykh 2026), which
docs/design.md keeps.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def _save(fig, ax, path: Path, legend_size=None, grid_axis: str = "both") -> Path:
    """Legend, grid, and the PNG next to the data file."""
    ax.legend(fontsize=legend_size)
    ax.grid(alpha=0.3, axis=grid_axis)
    out = path.with_suffix(".png")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_sampler(path: Path) -> Path:
    data = json.loads(path.read_text())
    fig, ax = plt.subplots(figsize=(5, 4.5))
    variants = list(dict.fromkeys(r.get("variant", r["sampler"]) for r in data["rows"]))
    for variant in variants:
        marker = "s" if variant.startswith(("reference", "mdlm")) else "o"
        rows = [
            r for r in data["rows"] if r.get("variant", r["sampler"]) == variant and r["measured_saving"] is not None
        ]
        if not rows:
            continue
        saving = [r["measured_saving"] for r in rows]
        # error bars: the saving at the slowest and fastest paired repeat (absent in older results files)
        low = [s - (1 - 1 / r["speedup_min"]) if r.get("speedup_min") else 0.0 for s, r in zip(saving, rows)]
        high = [(1 - 1 / r["speedup_max"]) - s if r.get("speedup_max") else 0.0 for s, r in zip(saving, rows)]
        ax.errorbar(
            [r["predicted_saving"] for r in rows], saving, yerr=[low, high], marker=marker, capsize=3, label=variant
        )
    top = max(r["predicted_saving"] for r in data["rows"])
    ax.plot([0, top], [0, top], "k--", lw=1, label="y = x (wall-clock follows FLOPs)")
    ax.set_xlabel("predicted saving, block FLOPs (eq. 3)")
    ax.set_ylabel("measured wall-clock saving")
    machine = data["machine"]
    ax.set_title(f"{data['config']} config, {machine['device']} {machine['dtype']}, {machine['threads']} threads")
    return _save(fig, ax, path)


def plot_ablation(path: Path) -> Path:
    """Wall-clock and executed FLOPs of each ablation row, both relative to the MDLM-speed row."""
    data = json.loads(path.read_text())
    rows = data["rows"]
    base_s, base_flops = rows[0]["median_s"], rows[0]["executed_gflops"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    y = list(range(len(rows)))[::-1]
    ax.barh([v + 0.2 for v in y], [r["median_s"] / base_s for r in rows], height=0.4, label="wall-clock")
    ax.barh([v - 0.2 for v in y], [r["executed_gflops"] / base_flops for r in rows], height=0.4, label="executed FLOPs")
    for v, r in zip(y, rows):
        ax.text(r["median_s"] / base_s, v + 0.2, f" {r['speedup_vs_mdlm_speed']:.1f}x", va="center", fontsize=8)
    ax.set_yticks(y, [r["label"].split(":")[0] for r in rows], fontsize=8)
    ax.set_xlabel("relative to the MDLM-speed reference (1 = as slow)")
    machine = data["machine"]
    ax.set_title(f"ablation, {data['config']} config, all heavy, {machine['threads']} threads", fontsize=10)
    return _save(fig, ax, path, legend_size=8, grid_axis="x")


def plot_head(path: Path) -> Path:
    data = json.loads(path.read_text())
    rows = data["rows"]
    fig, ax = plt.subplots(figsize=(5, 4))
    ns = [r["n"] for r in rows]
    for key, label in (
        ("fused_ms", "fused head+sample"),
        ("matmul_ms", "matmul alone"),
        ("matmul+gumbel_ms", "matmul + fp64 Gumbel + argmax"),
    ):
        ax.plot(ns, [r[key] for r in rows], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("rows projected (N)")
    ax.set_ylabel("time (ms)")
    machine = data["machine"]
    ax.set_title(
        f"vocabulary head, V={data['vocab_size']}, d={data['hidden_dim']}, {machine['device']} {machine['dtype']}"
    )
    return _save(fig, ax, path)


def plot_engine(path: Path) -> Path:
    """Left: rows per forward, engine against sample() at each step count (the budget as a line).
    Right: the forward-cost-per-row curve that sets the device's default row budget."""
    data = json.loads(path.read_text())
    rows = data["rows"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 4))
    factors = sorted({r["steps_factor"] for r in rows})
    for k, variant in enumerate(("sample", "engine")):
        values = [
            next(r["rows_per_forward"] for r in rows if r["variant"] == variant and r["steps_factor"] == f)
            for f in factors
        ]
        left.bar(
            [i + 0.2 * (2 * k - 1) for i in range(len(factors))],
            values,
            width=0.4,
            label="sample() batch after batch" if variant == "sample" else "engine",
        )
    left.axhline(rows[0]["row_budget"], color="k", ls="--", lw=1, label="row budget")
    left.set_xticks(range(len(factors)), [f"T = {f}L" if f > 1 else "T = L" for f in factors])
    left.set_ylabel("mean rows per forward")
    left.legend(fontsize=8)
    curve = data["forward_cost_curve"]
    right.plot([c["rows"] for c in curve], [c["per_row_s"] * 1e3 for c in curve], marker="o")
    right.set_xscale("log", base=2)
    right.set_xlabel("rows in the forward")
    right.set_ylabel("forward time per row (ms)")
    right.set_ylim(bottom=0)
    right.grid(alpha=0.3)
    machine = data["machine"]
    fig.suptitle(
        f"engine, {data['config']} config, L {rows[0]['length']}, {machine['device']} {machine['dtype']}, "
        f"{machine['threads']} threads",
        fontsize=10,
    )
    return _save(fig, left, path, legend_size=8)


def plot_threads(path: Path) -> Path:
    """Median seconds of each thread setting, grouped by competitor condition; runs stopped at the
    time limit are hatched (their bar is the limit, a lower bound)."""
    data = json.loads(path.read_text())
    rows = [r for r in data["rows"] if r["job"] == "main"] or data["rows"]
    conditions = list(dict.fromkeys(r["condition"] for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    fig, ax = plt.subplots(figsize=(6.5, 4))
    width = 0.8 / len(variants)
    for i, variant in enumerate(variants):
        for j, condition in enumerate(conditions):
            row = next((r for r in rows if r["variant"] == variant and r["condition"] == condition), None)
            if row:
                ax.bar(
                    j + i * width,
                    row["median_wall_s"],
                    width,
                    color=f"C{i}",
                    hatch="//" if row["timed_out"] else None,
                    label=variant if j == 0 else None,
                )
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(conditions))], conditions)
    ax.set_ylabel("main job, median seconds (start to exit)")
    ax.set_title(
        f"threads under contention, {data['machine'].get('cpu_model', '')} ({data['machine']['cpu_count']} cores)",
        fontsize=10,
    )
    return _save(fig, ax, path, legend_size=8, grid_axis="y")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of results files (default: %(default)s)")
    args = parser.parse_args(argv)
    drawn = []
    for path in sorted(args.results.glob("*.json")):
        kind = json.loads(path.read_text()).get("benchmark")
        if kind == "bench_sampler":
            drawn.append(plot_sampler(path))
        elif kind == "bench_ablation":
            drawn.append(plot_ablation(path))
        elif kind == "bench_head":
            drawn.append(plot_head(path))
        elif kind == "bench_engine":
            drawn.append(plot_engine(path))
        elif kind == "bench_threads":
            drawn.append(plot_threads(path))
    for out in drawn:
        print(out)
    if not drawn:
        print("no results to plot in", args.results, file=sys.stderr)


if __name__ == "__main__":
    main()
