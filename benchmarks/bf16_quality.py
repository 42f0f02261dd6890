"""Is sample quality unchanged by bf16? Same seeds, fp32 against bf16, on the embedded models.

Every sample is drawn twice with the same seed and schedule, once with the models in fp32 and
once in bf16. Each pair is scored under the embedded judge: the per-sample difference of the mean
NLL per judge token (bf16 minus fp32), whose mean gives the gen-PPL ratio exp(mean diff), and the
per-sample difference of unigram entropy; both with a 95% confidence interval over the pairs
(Student t). Pairing on the seed cancels most of the sample-to-sample variance: the two draws
share their uniforms and differ only where bf16 rounding moves a draw.

  python benchmarks/bf16_quality.py --samples 32                  # writes results/bf16_quality.json
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import BenchConfig, machine_info, write_results  # noqa: E402

import mdlm_fast as mf  # noqa: E402
from mdlm_fast.analysis import metrics as ev  # noqa: E402
from mdlm_fast.analysis.judge import nll  # noqa: E402


def t_quantile_975(df: int) -> float:
    """Student t 97.5% quantile (Cornish-Fisher expansion around the normal; within 0.3% for df >= 3)."""
    z = 1.959963984540054
    if df <= 0:
        return float("nan")
    return (
        z
        + (z**3 + z) / (4 * df)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
    )


def mean_ci(values: list[float]) -> dict:
    """Mean, standard error and 95% CI of paired differences."""
    n = len(values)
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(n) if n > 1 else float("nan")
    half = t_quantile_975(n - 1) * se
    return {"mean": mean, "se": se, "ci95": [mean - half, mean + half], "n": n}


@torch.no_grad()
def per_sample_nll(texts: list[str], judge, judge_tokenizer) -> list[tuple[float, int]]:
    bos = judge_tokenizer.eos_id if judge_tokenizer.eos_id is not None else getattr(judge.config, "eos_id", None)
    out = []
    for text in texts:
        ids = judge_tokenizer.encode(text)
        if not ids:
            out.append((float("nan"), 0))
            continue
        token_nll = nll(judge, torch.tensor([ids], dtype=torch.int64), bos_id=bos)
        out.append((float(token_nll.double().sum()), token_nll.numel()))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--schedule", default="sandwich:0.25")
    parser.add_argument("--seed", type=int, default=0, help="batch k samples with seed + k")
    parser.add_argument("--heavy", default="embedded:heavy")
    parser.add_argument("--light", default="embedded:light")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--name", default="bf16_quality")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    models = [mf.load_denoiser(args.heavy), mf.load_denoiser(args.light)]
    tokenizer = mf.load_tokenizer("embedded")
    judge, judge_tokenizer = ev.load_judge_and_tokenizer("embedded")
    mask = models[0].config.mask_index
    rows = []
    for k, start in enumerate(range(0, args.samples, args.batch_size)):
        batch = min(args.batch_size, args.samples - start)
        drawn = {}
        for dtype in ("float32", "bfloat16"):
            result = mf.sample(
                models,
                steps=args.steps,
                batch_size=batch,
                length=args.length,
                schedule=args.schedule,
                sampler="fast",
                seed=args.seed + k,
                dtype=dtype,
            )
            texts = [tokenizer.decode(row, mask_id=mask) for row in result.tokens.tolist()]
            drawn[dtype] = (
                result.tokens,
                texts,
                per_sample_nll(texts, judge, judge_tokenizer),
                result.stats.wall_time_s,
            )
            print(f"batch {k} {dtype:8s} {result.stats.wall_time_s:6.2f} s", file=sys.stderr, flush=True)
        for i in range(batch):
            pair = {}
            for dtype, (tokens, _, scores, _) in drawn.items():
                total, count = scores[i]
                pair[dtype] = {
                    "nll_per_token": total / count if count else float("nan"),
                    "judge_tokens": count,
                    "unigram_entropy": ev.unigram_entropy([tokens[i].tolist()]),
                }
            same = float((drawn["float32"][0][i] == drawn["bfloat16"][0][i]).float().mean())
            rows.append(
                {
                    "seed": args.seed + k,
                    "index": i,
                    "nll_fp32": pair["float32"]["nll_per_token"],
                    "nll_bf16": pair["bfloat16"]["nll_per_token"],
                    "nll_diff": pair["bfloat16"]["nll_per_token"] - pair["float32"]["nll_per_token"],
                    "entropy_fp32": pair["float32"]["unigram_entropy"],
                    "entropy_bf16": pair["bfloat16"]["unigram_entropy"],
                    "entropy_diff": pair["bfloat16"]["unigram_entropy"] - pair["float32"]["unigram_entropy"],
                    "same_token_fraction": same,
                }
            )
    valid = [r for r in rows if math.isfinite(r["nll_diff"])]
    nll_diff = mean_ci([r["nll_diff"] for r in valid])
    entropy_diff = mean_ci([r["entropy_diff"] for r in rows])
    summary = {
        "samples": len(rows),
        "scored": len(valid),
        "nll_diff": nll_diff,
        "gen_ppl_ratio": math.exp(nll_diff["mean"]),
        "gen_ppl_ratio_ci95": [math.exp(v) for v in nll_diff["ci95"]],
        "gen_ppl_fp32": math.exp(statistics.fmean(r["nll_fp32"] for r in valid)),
        "gen_ppl_bf16": math.exp(statistics.fmean(r["nll_bf16"] for r in valid)),
        "entropy_diff": entropy_diff,
        "entropy_fp32": statistics.fmean(r["entropy_fp32"] for r in rows),
        "entropy_bf16": statistics.fmean(r["entropy_bf16"] for r in rows),
        "same_token_fraction": statistics.fmean(r["same_token_fraction"] for r in rows),
    }
    config = BenchConfig(
        "embedded",
        models[0].config.hidden_dim,
        models[0].config.n_heads,
        models[0].config.n_blocks,
        models[1].config.n_blocks,
        models[0].config.vocab_size,
        args.length,
        args.steps,
        args.batch_size,
        torch.bfloat16,
        "cpu",
    )
    path = write_results(
        args.name,
        {
            "benchmark": "bf16_quality",
            "machine": machine_info(config),
            "settings": vars(args),
            "per_sample_nll": "judge NLL per judge token",
            "summary": summary,
        },
        rows,
    )
    print(
        f"gen-PPL fp32 {summary['gen_ppl_fp32']:.2f}, bf16 {summary['gen_ppl_bf16']:.2f}; paired ratio "
        f"{summary['gen_ppl_ratio']:.4f} (95% CI {summary['gen_ppl_ratio_ci95'][0]:.4f}-"
        f"{summary['gen_ppl_ratio_ci95'][1]:.4f}); unigram entropy diff {entropy_diff['mean']:+.4f} nats "
        f"(95% CI {entropy_diff['ci95'][0]:+.4f} to {entropy_diff['ci95'][1]:+.4f}); "
        f"same tokens {summary['same_token_fraction']:.1%}"
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()
