"""Markdown tables from benchmarks/results/*.json (what benchmarks/README.md shows).

  python benchmarks/report.py                 # every results file, one table each

Equation numbers (eq. 3-8) are those of arXiv:2604.02340 (Sedykh, Sorokin, Malykh 2026), which
docs/design.md keeps.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _f(value, fmt):
    return "–" if value is None else format(value, fmt)


def _row(*cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _work_and_time(row: dict, peaks: dict) -> str:
    """The executed-GFLOPs, median-time and throughput cells every sampler table has: executed
    GFLOP/s and its fraction of the GEMM peak of the row's dtype measured in the same run (older
    results files have no peaks: "–")."""
    rate = row["executed_gflops"] / row["median_s"]
    peak = peaks.get(f"gemm_{row.get('dtype', 'float32')}_gflop_per_s")
    return (
        f"{row['executed_gflops']:.4g} | {row['median_s']:.2f} (±{row['spread']:.1%}, n={row['repeats']}) | "
        f"{rate:.0f} | {_f(rate / peak if peak else None, '.0%')}"
    )


def _range(row: dict, key: str, stem: str, fmt: str) -> str:
    """`value (min–max)` where the row has a per-repeat range that differs from the value."""
    value, lo, hi = row.get(key), row.get(f"{stem}_min"), row.get(f"{stem}_max")
    if value is None:
        return "–"
    if lo is None or hi is None or lo == hi:
        return format(value, fmt)
    return f"{value:{fmt}} ({lo:{fmt}}–{hi:{fmt}})"


def _header(data: dict) -> str:
    m = data["machine"]
    where = m.get("gpu") or f"{m.get('cpu_model', m['processor'])}, {m['threads']} threads"
    peaks = m.get("peaks")
    measured = (
        ""
        if not peaks
        else (
            f"; measured in the run: GEMM fp32 {peaks['gemm_float32_gflop_per_s']:.0f} / bf16 "
            f"{peaks['gemm_bfloat16_gflop_per_s']:.0f} GFLOP/s, read {peaks['read_gb_per_s']:.1f} GB/s"
        )
    )
    flags = m.get("cpu_flags")
    native = (
        "" if flags is None else f", {'with' if 'avx512_bf16' in flags or 'amx_bf16' in flags else 'no'} native bf16"
    )
    return (
        f"*{data.get('config', data['benchmark'])}* — {m['device']} {m['dtype']}, {where}{native}, "
        f"torch {m['torch']}, rev {m['git_revision']}, {m['date']}{measured}"
    )


def sampler_table(data: dict) -> str:
    lines = [
        _header(data),
        "",
        "| variant | light blocks | light % | predicted saving (eq. 3) | executed GFLOPs | median s (spread) "
        "| GFLOP/s | of GEMM peak | vs MDLM speed (min–max) | speedup vs own all-heavy (min–max) | realized/predicted (min–max) "
        "| vs fast fp32 (min–max) | time in blocks |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    peaks = data["machine"].get("peaks") or {}
    for r in data["rows"]:
        ranges = [
            _range(r, key, stem, fmt)
            for key, stem, fmt in (
                ("speedup_vs_mdlm_speed", "speedup_vs_mdlm_speed", ".2f"),
                ("speedup_vs_own_all_heavy", "speedup", ".3f"),
                ("realized_over_predicted", "realized_over_predicted", ".2f"),
                ("speedup_vs_fast_float32", "speedup_vs_fast_float32", ".2f"),
            )
        ]
        lines.append(
            _row(
                r.get("variant", r["sampler"]),
                r["light_blocks"],
                f"{r['light_fraction']:.0%}",
                f"{r['predicted_saving']:.3f}",
                _work_and_time(r, peaks),
                *ranges,
                _f(r.get("block_fraction"), ".1%"),
            )
        )
    return "\n".join(lines)


def ablation_table(data: dict) -> str:
    lines = [
        _header(data),
        "",
        "| mechanism | dtype | forwards | rows | head positions | executed GFLOPs | median s (spread) "
        "| GFLOP/s | of GEMM peak | gain over the row above (min–max) | vs MDLM speed (min–max) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    peaks = data["machine"].get("peaks") or {}
    for r in data["rows"]:
        lines.append(
            _row(
                r["label"],
                r["dtype"],
                r["forwards"],
                r["rows_run"],
                r["head_positions"],
                _work_and_time(r, peaks),
                *(_range(r, key, key, ".2f") for key in ("speedup_vs_previous", "speedup_vs_mdlm_speed")),
            )
        )
    return "\n".join(lines)


def head_table(data: dict) -> str:
    gpu = data["machine"]["device"] == "cuda"
    lines = [
        _header(data),
        "",
        "| N | fused ms | matmul ms | fused / matmul (min–max) | matmul + fp64 Gumbel ms | reference path / fused "
        "| fused GB/s | of measured read bandwidth |" + (" % roofline |" if gpu else ""),
        "|---|---|---|---|---|---|---|---|" + ("---|" if gpu else ""),
    ]
    read = (data["machine"].get("peaks") or {}).get("read_gb_per_s")
    for r in data["rows"]:
        lines.append(
            f"| {r['n']} | {r['fused_ms']:.3f} | {r['matmul_ms']:.3f} | {r['fused_over_matmul']:.2f} "
            f"({r['fused_over_matmul_min']:.2f}–{r['fused_over_matmul_max']:.2f}) | {r['matmul+gumbel_ms']:.2f} "
            f"| {r['reference_over_fused']:.1f}x | {r['fused_gb_per_s']:.1f} "
            f"| {_f(r['fused_gb_per_s'] / read if read else None, '.0%')} |"
            + (f" {_f(r.get('fused_pct_roofline'), '.0f')} |" if gpu else "")
        )
    return "\n".join(lines)


def breakdown_table(data: dict) -> str:
    lines = [
        _header(data),
        "",
        "| sampler | heavy run: time in blocks | light run: time in blocks | all-light saving predicted "
        "| eq. 4 bound | measured |",
        "|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        lines.append(
            f"| {r['sampler']} | {r['heavy_block_fraction']:.1%} | {r['light_block_fraction']:.1%} "
            f"| {r['predicted_saving_all_light']:.1%} | {r['bound_saving_all_light']:.1%} "
            f"| {r['measured_saving_all_light']:.1%} |"
        )
    return "\n".join(lines)


TABLES = {
    "bench_sampler": sampler_table,
    "bench_ablation": ablation_table,
    "bench_head": head_table,
    "bench_breakdown": breakdown_table,
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    for path in sorted(args.results.glob("*.json")):
        data = json.loads(path.read_text())
        table = TABLES.get(data.get("benchmark"))
        if table:
            print(f"#### {path.name}\n\n{table(data)}\n")


if __name__ == "__main__":
    main()
