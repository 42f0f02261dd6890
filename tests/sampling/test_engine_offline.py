"""Offline throughput through the engine: ``sample_many``, ``generate --num-samples`` and
``evaluate_schedule`` return exactly the tokens of one sample() call per batch (seeds seed + k)."""

import hashlib
import json

import pytest
import torch

import mdlm_fast as mf
from mdlm_fast.analysis.metrics import evaluate_samples, evaluate_schedule
from mdlm_fast.cli.app import main
from mdlm_fast.sampling.many import batch_seeds, sample_many

LENGTH, STEPS = 16, 8


@pytest.fixture(scope="module")
def embedded():
    return [mf.load_denoiser("embedded:heavy"), mf.load_denoiser("embedded:light")]


def _digest(tokens) -> str:
    return hashlib.sha256(torch.as_tensor(tokens, dtype=torch.int64).numpy().tobytes()).hexdigest()


def _batch_by_batch(models, samples, batch_size, seed, **kw):
    return torch.cat(
        [
            mf.sample(models, steps=STEPS, batch_size=size, length=LENGTH, seed=s, **kw).tokens
            for s, size in batch_seeds(samples, batch_size, seed)
        ]
    )


def test_sample_many_equals_one_sample_call_per_batch(embedded):
    many = sample_many(
        embedded,
        samples=5,
        batch_size=2,
        steps=STEPS,
        length=LENGTH,
        schedule="sandwich:0.25",
        seed=11,
        max_rows=3,
        prefix=[1, 2],
    )
    want = _batch_by_batch(embedded, 5, 2, 11, schedule="sandwich:0.25", prefix=[1, 2])
    assert _digest(many.tokens) == _digest(want)
    assert [b.shape[0] for b in many.batches] == [2, 2, 1]
    assert many.stats.batch_size == 5 and many.engine["max_rows"] == 3
    assert 1 <= many.engine["rows_per_forward"] <= 3
    assert many.stats.executed_flops["total"] > 0 and sum(many.stats.forwards) == sum(many.engine["forwards"])


def test_generate_num_samples_equals_the_batches_it_names(capsys):
    common = ["generate", "--steps", str(STEPS), "--length", str(LENGTH), "--judge", "none", "--json", "--seed", "4"]
    assert main([*common, "--batch-size", "2"]) == 0
    today = [s["tokens"] for s in json.loads(capsys.readouterr().out)["samples"]]
    assert main([*common, "--batch-size", "2", "--num-samples", "2", "--max-rows", "3"]) == 0
    one_batch = json.loads(capsys.readouterr().out)
    assert _digest([s["tokens"] for s in one_batch["samples"]]) == _digest(today)
    assert one_batch["engine"]["max_rows"] == 3
    assert main([*common, "--batch-size", "2", "--num-samples", "5"]) == 0
    report = json.loads(capsys.readouterr().out)
    tokens = [s["tokens"] for s in report["samples"]]
    assert len(tokens) == 5 and tokens[:2] == today
    assert report["stats"]["batch_size"] == 5 and report["engine"]["requests_done"] == 3
    assert report["engine"]["dtype"] == report["stats"]["dtype"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--num-samples", "3", "--sampler", "mdlm"], "--num-samples"),
        (["--max-rows", "4"], "--max-rows"),
        (["--num-samples", "0"], "--num-samples"),
        (["--num-samples", "2", "--max-rows", "0"], "--max-rows"),
    ],
)
def test_generate_refuses_engine_options_it_cannot_honour(argv, message, capsys):
    assert main(["generate", "--steps", "2", "--length", "8", "--judge", "none", *argv]) == 2
    assert message in capsys.readouterr().err


def test_evaluate_schedule_samples_through_the_engine_unchanged(embedded):
    got = evaluate_schedule(
        embedded, "sandwich:0.5", steps=STEPS, length=LENGTH, samples=5, batch_size=2, seed=3, max_rows=4
    )
    want = evaluate_samples(_batch_by_batch(embedded, 5, 2, 3, schedule="sandwich:0.5").tolist())
    assert got["per_sample"]["unigram_entropies"] == want["per_sample"]["unigram_entropies"]
    assert got["forwards"] > 0 and got["executed_flops"] > 0 and got["record"]["seeds"] == [3, 4, 5]
