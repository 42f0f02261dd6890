"""Sample counts chosen by the standard error: sample schedules until their paired comparison
against a baseline is as precise as asked, or a sample cap is reached.

Sampling proceeds in rounds. Round ``r`` samples ``batch_size`` sequences under every schedule and
the baseline with the same seed ``seed + r`` (common random numbers, see :mod:`mdlm_fast.analysis.paired`).
After each round, the paired standard error of every schedule's gen-PPL ratio to the baseline is
computed over all rounds so far; sampling stops once the largest of them is at most
``target_se`` (a relative error: 0.01 = 1% of gen-PPL), or when ``max_samples`` are reached.

Every finished (schedule, round) is appended to a :class:`mdlm_fast.analysis.search.ResultsLog` with its
per-sample values, so a killed or time-limited run continues where it stopped when rerun with the
same settings; the stopping rule sees the same numbers either way, so a resumed run stops at the
same round as an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Sequence

from mdlm_fast.analysis.paired import compare_rows

__all__ = ["merge_rounds", "evaluate_until"]


def merge_rounds(rounds: Sequence[dict]) -> dict:
    """One schedule's row from its per-round rows (same schedule, consecutive seeds): per-sample
    values concatenated, gen-PPL and its SE recomputed over all samples, costs summed. Distinct-n
    pools n-grams over samples, which per-round rows cannot give back, so it is left out."""
    from mdlm_fast.analysis.metrics import _ratio_se

    if not rounds:
        raise ValueError("merge_rounds needs at least one round")
    per: dict = {}
    for r in rounds:
        for name, values in (r.get("per_sample") or {}).items():
            per.setdefault(name, []).extend(values)
    first = rounds[0]
    out = {k: first[k] for k in ("schedule", "light_fraction", "predicted_saving") if k in first}
    out["per_sample"] = per
    entropies = [v for v in per.get("unigram_entropies", []) if v is not None]
    out["unigram_entropy"] = sum(entropies) / len(entropies) if entropies else float("nan")
    pairs = [(s, n) for s, n in zip(per.get("nll_sums", []), per.get("token_counts", [])) if s is not None]
    if pairs:
        sums, counts = zip(*pairs)
        mean, se = _ratio_se(sums, counts)
        ppl = math.exp(mean)
        out.update(
            {
                "gen_ppl": ppl,
                "gen_ppl_se": ppl * se,
                "mean_nll": mean,
                "mean_nll_se": se,
                "tokens": int(sum(counts)),
                "samples": len(counts),
            }
        )
    for name in ("wall_time_s", "forwards", "executed_flops"):
        values = [r.get(name) for r in rounds]
        out[name] = sum(values) if all(v is not None for v in values) else None
    record = dict(first.get("record") or {})
    record["seeds"] = [s for r in rounds for s in (r.get("record") or {}).get("seeds", [])]
    record["samples"] = sum((r.get("record") or {}).get("samples", 0) for r in rounds)
    record["rounds"] = len(rounds)
    out["record"] = record
    return out


def _worst_ratio_se(rows: dict, baseline_key: str) -> float:
    worst = 0.0
    for key, row in rows.items():
        if key == baseline_key:
            continue
        paired = compare_rows(row, rows[baseline_key])
        se = paired.get("gen_ppl_ratio_se")
        if se is None or not math.isfinite(se):
            return math.inf
        worst = max(worst, se / paired["gen_ppl_ratio"])
    return worst


def evaluate_until(
    items: Sequence[dict],
    baseline_key: str,
    evaluate_round: Callable[[dict, int, int], dict],
    *,
    batch_size: int,
    seed: int,
    target_se: float,
    max_samples: int,
    log: Any = None,
    deadline: float | None = None,
    min_rounds: int = 2,
) -> tuple[dict, dict]:
    """Sample ``items`` (work items with unique ``key`` and a ``schedule``; one of them is
    ``baseline_key``) round by round until the largest paired relative SE of a gen-PPL ratio to
    the baseline is at most ``target_se`` or ``max_samples`` per schedule are reached.

    ``evaluate_round(item, seed, size)`` returns one round's row for an item (for example
    :func:`mdlm_fast.analysis.metrics.evaluate_schedule` with ``samples=batch_size=size``). Returns
    ``(rows by key, status)``: merged rows with the paired columns against the baseline, and
    ``{"rounds", "samples", "worst_ratio_se", "reason"}`` with reason ``"target"``, ``"cap"`` or
    ``"deadline"`` (rerun to continue).
    """
    for name, value in (("batch_size", batch_size), ("max_samples", max_samples), ("min_rounds", min_rounds)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not (isinstance(target_se, (int, float)) and 0 < target_se < 1):
        raise ValueError(f"target_se must be a relative standard error in (0, 1), got {target_se!r}")
    keys = [item["key"] for item in items]
    if len(set(keys)) != len(keys):
        raise ValueError("work item keys must be unique")
    if baseline_key not in keys:
        raise ValueError(f"baseline {baseline_key!r} is not one of the items {keys}")
    done = log.load() if log is not None else {}
    per_round: dict[str, list[dict]] = {k: [] for k in keys}
    rounds, samples, reason, worst = 0, 0, "cap", math.inf
    while samples < max_samples:
        size = min(batch_size, max_samples - samples)
        for item in items:
            round_key = f"{item['key']}@round{rounds}"
            row = done.get(round_key)
            if row is None:
                if deadline is not None and time.monotonic() > deadline:
                    return _finish(per_round, baseline_key), {
                        "rounds": rounds,
                        "samples": samples,
                        "worst_ratio_se": worst,
                        "reason": "deadline",
                    }
                row = {
                    **item,
                    **evaluate_round(item, seed + rounds, size),
                    "key": round_key,
                    "item": item["key"],
                    "round": rounds,
                }
                if log is not None:
                    log.append(row)
            per_round[item["key"]].append(row)
        rounds += 1
        samples += size
        if rounds >= min_rounds:
            worst = _worst_ratio_se({k: merge_rounds(v) for k, v in per_round.items()}, baseline_key)
            if worst <= target_se:
                reason = "target"
                break
    return _finish(per_round, baseline_key), {
        "rounds": rounds,
        "samples": samples,
        "worst_ratio_se": worst,
        "reason": reason,
    }


def _finish(per_round: dict, baseline_key: str) -> dict:
    # A deadline can stop a round half done: report the rounds every schedule finished, which
    # are the ones whose samples pair up.
    complete = min(len(v) for v in per_round.values())
    rows = {k: merge_rounds(v[:complete]) for k, v in per_round.items() if complete}
    if baseline_key in rows:
        for key, row in rows.items():
            row.update({"paired": compare_rows(row, rows[baseline_key])} if key != baseline_key else {})
    return rows
