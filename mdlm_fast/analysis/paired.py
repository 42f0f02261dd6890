"""Paired comparisons of two schedules sampled with common random numbers.

Every schedule is sampled with the same seeds, and the RNG is counter-based, so sample ``i`` of
schedule A and sample ``i`` of schedule B share their reveal plan and every uniform: only the model
that ran at some steps differs. Their metrics are strongly correlated, and the per-sample
*difference* has a far smaller variance than the difference of two independent means.

Two kinds of statistic, each with a standard error and a 95% interval:

* :func:`paired_ratio_difference` -- the difference of two token-weighted means (the judge's mean
  NLL per token, whose exp is gen-PPL): ``D = sum(a_i) / sum(n_i) - sum(b_i) / sum(m_i)``. Its SE is
  the delta method applied jointly to both ratio estimators: with per-sample influences
  ``z_i = (a_i - A n_i) / n_bar - (b_i - B m_i) / m_bar`` it is ``sd(z) / sqrt(k)``. ``exp(D)`` is the
  gen-PPL ratio, and ``exp`` of the interval bounds is its interval.
* :func:`paired_mean_difference` -- the mean of per-sample differences of a per-sample metric
  (unigram entropy), with SE ``sd(d) / sqrt(k)``.

Intervals come from a paired bootstrap over samples (pairs resampled together, percentile
interval, a fixed generator seed so a rerun prints the same interval), beside the normal
approximation ``estimate +- 1.96 SE``.

Equation numbers (eq. 3-8) are those of arXiv:2604.02340 (Sedykh, Sorokin, Malykh 2026), which
docs/design.md keeps.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import numpy as np

__all__ = [
    "PairedDifference",
    "paired_ratio_difference",
    "paired_mean_difference",
    "gen_ppl_ratio",
    "unpaired_se",
    "compare_rows",
    "segment_score_se",
    "BOOTSTRAP_SEED",
]

#: Generator seed of the bootstrap: reruns print the same intervals.
BOOTSTRAP_SEED = 20240
_Z95 = 1.959963984540054


@dataclass(frozen=True)
class PairedDifference:
    """A paired difference A - B over ``samples`` pairs."""

    estimate: float
    se: float
    ci_low: float  # paired bootstrap, 95% percentile interval
    ci_high: float
    normal_ci_low: float  # estimate -+ 1.96 se
    normal_ci_high: float
    samples: int

    def decides(self) -> bool:
        """The bootstrap interval excludes zero: the data tell A and B apart."""
        return self.ci_low > 0 or self.ci_high < 0

    def as_dict(self, prefix: str = "") -> dict:
        return {prefix + k: v for k, v in asdict(self).items()}


def _check_pairs(name: str, *columns: Sequence[float]) -> list[np.ndarray]:
    arrays = [np.asarray(c, dtype=np.float64) for c in columns]
    lengths = {a.shape for a in arrays}
    if len(lengths) != 1 or arrays[0].ndim != 1:
        raise ValueError(
            f"{name}: the paired columns must be 1-D and of one length, got shapes {[a.shape for a in arrays]}"
        )
    if arrays[0].size < 2:
        raise ValueError(f"{name}: a paired standard error needs at least 2 pairs, got {arrays[0].size}")
    for a in arrays:
        if not np.isfinite(a).all():
            raise ValueError(f"{name}: the paired columns must be finite")
    return arrays


def _bootstrap_indices(k: int, resamples: int, seed: int) -> np.ndarray:
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 100:
        raise ValueError(f"resamples must be an int >= 100, got {resamples!r}")
    return np.random.default_rng(seed).integers(0, k, size=(resamples, k))


def _result(estimate: float, se: float, boot: np.ndarray, k: int) -> PairedDifference:
    low, high = np.quantile(boot, [0.025, 0.975])
    return PairedDifference(
        float(estimate), float(se), float(low), float(high), float(estimate - _Z95 * se), float(estimate + _Z95 * se), k
    )


def paired_ratio_difference(
    a_sums: Sequence[float],
    a_counts: Sequence[float],
    b_sums: Sequence[float],
    b_counts: Sequence[float],
    *,
    resamples: int = 2000,
    seed: int = BOOTSTRAP_SEED,
) -> PairedDifference:
    """``sum(a_sums)/sum(a_counts) - sum(b_sums)/sum(b_counts)`` over paired samples, with its
    delta-method SE and a paired bootstrap interval (see the module doc). Counts must be positive."""
    a, n, b, m = _check_pairs("paired_ratio_difference", a_sums, a_counts, b_sums, b_counts)
    if (n <= 0).any() or (m <= 0).any():
        raise ValueError("paired_ratio_difference: token counts must be positive")
    k = a.size
    mean_a, mean_b = a.sum() / n.sum(), b.sum() / m.sum()
    influence = (a - mean_a * n) / n.mean() - (b - mean_b * m) / m.mean()
    se = influence.std(ddof=1) / math.sqrt(k)
    idx = _bootstrap_indices(k, resamples, seed)
    boot = a[idx].sum(1) / n[idx].sum(1) - b[idx].sum(1) / m[idx].sum(1)
    return _result(mean_a - mean_b, se, boot, k)


def paired_mean_difference(
    a: Sequence[float], b: Sequence[float], *, resamples: int = 2000, seed: int = BOOTSTRAP_SEED
) -> PairedDifference:
    """Mean of ``a_i - b_i`` with SE ``sd / sqrt(k)`` and a paired bootstrap interval."""
    a_arr, b_arr = _check_pairs("paired_mean_difference", a, b)
    d = a_arr - b_arr
    k = d.size
    idx = _bootstrap_indices(k, resamples, seed)
    return _result(d.mean(), d.std(ddof=1) / math.sqrt(k), d[idx].mean(1), k)


def gen_ppl_ratio(nll_difference: PairedDifference) -> dict:
    """gen-PPL(A) / gen-PPL(B) = exp(D) from a paired mean-NLL difference, with its intervals and
    the delta-method SE ``exp(D) * se(D)``."""
    d = nll_difference
    ratio = math.exp(d.estimate)
    return {
        "gen_ppl_ratio": ratio,
        "gen_ppl_ratio_se": ratio * d.se,
        "gen_ppl_ratio_ci_low": math.exp(d.ci_low),
        "gen_ppl_ratio_ci_high": math.exp(d.ci_high),
    }


def unpaired_se(se_a: float, se_b: float) -> Optional[float]:
    """SE of a difference of two independent estimates: what the pairing is compared against."""
    if not (math.isfinite(se_a) and math.isfinite(se_b)):
        return None
    return math.hypot(se_a, se_b)


# --------------------------------------------------------------------------------------------
# Rows of evaluate_schedule / the searches: a schedule against a baseline schedule
# --------------------------------------------------------------------------------------------


def _pairing_key(row: dict) -> tuple:
    record = row.get("record") or {}
    return tuple(
        tuple(v) if isinstance(v, list) else v
        for v in (record.get(k) for k in ("sampler", "precision", "steps", "length", "seeds", "samples"))
    )


def compare_rows(row: dict, baseline: dict) -> dict:
    """Paired columns of ``row`` against ``baseline`` (two results of
    :func:`mdlm_fast.analysis.metrics.evaluate_schedule` with the same seeds): the mean-NLL difference and the
    gen-PPL ratio with their SE and 95% intervals, the unigram-entropy difference, and the unpaired
    SE of the gen-PPL difference beside them. Raises when the two were not sampled with the same
    sampler, steps, length and seeds (then they are not paired)."""
    if _pairing_key(row) != _pairing_key(baseline):
        raise ValueError(
            "rows are paired only when sampled with the same sampler, precision, steps, "
            f"length and seeds: {_pairing_key(row)} vs {_pairing_key(baseline)}"
        )
    out: dict = {"baseline": baseline.get("schedule")}
    a, b = row.get("per_sample") or {}, baseline.get("per_sample") or {}
    if "nll_sums" in a and "nll_sums" in b:
        pairs = [
            (sa, na, sb, nb)
            for sa, na, sb, nb in zip(a["nll_sums"], a["token_counts"], b["nll_sums"], b["token_counts"])
            if sa is not None and sb is not None
        ]
        if len(pairs) >= 2:
            d = paired_ratio_difference(*zip(*pairs))
            out.update(d.as_dict("nll_diff_"))
            out.update(gen_ppl_ratio(d))
            out["gen_ppl_diff_unpaired_se"] = unpaired_se(
                row.get("gen_ppl_se", float("nan")), baseline.get("gen_ppl_se", float("nan"))
            )
    if "unigram_entropies" in a and "unigram_entropies" in b:
        entropy_pairs = [
            (x, y) for x, y in zip(a["unigram_entropies"], b["unigram_entropies"]) if x is not None and y is not None
        ]
        if len(entropy_pairs) >= 2:
            out.update(paired_mean_difference(*zip(*entropy_pairs)).as_dict("entropy_diff_"))
    return out


def segment_score_se(rows: Sequence[dict], n_segments: int) -> list[float]:
    """Paired standard error of each eq. 8 segment score of gen-PPL (see search.segment_scores).

    A score is a fixed linear combination of the schedules' gen-PPLs, and every schedule was
    sampled with the same seeds, so its SE comes from the per-sample influences summed across
    schedules: ``z_i = sum_s c_s * ppl_s * (a_si - A_s n_si) / n_bar_s``, ``se = sd(z) / sqrt(k)``.
    Shared noise cancels inside ``z_i``. NaN for a segment no schedule puts light."""
    usable = [r for r in rows if (r.get("per_sample") or {}).get("nll_sums") is not None and "light_segments" in r]
    if not usable:
        raise ValueError("segment_score_se needs rows with per-sample NLLs and light_segments")
    keys = {_pairing_key(r) for r in usable}
    if len(keys) != 1:
        raise ValueError("segment_score_se needs rows sampled with the same seeds (paired)")
    per_schedule = []
    for r in usable:
        sums = np.array([np.nan if v is None else v for v in r["per_sample"]["nll_sums"]], dtype=np.float64)
        counts = np.array([np.nan if v is None else v for v in r["per_sample"]["token_counts"]], dtype=np.float64)
        ok = np.isfinite(sums)
        mean = sums[ok].sum() / counts[ok].sum()
        infl = np.where(ok, (sums - mean * counts) / counts[ok].mean(), 0.0)
        per_schedule.append(math.exp(mean) * infl)
    influences = np.stack(per_schedule)  # [schedules, samples]
    k = influences.shape[1]
    if k < 2:
        raise ValueError("segment_score_se needs at least 2 samples per schedule")
    overall = influences.mean(0)
    out = []
    for seg in range(n_segments):
        using = [i for i, r in enumerate(usable) if seg in r["light_segments"]]
        if not using:
            out.append(float("nan"))
            continue
        z = influences[using].mean(0) - overall
        out.append(float(z.std(ddof=1) / math.sqrt(k)))
    return out
