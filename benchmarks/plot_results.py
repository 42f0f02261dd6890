"""Plots from benchmarks/results/*.json (the benchmarks write data; this script only draws).

  python benchmarks/plot_results.py                 # every results file it knows how to draw
Writes PNGs next to the data: measured wall-clock saving vs predicted FLOPs saving (with y = x and the
range over paired repeats) for both samplers, and the fused head vs matmul ratio over N.
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


def plot_sampler(path: Path) -> Path:
    data = json.loads(path.read_text())
    fig, ax = plt.subplots(figsize=(5, 4.5))
    for sampler, marker in (("reference", "s"), ("fast", "o")):
        rows = [r for r in data["rows"] if r["sampler"] == sampler and r["measured_saving"] is not None]
        if not rows:
            continue
        saving = [r["measured_saving"] for r in rows]
        # error bars: the saving at the slowest and fastest paired repeat (absent in older results files)
        low = [s - (1 - 1 / r["speedup_min"]) if r.get("speedup_min") else 0.0 for s, r in zip(saving, rows)]
        high = [(1 - 1 / r["speedup_max"]) - s if r.get("speedup_max") else 0.0 for s, r in zip(saving, rows)]
        ax.errorbar([r["predicted_saving"] for r in rows], saving, yerr=[low, high], marker=marker, capsize=3,
                    label=f"{sampler} sampler")
    top = max(r["predicted_saving"] for r in data["rows"])
    ax.plot([0, top], [0, top], "k--", lw=1, label="y = x (wall-clock follows FLOPs)")
    ax.set_xlabel("predicted saving, block FLOPs (eq. 3)")
    ax.set_ylabel("measured wall-clock saving")
    machine = data["machine"]
    ax.set_title(f"{data['config']} config, {machine['device']} {machine['dtype']}, {machine['threads']} threads")
    ax.legend()
    ax.grid(alpha=0.3)
    out = path.with_suffix(".png")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_head(path: Path) -> Path:
    data = json.loads(path.read_text())
    rows = data["rows"]
    fig, ax = plt.subplots(figsize=(5, 4))
    ns = [r["n"] for r in rows]
    for key, label in (("fused_ms", "fused head+sample"), ("matmul_ms", "matmul alone"),
                       ("matmul+gumbel_ms", "matmul + fp64 Gumbel + argmax")):
        ax.plot(ns, [r[key] for r in rows], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("rows projected (N)")
    ax.set_ylabel("time (ms)")
    machine = data["machine"]
    ax.set_title(f"vocabulary head, V={data['vocab_size']}, d={data['hidden_dim']}, {machine['device']} {machine['dtype']}")
    ax.legend()
    ax.grid(alpha=0.3)
    out = path.with_suffix(".png")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of results files (default: %(default)s)")
    args = parser.parse_args(argv)
    drawn = []
    for path in sorted(args.results.glob("*.json")):
        kind = json.loads(path.read_text()).get("benchmark")
        if kind == "bench_sampler":
            drawn.append(plot_sampler(path))
        elif kind == "bench_head":
            drawn.append(plot_head(path))
    for out in drawn:
        print(out)
    if not drawn:
        print("no results to plot in", args.results, file=sys.stderr)


if __name__ == "__main__":
    main()
