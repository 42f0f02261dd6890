"""Sample quality: generative perplexity under a judge, unigram entropy, distinct-n.

Generative perplexity: decode each sample to text, re-tokenize it with the judge's tokenizer,
score it with the causal-LM judge (the end-of-text id as the first context), and report
exp(token-weighted mean NLL) with its standard error over samples (delta method on the ratio
estimator sum(nll_i) / sum(n_i)). Every result records what produced it.

Equation numbers (eq. 3-8) are those of arXiv:2604.02340 (Sedykh, Sorokin, Malykh 2026), which
docs/design.md keeps.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Sequence

import torch

from mdlm_fast.analysis.judge import nll


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
def generative_perplexity(
    texts: Sequence[str], judge: Any, judge_tokenizer: Any, *, batch_size: int = 8, device: Any = None
) -> dict:
    """Gen-PPL of decoded samples under a causal-LM judge (see the module doc).

    judge: a mdlm_fast.analysis.judge.CausalLM; judge_tokenizer: a TextTokenizer whose ids the judge
    reads. Empty samples are skipped (and counted in "skipped").
    """
    device = device or next(judge.parameters()).device
    bos = judge_tokenizer.eos_id if judge_tokenizer.eos_id is not None else getattr(judge.config, "eos_id", None)
    encoded = [judge_tokenizer.encode(t) for t in texts]
    # Per text, in input order (None for an empty one): paired comparisons need them aligned.
    nll_sums: list = [None] * len(texts)
    token_counts: list = [None] * len(texts)
    for index, ids in enumerate(encoded):  # one at a time: samples differ in length
        if ids:
            row = torch.tensor([ids], dtype=torch.int64, device=device)
            token_nll = nll(judge, row, bos_id=bos)
            nll_sums[index] = float(token_nll.double().sum())
            token_counts[index] = token_nll.numel()
    sums = [s for s in nll_sums if s is not None]
    counts = [c for c in token_counts if c is not None]
    if not counts:
        raise ValueError("no non-empty samples to score")
    mean, se = _ratio_se(sums, counts)
    ppl = math.exp(mean)
    return {
        "gen_ppl": ppl,
        "gen_ppl_se": ppl * se,
        "mean_nll": mean,
        "mean_nll_se": se,
        "tokens": int(sum(counts)),
        "samples": len(counts),
        "skipped": len(texts) - len(counts),
        "judge_tokenizer": getattr(judge_tokenizer, "name", "?"),
        "per_sample": {"nll_sums": nll_sums, "token_counts": token_counts},
    }


def unigram_entropies(samples: Sequence[Sequence[int]]) -> list:
    """Per sample, the entropy (nats) of its token-id unigram distribution (None for an empty one)."""
    values: list = []
    for ids in samples:
        counts = Counter(int(i) for i in ids)
        n = sum(counts.values())
        values.append(-sum(c / n * math.log(c / n) for c in counts.values()) if n else None)
    return values


def unigram_entropy(samples: Sequence[Sequence[int]]) -> float:
    """Mean over samples of the entropy (nats) of each sample's token-id unigram distribution."""
    values = [v for v in unigram_entropies(samples) if v is not None]
    return sum(values) / len(values) if values else float("nan")


def distinct_n(samples: Sequence[Sequence[int]], n: int = 2) -> float:
    """Distinct n-grams over all n-grams, pooled over samples (Li et al. 2016)."""
    grams = [tuple(ids[i : i + n]) for ids in samples for i in range(len(ids) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


# --------------------------------------------------------------------------------------------
# Judges from a spec, and whole-schedule evaluation (sample -> decode -> score)
# --------------------------------------------------------------------------------------------


class HFJudge(torch.nn.Module):
    """Adapter: a ``transformers`` causal LM seen through the interface :func:`judge.nll` uses.

    ``config.vocab_size``/``config.max_length`` come from the HF config (``n_positions`` or
    ``max_position_embeddings``); ``forward(ids)`` returns the logits tensor.
    """

    def __init__(self, model: Any) -> None:
        super().__init__()
        from types import SimpleNamespace

        self.model = model
        hf = model.config
        max_length = getattr(hf, "n_positions", None) or getattr(hf, "max_position_embeddings", None) or 1024
        self.config = SimpleNamespace(
            vocab_size=int(hf.vocab_size), max_length=int(max_length), eos_id=getattr(hf, "eos_token_id", None)
        )

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids).logits


def load_judge_and_tokenizer(
    spec: str = "embedded", tokenizer_spec: str | None = None, device: Any = None
) -> tuple[Any, Any]:
    """``(judge, judge_tokenizer)`` for ``"embedded"``, a mdlm_fast judge directory, or (when
    ``transformers`` is installed) any local Hugging Face causal-LM directory such as GPT-2.

    The tokenizer defaults to the judge's own (the embedded one, or the directory's).
    """
    import json
    import os

    from mdlm_fast.analysis.judge import MODEL_TYPE, CausalLM, load_judge
    from mdlm_fast.models.embedded import JUDGE, EmbeddedNameError, embedded_path
    from mdlm_fast.text.tokenizer import load_tokenizer

    spec = str(spec)
    try:
        is_ours = embedded_path(spec, JUDGE) is not None
    except EmbeddedNameError as e:
        raise FileNotFoundError(str(e)) from None
    if not is_ours and not os.path.isdir(spec):
        raise FileNotFoundError(f"no judge directory at {spec}")
    if not is_ours:
        try:
            with open(os.path.join(spec, "config.json"), encoding="utf-8") as f:
                is_ours = json.load(f).get("model_type") == MODEL_TYPE
        except (OSError, ValueError):
            raise ValueError(f"judge directory {spec} has no readable config.json") from None
    judge: CausalLM | HFJudge
    if is_ours:
        judge = load_judge(spec, device=device)
    else:
        try:
            from transformers import AutoModelForCausalLM
        except ImportError:
            raise ValueError(
                f"judge {spec} is a Hugging Face model; reading it needs the "
                "'transformers' package, which is not installed"
            ) from None
        judge = HFJudge(AutoModelForCausalLM.from_pretrained(spec)).eval()
        if device is not None:
            judge.to(device)
    tokenizer = load_tokenizer(tokenizer_spec or ("embedded" if spec.startswith("embedded") else spec))
    return judge, tokenizer


def evaluate_samples(
    tokens: Sequence[Sequence[int]],
    *,
    tokenizer: Any = None,
    mask_id: int | None = None,
    judge: Any = None,
    judge_tokenizer: Any = None,
    distinct: Sequence[int] = (2, 3),
) -> dict:
    """Quality of sampled token ids: unigram entropy, distinct-n and, with a judge, gen-PPL.

    Gen-PPL decodes each sample with ``tokenizer`` (mask ids dropped) and re-tokenizes for the
    judge (see :func:`generative_perplexity`).
    """
    tokens = [[int(i) for i in row] for row in tokens]
    entropies = unigram_entropies(tokens)
    kept = [v for v in entropies if v is not None]
    out: dict = {"unigram_entropy": sum(kept) / len(kept) if kept else float("nan")}
    for n in distinct:
        out[f"distinct_{n}"] = distinct_n(tokens, n)
    if judge is not None:
        if tokenizer is None or judge_tokenizer is None:
            raise ValueError("gen-PPL needs the model's tokenizer (to decode) and the judge's tokenizer")
        texts = [tokenizer.decode(row, mask_id=mask_id) for row in tokens]
        out.update(generative_perplexity(texts, judge, judge_tokenizer))
    # Per-sample values, aligned with the input order, for paired comparisons (mdlm_fast.analysis.paired).
    out["per_sample"] = {**out.get("per_sample", {}), "unigram_entropies": entropies}
    return out


def sample_seeds(samples: int, batch_size: int, seed: int) -> list[tuple[int, int]]:
    """``(seed, size)`` of each sampling batch: ``samples`` split into batches of ``batch_size``
    (the last one smaller) with seeds ``seed, seed + 1, ...``. The same seeds for every schedule
    make schedule comparisons paired: differences are the schedule's, not the noise's."""
    from mdlm_fast.sampling.many import batch_seeds

    return batch_seeds(samples, batch_size, seed)


def evaluate_schedule(
    models: Any,
    schedule: Any,
    *,
    steps: int,
    length: int,
    samples: int = 8,
    batch_size: int = 8,
    seed: int = 0,
    sampler: str = "fast",
    precision: str = "fp64",
    tokenizer: Any = None,
    judge: Any = None,
    judge_tokenizer: Any = None,
    record: dict | None = None,
    dist: Any = None,
    progress: bool = False,
    max_rows: int | None = None,
    given: Any = None,
) -> dict:
    """Sample ``samples`` sequences under ``schedule`` and measure them.

    Returns gen-PPL (with its SE over samples, when a judge is given), unigram entropy,
    distinct-2/3, the predicted block-FLOPs saving (eq. 3), executed FLOPs, sampling wall time,
    and a record of everything that produced the numbers (``record`` adds names such as the
    judge's and the models'). With a data-parallel ``dist`` context the sampling batches are
    sharded over ranks and the metrics computed from all of them on every rank (the result is
    the same as in one process: each batch depends only on its seed). The fast sampler's batches
    run all at once through one engine (``max_rows`` its row budget, None the device's default),
    each batch's tokens those of its own sample() call.
    ``given``: infilling, the tokens of ``sample(given=...)`` (the metrics then cover whole
    sequences, given tokens included).
    """
    from mdlm_fast.analysis.distributed import single_process
    from mdlm_fast.sampling import api as sampling
    from mdlm_fast.sampling.many import sample_many
    from mdlm_fast.schedules.model_schedule import ModelSchedule

    dist = dist or single_process()
    schedule = ModelSchedule.coerce(schedule, steps)
    batches = sample_seeds(samples, batch_size, seed)
    mine = dist.shard(list(enumerate(batches)))
    done = []
    through_engine = sampler == "fast" and precision == "fp64"
    if through_engine and mine:
        # All of this rank's batches in flight at once through the engine (each batch's tokens are
        # those of its own sample() call); the run's totals ride on its first batch, so that sums
        # over batches stay the totals.
        many = sample_many(
            models,
            samples=samples,
            batch_size=batch_size,
            steps=steps,
            length=length,
            schedule=schedule,
            batches=[b for _, b in mine],
            max_rows=max_rows,
            given=given,
        )
        stats = many.stats
        for k, ((index, _), tokens) in enumerate(zip(mine, many.batches)):
            first = k == 0
            done.append(
                (
                    index,
                    tokens.tolist(),
                    stats.wall_time_s if first else 0.0,
                    ((stats.executed_flops or {}).get("total") if first else 0),
                    stats.predicted_saving,
                    sum(stats.forwards) if first else 0,
                )
            )
    for index, (batch_seed, size) in [] if through_engine else mine:
        result = sampling.sample(
            models,
            steps=steps,
            batch_size=size,
            length=length,
            schedule=schedule,
            sampler=sampler,
            seed=batch_seed,
            precision=precision,
            progress=progress,
            given=given,
        )
        stats = result.stats
        done.append(
            (
                index,
                result.tokens.tolist(),
                stats.wall_time_s,
                (stats.executed_flops or {}).get("total"),
                stats.predicted_saving,
                sum(stats.forwards),
            )
        )
    merged = sorted((row for part in dist.gather(done) for row in part), key=lambda r: r[0])
    sequences = [seq for row in merged for seq in row[1]]
    flops = [row[3] for row in merged]
    mask_id = getattr(
        getattr(models[0] if isinstance(models, (list, tuple)) else models, "config", None), "mask_index", None
    )
    out = evaluate_samples(
        sequences, tokenizer=tokenizer, mask_id=mask_id, judge=judge, judge_tokenizer=judge_tokenizer
    )
    out.update(
        {
            "schedule": schedule.to_spec(),
            "light_fraction": schedule.light_fraction,
            "predicted_saving": merged[0][4],
            "executed_flops": sum(flops) if all(f is not None for f in flops) else None,
            "forwards": sum(row[5] for row in merged),
            "wall_time_s": sum(row[2] for row in merged),
            "record": {
                "sampler": sampler,
                "precision": precision,
                "steps": steps,
                "length": length,
                "samples": samples,
                "batch_size": batch_size,
                "seeds": [s for s, _ in batches],
                "tokenizer": getattr(tokenizer, "name", None),
                "judge_tokenizer": getattr(judge_tokenizer, "name", None) if judge is not None else None,
                **(record or {}),
            },
        }
    )
    return out
