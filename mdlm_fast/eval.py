"""Sample quality: generative perplexity under a judge, unigram entropy, distinct-n.

Generative perplexity: decode each sample to text, re-tokenize it with the judge's tokenizer,
score it with the causal-LM judge (the end-of-text id as the first context), and report
exp(token-weighted mean NLL) with its standard error over samples (delta method on the ratio
estimator sum(nll_i) / sum(n_i)). Every result records what produced it.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Any, Sequence

import torch

from mdlm_fast.judge import nll


def _ratio_se(sums: Sequence[float], counts: Sequence[int]) -> tuple[float, float]:
    """Mean sum(s)/sum(n) and its standard error over k samples (delta method)."""
    k = len(sums)
    total_n = float(sum(counts))
    mean = sum(sums) / total_n
    if k < 2:
        return mean, float("nan")
    resid = sum((s - mean * n) ** 2 for s, n in zip(sums, counts))
    return mean, math.sqrt(k / (k - 1) * resid) / total_n


@torch.no_grad()
def generative_perplexity(texts: Sequence[str], judge: Any, judge_tokenizer: Any, *,
                          batch_size: int = 8, device: Any = None) -> dict:
    """Gen-PPL of decoded samples under a causal-LM judge (see the module doc).

    judge: a mdlm_fast.judge.CausalLM; judge_tokenizer: a TextTokenizer whose ids the judge
    reads. Empty samples are skipped (and counted in "skipped").
    """
    device = device or next(judge.parameters()).device
    bos = judge_tokenizer.eos_id if judge_tokenizer.eos_id is not None else getattr(judge.config, "eos_id", None)
    encoded = [judge_tokenizer.encode(t) for t in texts]
    kept = [ids for ids in encoded if ids]
    sums, counts = [], []
    for start in range(0, len(kept), batch_size):
        for ids in kept[start:start + batch_size]:  # one at a time: samples differ in length
            row = torch.tensor([ids], dtype=torch.int64, device=device)
            token_nll = nll(judge, row, bos_id=bos)
            sums.append(float(token_nll.double().sum()))
            counts.append(token_nll.numel())
    if not counts:
        raise ValueError("no non-empty samples to score")
    mean, se = _ratio_se(sums, counts)
    ppl = math.exp(mean)
    return {"gen_ppl": ppl, "gen_ppl_se": ppl * se, "mean_nll": mean, "mean_nll_se": se,
            "tokens": int(sum(counts)), "samples": len(counts), "skipped": len(texts) - len(counts),
            "judge_tokenizer": getattr(judge_tokenizer, "name", "?")}


def unigram_entropy(samples: Sequence[Sequence[int]]) -> float:
    """Mean over samples of the entropy (nats) of each sample's token-id unigram distribution."""
    values = []
    for ids in samples:
        counts = Counter(int(i) for i in ids)
        n = sum(counts.values())
        if n:
            values.append(-sum(c / n * math.log(c / n) for c in counts.values()))
    return sum(values) / len(values) if values else float("nan")


def distinct_n(samples: Sequence[Sequence[int]], n: int = 2) -> float:
    """Distinct n-grams over all n-grams, pooled over samples (Li et al. 2016)."""
    grams = [tuple(ids[i:i + n]) for ids in samples for i in range(len(ids) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")
