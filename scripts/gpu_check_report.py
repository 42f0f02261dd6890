"""Helpers of scripts/gpu_check.sh: device facts, a measured copy bandwidth, and summary.md.

usage: gpu_check_report.py device|copy|summary --out DIR
"""

from __future__ import annotations

import argparse
import json
import statistics
import xml.etree.ElementTree as ET
from pathlib import Path

from mdlm_fast.util.atomic import write_json, write_text


def device(out: Path) -> None:
    import torch

    import mdlm_fast

    props = torch.cuda.get_device_properties(0)
    write_json(
        out / "device.json",
        {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "build_info": mdlm_fast.build_info(),
        },
    )


def copy(out: Path, mib: int = 1024, repeats: int = 20) -> None:
    """Device-to-device copy bandwidth (read + write bytes per second), median of `repeats`."""
    import torch

    src = torch.empty(mib * 2**20, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    gbps = [2 * src.numel() / t / 1e9 for t in times]
    write_json(
        out / "copy_bandwidth.json",
        {
            "bytes": src.numel(),
            "median_gb_per_s": statistics.median(gbps),
            "min_gb_per_s": min(gbps),
            "max_gb_per_s": max(gbps),
        },
    )


def summary(out: Path) -> str:
    lines = ["# GPU check", ""]
    dev = out / "device.json"
    if dev.exists():
        d = json.loads(dev.read_text())
        lines += [
            f"Device: {d['name']} (sm_{d['capability'].replace('.', '')}), torch {d['torch']}, CUDA {d['cuda']}",
            "",
        ]
    junit = out / "cuda_tests.xml"
    if junit.exists():
        suite = ET.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        lines += [
            f"CUDA tests: {suite.get('tests')} run, {suite.get('failures')} failed, {suite.get('errors')} errors, "
            f"{suite.get('skipped')} skipped",
            "",
        ]
    copy_bw = None
    if (out / "copy_bandwidth.json").exists():
        c = json.loads((out / "copy_bandwidth.json").read_text())
        copy_bw = c["median_gb_per_s"]
        lines += [
            f"Device-to-device copy: {copy_bw:.0f} GB/s (median; {c['min_gb_per_s']:.0f}-{c['max_gb_per_s']:.0f})",
            "",
        ]
    head = out / "head_cuda.json"
    model = _model_estimates(out / "model.json")
    if head.exists():
        lines += [
            (
                "| N | fused ms | fused / matmul | GB/s of W | % of copy bandwidth | model ms (estimate) | "
                "model % of peak (estimate) |"
            ),
            "|---|---|---|---|---|---|---|",
        ]
        for r in json.loads(head.read_text())["rows"]:
            pct = f"{100 * r['fused_gb_per_s'] / copy_bw:.0f}" if copy_bw else "-"
            est = model.get(r["n"])
            est_cols = (
                f"{1e3 * est['estimated_s']:.3f} | {100 * est['estimated_fraction_of_peak']:.0f}" if est else "- | -"
            )
            lines.append(
                f"| {r['n']} | {r['fused_ms']:.3f} | {r['fused_over_matmul']:.2f} "
                f"[{r['fused_over_matmul_min']:.2f}, {r['fused_over_matmul_max']:.2f}] | "
                f"{r['fused_gb_per_s']:.0f} | {pct} | {est_cols} |"
            )
        if model:
            lines.append(
                "\nModel: scripts/kernel_report's estimate for an H100 SXM (3.35 TB/s; bf16 W, V = 50258, "
                "d = 768), beside each measurement."
            )
        lines.append("")
    for name in ("sampler_paper", "breakdown_paper"):
        present = (out / f"{name}.json").exists()
        lines.append(f"{name}: {'results in ' + name + '.json / .csv' if present else 'missing (see its log)'}")
    text = "\n".join(lines) + "\n"
    write_text(out / "summary.md", text)
    return text


def _model_estimates(path: Path) -> dict[int, dict]:
    """N -> the kernel_report model's row for bf16 W, d = 768 (its JSON), or {} when absent."""
    if not path.exists():
        return {}
    return {s["n"]: s for s in json.loads(path.read_text())["shapes"] if s["dtype"] == "bf16" and s["d"] == 768}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["device", "copy", "summary"])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.what == "summary":
        print(summary(args.out), end="")
    else:
        {"device": device, "copy": copy}[args.what](args.out)


if __name__ == "__main__":
    main()
