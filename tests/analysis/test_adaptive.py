"""Sampling until the paired standard error meets its target: stopping rule, cap, resume."""

import math
import time
import zlib

import numpy as np
import pytest

from mdlm_fast.analysis.adaptive import evaluate_until, merge_rounds
from mdlm_fast.analysis.search import ResultsLog

ITEMS = [{"key": "heavy", "schedule": "H8"}, {"key": "q2", "schedule": "H2-L2-H4"}, {"key": "light", "schedule": "L8"}]
EFFECT = {"heavy": 0.0, "q2": 0.02, "light": 0.2}


class Rounds:
    """A stand-in for evaluate_schedule: per-sample NLLs that depend on the seed (shared across
    schedules, as common random numbers make them) plus a schedule effect and a little noise."""

    def __init__(self, noise=0.02):
        self.calls, self.noise = [], noise

    def __call__(self, item, seed, size):
        self.calls.append((item["key"], seed))
        shared = np.random.default_rng(seed).normal(5.0, 0.3, size=size)
        # crc32, not hash(): str hashes change from process to process
        own = np.random.default_rng([seed, zlib.crc32(item["key"].encode()) % 1000]).normal(0, self.noise, size=size)
        per_token = shared + EFFECT[item["key"]] + own
        sums = list(per_token * 40)
        return {
            "schedule": item["schedule"],
            "gen_ppl": math.exp(per_token.mean()),
            "per_sample": {
                "nll_sums": sums,
                "token_counts": [40] * size,
                "unigram_entropies": list(4.0 - per_token / 10),
            },
            "wall_time_s": 1.0,
            "forwards": 8,
            "executed_flops": 10.0,
            "record": {"sampler": "fast", "steps": 8, "length": 40, "seeds": [seed], "samples": size},
        }


def test_stops_when_the_paired_se_meets_the_target():
    rounds = Rounds()
    rows, status = evaluate_until(ITEMS, "heavy", rounds, batch_size=4, seed=10, target_se=0.01, max_samples=400)
    assert status["reason"] == "target" and status["worst_ratio_se"] <= 0.01
    # Own noise 0.02 nats per token on top of 0.3 shared: paired, a 1% SE needs about
    # 2 * (0.02 / 0.01)^2 = 8 samples; unpaired it would need about 2 * (0.3 / 0.01)^2 = 1800.
    assert 8 <= status["samples"] <= 24
    assert rows["light"]["paired"]["gen_ppl_ratio"] == pytest.approx(math.exp(0.2), rel=0.02)
    assert rows["q2"]["samples"] == status["samples"] == rows["heavy"]["record"]["samples"]
    assert rows["heavy"]["record"]["seeds"] == list(range(10, 10 + status["rounds"]))


def test_stops_at_the_cap_when_the_target_is_out_of_reach():
    rows, status = evaluate_until(
        ITEMS, "heavy", Rounds(noise=0.5), batch_size=4, seed=0, target_se=1e-4, max_samples=10
    )
    assert status["reason"] == "cap" and status["samples"] == 10 and status["rounds"] == 3
    assert rows["heavy"]["samples"] == 10  # the last round is cut to the cap


def test_a_resumed_run_reuses_its_log_and_stops_at_the_same_round(tmp_path):
    settings = {"study": "until", "seed": 0}
    whole, status = evaluate_until(
        ITEMS, "heavy", Rounds(noise=0.1), batch_size=2, seed=0, target_se=0.01, max_samples=200
    )
    first = Rounds(noise=0.1)
    _, part = evaluate_until(
        ITEMS,
        "heavy",
        first,
        batch_size=2,
        seed=0,
        target_se=0.01,
        max_samples=200,
        log=ResultsLog(tmp_path, "until", settings),
        deadline=time.monotonic() - 1,
    )
    assert part["reason"] == "deadline" and first.calls == []
    evaluate_until(
        ITEMS[:1],
        "heavy",
        first,
        batch_size=2,
        seed=0,
        target_se=0.5,
        max_samples=2,
        log=ResultsLog(tmp_path, "until", settings),
    )  # one round of the baseline only
    second = Rounds(noise=0.1)
    resumed, status2 = evaluate_until(
        ITEMS,
        "heavy",
        second,
        batch_size=2,
        seed=0,
        target_se=0.01,
        max_samples=200,
        log=ResultsLog(tmp_path, "until", settings),
    )
    assert ("heavy", 0) not in second.calls and ("q2", 0) in second.calls
    assert status2 == status
    assert resumed["light"]["gen_ppl"] == whole["light"]["gen_ppl"]


def test_merge_rounds_recomputes_over_all_samples():
    rounds = Rounds()
    parts = [rounds(ITEMS[0], s, 3) for s in (1, 2)]
    merged = merge_rounds(parts)
    sums = parts[0]["per_sample"]["nll_sums"] + parts[1]["per_sample"]["nll_sums"]
    assert merged["mean_nll"] == pytest.approx(sum(sums) / (40 * 6))
    assert merged["record"]["seeds"] == [1, 2] and merged["record"]["samples"] == 6
    assert merged["wall_time_s"] == 2.0 and merged["samples"] == 6


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(target_se=0), "target_se"),
        (dict(target_se=1.5), "target_se"),
        (dict(batch_size=0), "batch_size"),
        (dict(max_samples=-1), "max_samples"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    args = {**dict(batch_size=2, seed=0, target_se=0.01, max_samples=10), **kwargs}
    with pytest.raises(ValueError, match=match):
        evaluate_until(ITEMS, "heavy", Rounds(), **args)


def test_the_baseline_must_be_an_item():
    with pytest.raises(ValueError, match="baseline 'nope'"):
        evaluate_until(ITEMS, "nope", Rounds(), batch_size=2, seed=0, target_se=0.01, max_samples=4)


def test_a_deadline_inside_a_round_reports_the_complete_rounds(tmp_path):
    settings = {"study": "until"}
    log = ResultsLog(tmp_path, "until", settings)
    evaluate_until(ITEMS[:2], "heavy", Rounds(), batch_size=2, seed=0, target_se=1e-6, max_samples=4, log=log)
    # Two rounds of two items are logged; the third item has none, so a run stopped by its
    # deadline before sampling it has no complete round to report.
    rows, status = evaluate_until(
        ITEMS,
        "heavy",
        Rounds(),
        batch_size=2,
        seed=0,
        target_se=1e-6,
        max_samples=4,
        log=ResultsLog(tmp_path, "until", settings),
        deadline=time.monotonic() - 1,
    )
    assert status["reason"] == "deadline" and rows == {}
