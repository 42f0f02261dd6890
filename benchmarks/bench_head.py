"""The vocabulary head: fused projection + draw vs matmul alone vs the reference path.

Per N (rows projected): `fused` = ops.fused_head_sample; `matmul` = hidden @ W^T alone;
`matmul+gumbel` = matmul, float64 Gumbel noise over [N, V] from the Philox op, argmax (the
mdlm sampler's path). Ratios are taken inside one run, alternating providers per repeat.
Every repeat also times read-only streams over W (`W.sum()` and an integer max over W's bytes;
the faster of the two is the stream), so the fused op's W read rate is reported in GB/s and as a
percent of the read rate the machine gives in that same moment. On a GPU also the percent of the
DRAM roofline.

  python benchmarks/bench_head.py --device cpu               # fp32
  python benchmarks/bench_head.py --device cuda --dtype bf16 # on a GPU
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import BenchConfig, machine_info, summary, synchronize, timed, write_results  # noqa: E402

from mdlm_fast.ops import compiled as ops  # noqa: E402
from mdlm_fast.ops.compiled import PURPOSE_REFERENCE_GUMBEL, PURPOSE_TOKEN  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# DRAM bandwidth used for the roofline, bytes/s (vendor figures)
PEAK_BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12}


def providers(hidden, weight, keys, mask_id):
    banned = torch.tensor([mask_id], device=hidden.device)

    def fused():
        return ops.fused_head_sample(hidden, weight, None, keys, seed=0, purpose=PURPOSE_TOKEN, banned=banned)

    def matmul():
        return hidden @ weight.T

    def matmul_gumbel():
        logits = (hidden @ weight.T).double()
        logits[:, mask_id] = float("-inf")
        noise = ops.philox_noise(keys, 0, PURPOSE_REFERENCE_GUMBEL, weight.shape[0], "gumbel")
        return (logits + noise).argmax(-1)

    return {"fused": fused, "matmul": matmul, "matmul+gumbel": matmul_gumbel}


def stream_providers(weight):
    """Read-only passes over W's bytes, the yardstick of a bandwidth-bound head."""
    words = weight.view(-1).view(torch.int32) if weight.numel() * weight.element_size() % 4 == 0 else None
    out = {"stream_sum": lambda: weight.sum()}
    if words is not None:
        out["stream_max"] = lambda: words.max()
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="fp32 | bf16 | fp16 (default: fp32 on CPU, bf16 on GPU)")
    parser.add_argument("--ns", default="1,2,4,8,16,64,256,1024")
    parser.add_argument("--hidden-dim", type=int, default=768)
    parser.add_argument("--vocab-size", type=int, default=50258)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--name", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible on this machine")
    dtype = DTYPES[args.dtype or ("fp32" if args.device == "cpu" else "bf16")]
    config = BenchConfig(f"head_{args.device}", args.hidden_dim, 12, 0, 0, args.vocab_size, 0, 0, 0, dtype, args.device)
    g = torch.Generator().manual_seed(0)
    weight = (torch.randn(args.vocab_size, args.hidden_dim, generator=g) * 0.02).to(args.device, dtype)
    rows = []
    for n in [int(v) for v in args.ns.split(",")]:
        hidden = torch.randn(n, args.hidden_dim, generator=g).to(args.device, dtype)
        keys = torch.stack([torch.zeros(n, dtype=torch.int64), torch.arange(n), torch.zeros(n, dtype=torch.int64)], 1)
        funcs = {**providers(hidden, weight, keys.to(args.device), args.vocab_size - 1), **stream_providers(weight)}
        for fn in funcs.values():  # warm-up
            fn()
        synchronize(args.device)
        times = {name: [] for name in funcs}
        for _ in range(args.repeats):
            for name, fn in funcs.items():
                times[name].append(timed(fn, args.device))
        ratio = [f / m for f, m in zip(times["fused"], times["matmul"])]
        row = {"n": n}
        for name in funcs:
            s = summary(times[name])
            row[f"{name}_ms"] = s["median_s"] * 1e3
            row[f"{name}_spread"] = s["spread"]
        row["fused_over_matmul"] = statistics.median(ratio)
        row["fused_over_matmul_min"], row["fused_over_matmul_max"] = min(ratio), max(ratio)
        row["reference_over_fused"] = row["matmul+gumbel_ms"] / row["fused_ms"]
        w_bytes = weight.numel() * weight.element_size()
        row["w_bytes"] = w_bytes
        row["fused_gb_per_s"] = w_bytes / (row["fused_ms"] / 1e3) / 1e9
        row["matmul_gb_per_s"] = w_bytes / (row["matmul_ms"] / 1e3) / 1e9
        # per repeat: the faster stream of that repeat, and the fused op's rate against it
        streams = [min(ts) for ts in zip(*(times[k] for k in funcs if k.startswith("stream")))]
        pct = [100 * s_ / f for s_, f in zip(streams, times["fused"])]
        row["stream_gb_per_s"] = w_bytes / statistics.median(streams) / 1e9
        row["fused_pct_of_stream"] = statistics.median(pct)
        row["fused_pct_of_stream_min"], row["fused_pct_of_stream_max"] = min(pct), max(pct)
        if args.device == "cuda":
            name = torch.cuda.get_device_name()
            peak = next((v for k, v in PEAK_BANDWIDTH.items() if k in name), None)
            row["fused_pct_roofline"] = 100 * row["fused_gb_per_s"] * 1e9 / peak if peak else None
        rows.append(row)
        print(
            f"N={n:5d} fused {row['fused_ms']:8.2f} ms  matmul {row['matmul_ms']:8.2f} ms  "
            f"fused/matmul {row['fused_over_matmul']:.2f} [{row['fused_over_matmul_min']:.2f}, "
            f"{row['fused_over_matmul_max']:.2f}]  matmul+gumbel {row['matmul+gumbel_ms']:8.2f} ms  "
            f"{row['fused_gb_per_s']:.1f} GB/s = {row['fused_pct_of_stream']:.0f}% of the "
            f"{row['stream_gb_per_s']:.1f} GB/s stream",
            flush=True,
        )
    name = args.name or f"head_{args.device}_{str(dtype).replace('torch.', '')}"
    path = write_results(
        name,
        {
            "benchmark": "bench_head",
            "machine": machine_info(config),
            "threads": torch.get_num_threads(),
            "hidden_dim": args.hidden_dim,
            "vocab_size": args.vocab_size,
        },
        rows,
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()
