"""Evaluation and analysis on constructed inputs with known answers: gen-PPL, importance (eq. 6/7),
segment scores (eq. 8), resumable search, calibration.

Equation numbers (eq. 3-8) are those of arXiv:2604.02340 (Sedykh, Sorokin, Malykh 2026), which
docs/design.md keeps.
"""

import json
import math
import random
from types import SimpleNamespace

import pytest
import torch

import mdlm_fast as mf
from mdlm_fast.analysis import calibrate as cal
from mdlm_fast.analysis import metrics as ev
from mdlm_fast.analysis import search
from mdlm_fast.analysis.distributed import DistContext, from_env
from mdlm_fast.analysis.importance import ImportancePoint, ImportanceProfile, corrupt, default_t_grid, step_importance
from mdlm_fast.analysis.judge import nll
from mdlm_fast.models.dit import subs_log_probs
from mdlm_fast.schedules.noise import LogLinearNoise
from tests.helpers.text_helpers import FixedJudge, IdTokenizer

# --------------------------------------------------------------------------------------------
# Helpers: tiny models, a judge with known probabilities, a text <-> id tokenizer
# --------------------------------------------------------------------------------------------


def tiny_dit(n_blocks, seed, vocab=6, length=8, scale=0.5):
    config = mf.DiTConfig(
        hidden_dim=16, n_heads=2, n_blocks=n_blocks, cond_dim=8, vocab_size=vocab, model_length=length
    )
    return mf.DiT(config).init_random_(seed, std=scale).eval()


PROBS = [0.1, 0.2, 0.3, 0.15, 0.2499, 0.0001]  # sums to 1; id 5 = the tiny models' mask id


# --------------------------------------------------------------------------------------------
# eval: gen-PPL, diversity, records
# --------------------------------------------------------------------------------------------


def test_evaluate_samples_matches_the_analytic_perplexity_and_diversity():
    tokens = [[1, 2, 5, 3], [4, 4]]  # the mask id 5 is dropped before scoring
    out = ev.evaluate_samples(
        tokens, tokenizer=IdTokenizer(), mask_id=5, judge=FixedJudge(PROBS), judge_tokenizer=IdTokenizer()
    )
    scored = [1, 2, 3, 4, 4]
    mean_nll = -sum(math.log(PROBS[i]) for i in scored) / len(scored)
    assert out["tokens"] == 5 and out["samples"] == 2
    assert out["gen_ppl"] == pytest.approx(math.exp(mean_nll))
    assert out["unigram_entropy"] == pytest.approx((math.log(4) + 0.0) / 2)
    assert out["distinct_2"] == pytest.approx(4 / 4) and out["distinct_3"] == pytest.approx(2 / 2)
    same = ev.evaluate_samples(
        [[2, 2], [2, 2, 2]], tokenizer=IdTokenizer(), judge=FixedJudge(PROBS), judge_tokenizer=IdTokenizer()
    )
    assert same["gen_ppl"] == pytest.approx(1 / 0.3) and same["gen_ppl_se"] == pytest.approx(0, abs=1e-12)
    no_judge = ev.evaluate_samples(tokens)
    assert "gen_ppl" not in no_judge and no_judge["unigram_entropy"] == out["unigram_entropy"]


def test_hf_judge_adapter_scores_like_the_wrapped_model():
    class FakeHF(torch.nn.Module):  # the transformers interface: config + forward(input_ids=).logits
        config = SimpleNamespace(vocab_size=len(PROBS), n_positions=4, eos_token_id=0)

        def forward(self, input_ids):
            return SimpleNamespace(logits=torch.log(torch.tensor(PROBS)).expand(*input_ids.shape, -1))

    judge = ev.HFJudge(FakeHF())
    assert judge.config.max_length == 4 and judge.config.vocab_size == len(PROBS)
    ids = torch.tensor([[1, 2, 3, 4, 1, 2, 3]])  # longer than max_length: nll slides its window
    expected = torch.tensor([-math.log(PROBS[i]) for i in [1, 2, 3, 4, 1, 2, 3]])
    assert torch.allclose(nll(judge, ids, bos_id=0)[0], expected.float())


def test_sample_seeds_split_batches_and_reject_bad_sizes():
    assert ev.sample_seeds(10, 4, 7) == [(7, 4), (8, 4), (9, 2)]
    with pytest.raises(ValueError, match="samples"):
        ev.sample_seeds(0, 4, 0)


def test_evaluate_schedule_is_deterministic_and_records_its_inputs():
    models = [tiny_dit(2, 0), tiny_dit(1, 1)]
    kwargs = dict(
        steps=4,
        length=6,
        samples=5,
        batch_size=2,
        seed=3,
        tokenizer=IdTokenizer(),
        judge=FixedJudge(PROBS),
        judge_tokenizer=IdTokenizer(),
        record={"judge": "fixed"},
    )
    a = ev.evaluate_schedule(models, "L1-H2-L1", **kwargs)
    b = ev.evaluate_schedule(models, "L1-H2-L1", **kwargs)
    for key in ("gen_ppl", "gen_ppl_se", "unigram_entropy", "distinct_2", "executed_flops", "tokens"):
        assert a[key] == b[key]
    assert a["record"]["seeds"] == [3, 4, 5] and a["record"]["samples"] == 5 and a["record"]["judge"] == "fixed"
    assert a["record"]["precision"] == "fp64" and a["record"]["steps"] == 4 and a["record"]["sampler"] == "fast"
    assert a["predicted_saving"] == pytest.approx(0.5 * (1 - 1 / 2)) and a["schedule"] == "L1-H2-L1"
    # the samples are exactly those of the individual seeded batches
    direct = [
        row
        for s, n in [(3, 2), (4, 2), (5, 1)]
        for row in mf.sample(
            models, steps=4, batch_size=n, length=6, schedule="L1-H2-L1", sampler="fast", seed=s
        ).tokens.tolist()
    ]
    again = ev.evaluate_samples(
        direct, tokenizer=IdTokenizer(), mask_id=5, judge=FixedJudge(PROBS), judge_tokenizer=IdTokenizer()
    )
    assert again["gen_ppl"] == pytest.approx(a["gen_ppl"]) and again["unigram_entropy"] == a["unigram_entropy"]


# --------------------------------------------------------------------------------------------
# importance: eq. 6 / 7
# --------------------------------------------------------------------------------------------


def _windows(n=5, length=8, vocab=6, seed=0):
    return torch.randint(0, vocab - 1, (n, length), generator=torch.Generator().manual_seed(seed))


def test_importance_of_a_model_against_itself_is_zero():
    heavy = tiny_dit(2, 0)
    profile = step_importance(heavy, heavy, _windows(), [0.3, 0.9], heavy_twin=heavy)
    for p in profile.points:
        assert p.kl == pytest.approx(0, abs=1e-6) and p.ce_abs_diff == pytest.approx(0, abs=1e-6)
        assert p.ce_heavy == pytest.approx(p.ce_light) and p.masked_tokens > 0
    assert profile.normalized


def test_importance_matches_a_direct_computation():
    heavy, light, other = tiny_dit(2, 0), tiny_dit(1, 1), tiny_dit(2, 2)
    windows, t, seed = _windows(), 0.6, 4
    profile = step_importance(heavy, light, windows, [0.2, t], heavy_twin=other, seed=seed, batch_size=2)
    # the same corruption, recomputed: grid point k draws from derive_seed(seed, "importance", k)
    from mdlm_fast.text.data import derive_seed

    xt, masked = corrupt(windows, t, 5, torch.Generator().manual_seed(derive_seed(seed, "importance", 1)))
    sigma = torch.full((windows.shape[0],), LogLinearNoise().sigma(t))
    with torch.no_grad():
        lp = {
            name: subs_log_probs(m(xt, sigma), xt, 5)[masked].double()
            for name, m in (("h", heavy), ("l", light), ("o", other))
        }
    ph = lp["h"].exp()
    kl = (ph * (lp["h"] - lp["l"]).nan_to_num(0.0, 0.0, 0.0)).sum(-1).mean()
    kl_ref = (ph * (lp["h"] - lp["o"]).nan_to_num(0.0, 0.0, 0.0)).sum(-1).mean()
    target = windows[masked]
    ce = {k: -v.gather(1, target[:, None]).squeeze(1) for k, v in lp.items()}
    point = profile.points[1]
    assert point.t == t and point.masked_tokens == int(masked.sum())
    assert point.kl == pytest.approx(float(kl), rel=1e-4)
    assert point.kl_ref == pytest.approx(float(kl_ref), rel=1e-4)
    assert point.ce_heavy == pytest.approx(float(ce["h"].mean()), rel=1e-5)
    assert point.ce_abs_diff == pytest.approx(float((ce["l"] - ce["h"]).abs().mean()), rel=1e-4)
    assert point.ce_diff == pytest.approx(float((ce["l"] - ce["h"]).mean()), rel=1e-4, abs=1e-6)
    assert point.kl_normalized == pytest.approx(point.kl / point.kl_ref)
    # the corruption at t does not depend on the batch size or the rest of the grid
    alone = step_importance(heavy, light, windows, [0.9, t], heavy_twin=other, seed=seed, batch_size=5)
    assert alone.points[1].kl == pytest.approx(point.kl, rel=1e-6)


def test_importance_profile_round_trips_and_refuses_missing_normalizer():
    profile = step_importance(tiny_dit(2, 0), tiny_dit(1, 1), _windows(), default_t_grid(3))
    assert profile.ts == pytest.approx([1 / 6, 0.5, 5 / 6]) and not profile.normalized
    with pytest.raises(ValueError, match="heavy twin"):
        profile.values("kl_normalized")
    back = ImportanceProfile.from_dict(json.loads(json.dumps(profile.as_dict())))
    assert back.values("kl") == profile.values("kl")
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        step_importance(tiny_dit(2, 0), tiny_dit(1, 1), _windows(), [0.0])


# --------------------------------------------------------------------------------------------
# Segment scores (eq. 8) and frequencies
# --------------------------------------------------------------------------------------------


def _rows(choices, ppl):
    return [{"key": f"segments:{c}", "light_segments": list(c), "gen_ppl": ppl(c)} for c in choices]


def test_segment_scores_match_a_hand_computation():
    rows = [
        {"key": "a", "light_segments": [0, 1], "gen_ppl": 10.0},
        {"key": "b", "light_segments": [1, 2], "gen_ppl": 20.0},
        {"key": "c", "light_segments": [0, 2], "gen_ppl": 30.0},
    ]
    mean = 20.0
    scores = search.segment_scores(rows, 4)
    # segment 0 is light in a and c, 1 in a and b, 2 in b and c
    assert scores[:3] == pytest.approx([20 - mean, 15 - mean, 25 - mean])
    assert math.isnan(scores[3])  # no schedule puts segment 3 light


def test_segment_scores_sum_to_zero():
    rng = random.Random(0)
    full = _rows(search.all_segment_choices(10, 4), lambda c: rng.uniform(20, 80))
    assert len(full) == 210
    assert sum(search.segment_scores(full, 10)) == pytest.approx(0, abs=1e-9)
    # an incomplete set: the sum weighted by how many schedules use each segment is still zero
    part = rng.sample(full, 37)
    scores = search.segment_scores(part, 10)
    weights = [sum(1 for r in part if k in r["light_segments"]) for k in range(10)]
    assert sum(w * s for w, s in zip(weights, scores) if w) == pytest.approx(0, abs=1e-9)


def test_ranking_and_segment_frequency():
    # gen-PPL grows with the index of the latest light segment: early light is best
    rows = _rows(search.all_segment_choices(5, 2), lambda c: 10.0 * max(c) + min(c))
    order = search.ranked(rows)
    assert [r["key"] for r in order[:2]] == ["segments:(0, 1)", "segments:(0, 2)"]
    top, bottom = search.segment_frequency(rows, 5, top=3)
    # best 3: (0,1), (0,2), (1,2); worst 3: (2,4), (3,4) and (1,4)
    assert top == [2, 2, 2, 0, 0] and bottom == [0, 1, 1, 1, 3]
    scores = search.segment_scores(rows, 5)
    assert scores[4] == max(scores) and scores[0] == min(scores)


# --------------------------------------------------------------------------------------------
# Resumable search
# --------------------------------------------------------------------------------------------

SETTINGS = {"steps": 20, "seed": 0}


def _fake_evaluate(calls):
    def evaluate(item):
        calls.append(item["key"])
        return {"gen_ppl": 10.0 + sum(s * s for s in item["light_segments"]), "predicted_saving": 0.3}

    return evaluate


def test_interrupted_search_resumes_evaluating_each_schedule_once(tmp_path):
    items = search.exhaustive_items(20, 10, 4)
    reference_rows, complete = search.run_items(items, _fake_evaluate([]), None)
    assert complete and len(reference_rows) == 210

    calls = []
    evaluate = _fake_evaluate(calls)

    def crashing(item):
        if len(calls) == 17:
            raise KeyboardInterrupt  # a kill after 17 finished schedules
        return evaluate(item)

    log = search.ResultsLog(tmp_path, "exhaustive", SETTINGS)
    with pytest.raises(KeyboardInterrupt):
        search.run_items(items, crashing, log)
    assert len(log.load()) == 17
    with open(log.path, "a") as f:  # and a line torn by the kill
        f.write('{"key": "segments:9,')
    rows, complete = search.run_items(items, evaluate, log, max_new=50)
    assert not complete and len(rows) == 67
    rows, complete = search.run_items(items, evaluate, search.ResultsLog(tmp_path, "exhaustive", SETTINGS))
    assert complete and sorted(calls) == sorted(i["key"] for i in items)  # each exactly once
    assert rows == reference_rows


def test_results_log_refuses_other_settings(tmp_path):
    log = search.ResultsLog(tmp_path, "exhaustive", SETTINGS)
    log.append({"key": "x", "gen_ppl": 1.0})
    with pytest.raises(ValueError, match="steps"):
        search.ResultsLog(tmp_path, "exhaustive", {**SETTINGS, "steps": 40}).load()


def test_study_items():
    assert [i["key"] for i in search.placement_items(8, 0.25)] == [
        "heavy",
        "q1:0.25",
        "q2:0.25",
        "q3:0.25",
        "q4:0.25",
        "sandwich:0.25",
        "light",
    ]
    assert search.placement_items(8, 0.25)[2]["schedule"] == "H2-L2-H4"
    sweep = search.fraction_items(10, [0, 0.5, 1])
    assert [i["schedule"] for i in sweep] == ["H10", "L3-H5-L2", "L10"]
    sizes = search.light_size_items(10, ["a", "b"], [0.5])
    assert [(i["key"], i["light"]) for i in sizes] == [("a@sandwich:0.5", 0), ("b@sandwich:0.5", 1)]


def test_single_process_context_shards_nothing():
    with from_env() as dist:
        assert dist.rank == 0 and dist.world_size == 1 and dist.gather(3) == [3]
    assert DistContext(rank=1, world_size=3).shard(list(range(8))) == [1, 4, 7]


# --------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------


def _profile(fn, n=20):
    ts = default_t_grid(n)
    return ImportanceProfile(
        [
            ImportancePoint(t=t, masked_tokens=1, ce_heavy=0, ce_light=0, ce_abs_diff=fn(t), ce_diff=0, kl=fn(t))
            for t in ts
        ]
    )


def test_calibration_picks_the_lowest_divergence_segments_within_budget():
    # divergence is largest in the middle of the trajectory (t near 0.5): the ends go light
    profile = _profile(lambda t: 1.0 - abs(t - 0.5))
    chosen = cal.calibrate(profile, 40, block_counts=[8, 2], n_light=4)
    assert chosen.light_segments == [0, 1, 8, 9]
    assert chosen.schedule.to_spec() == "L8-H24-L8"
    assert chosen.predicted_saving == pytest.approx(0.4 * 0.75)
    div = chosen.segment_divergence
    assert max(div[k] for k in chosen.light_segments) <= min(
        div[k] for k in range(10) if k not in chosen.light_segments
    )
    # a FLOPs budget: the fewest lowest-divergence segments reaching the required saving
    for saving in (0.0, 0.1, 0.3, 0.31, 0.75):
        c = cal.calibrate(profile, 40, block_counts=[8, 2], saving=saving)
        assert c.predicted_saving >= saving - 1e-12
        assert c.predicted_saving - 0.075 < saving + 1e-12  # one segment fewer would not reach it
    with pytest.raises(ValueError, match="saving"):
        cal.calibrate(profile, 40, block_counts=[8, 2], saving=0.8)
    with pytest.raises(ValueError, match="exactly one"):
        cal.calibrate(profile, 40, block_counts=[8, 2])


def test_calibration_follows_the_profile_direction():
    late = cal.calibrate(_profile(lambda t: t), 20, block_counts=[8, 2], n_light=3)  # low divergence at small t
    assert late.light_segments == [7, 8, 9]
    early = cal.calibrate(_profile(lambda t: 1 - t), 20, block_counts=[8, 2], n_light=3)
    assert early.light_segments == [0, 1, 2]


def test_compare_with_search():
    rows = [
        {"key": "a", "schedule": "L1-H3", "gen_ppl": 30.0, "predicted_saving": 0.25},
        {"key": "b", "schedule": "H3-L1", "gen_ppl": 20.0, "predicted_saving": 0.25},
        {"key": "c", "schedule": "L2-H2", "gen_ppl": 10.0, "predicted_saving": 0.5},
    ]
    comp = cal.compare_with_search({"schedule": "L1-H3", "predicted_saving": 0.25, "gen_ppl": 30.0}, rows)
    assert comp["searched_at_same_budget"] == 2 and comp["best_searched"]["key"] == "b"
    assert comp["calibrated_rank"] == 2 and comp["gen_ppl_minus_best"] == pytest.approx(10.0)
