"""SequentialEngine, the engine interface as one sample() per request in arrival order: exact by
construction (checked), oldest first, bounded queue, cancel, refusals naming the field; and the
``serve`` command's refusals that need no server."""

import importlib.util

import pytest
import torch

from mdlm_fast.cli.app import main
from mdlm_fast.models.checkpoint import load_denoiser
from mdlm_fast.sampling.api import sample
from mdlm_fast.sampling.engine import QueueFull, Request
from mdlm_fast.serve.baseline import SequentialEngine


@pytest.fixture(scope="module")
def pair():
    return [load_denoiser("embedded:heavy"), load_denoiser("embedded:light")]


MIX = [
    Request(n=2, length=8, steps=4, schedule="L1-H3", seed=1, prefix=[[5, 6], [7, 8]]),
    Request(n=1, length=6, steps=4, schedule="time:0-0.5=L", seed=2, temperature=0.5, noise_removal="ancestral"),
    Request(n=3, length=6, steps=3, seed=3),
]


def test_tokens_are_those_of_sample_alone_in_arrival_order(pair):
    engine = SequentialEngine(pair)
    handles = [engine.submit(r) for r in MIX]
    assert engine.queue_depth == len(MIX) and engine.rows_in_flight == 0
    done = engine.run_until_done()
    assert [c.handle for c in done] == handles
    for request, completion in zip(MIX, done):
        want = sample(
            pair,
            steps=request.steps,
            batch_size=request.n,
            length=request.length,
            schedule=request.schedule,
            seed=request.seed,
            prefix=request.prefix,
            temperature=request.temperature,
            noise_removal=request.noise_removal,
        ).tokens
        assert completion.error is None and torch.equal(completion.tokens, want)
        assert completion.stats["steps"] == request.steps and completion.stats["latency_s"] >= 0
    stats = engine.stats()
    assert stats["requests_done"] == len(MIX) and stats["tokens_generated"] == 2 * 6 + 6 + 18
    assert engine.idle and engine.rows_in_flight == 0 and engine.step() == []


def test_queue_limit_cancel_snapshot_and_progress(pair):
    engine = SequentialEngine(pair[1], max_queue=2)
    first = engine.submit(Request(length=6, steps=3, prefix=[4, 5]))
    second = engine.submit(Request(length=6, steps=3))
    with pytest.raises(QueueFull, match="max_queue=2"):
        engine.submit(Request(length=6, steps=3))
    snapshot = engine.snapshot(first)
    assert snapshot.tolist() == [[4, 5] + [engine.mask_index] * 4]
    assert engine.progress(first) == (0, 3)
    assert engine.cancel(first) is True and engine.cancel(first) is False and engine.cancel(999) is False
    with pytest.raises(KeyError):
        engine.snapshot(first)
    done = engine.run_until_done()
    assert [c.handle for c in done] == [second]
    assert engine.stats()["requests_cancelled"] == 1


@pytest.mark.parametrize(
    "request_, field",
    [
        (Request(n=0), "n"),
        (Request(steps=0), "steps"),
        (Request(length=0), "length"),
        (Request(seed=-1), "seed"),
        (Request(temperature=-1.0), "temperature"),
        (Request(noise_removal="best"), "noise_removal"),
        (Request(schedule="nonsense", steps=4), "schedule"),
        (Request(length=4, prefix=[1, 8192]), "prefix"),
        (Request(length=4, prefix=[1, 2, 3, 4, 5]), "prefix"),
    ],
)
def test_bad_requests_are_refused_at_submit_naming_the_field(pair, request_, field):
    engine = SequentialEngine(pair)
    with pytest.raises(ValueError, match=rf"^{field}\b"):
        engine.submit(request_)
    assert engine.queue_depth == 0


def test_infilling_equals_sample_alone_and_a_bad_given_is_refused_naming_it(pair):
    engine = SequentialEngine(pair)
    handle = engine.submit(Request(length=4, steps=3, seed=5, given=[1, 8192, 8192, 2]))
    (done,) = [c for c in engine.run_until_done() if c.handle == handle]
    alone = sample(pair, steps=3, batch_size=1, length=4, seed=5, given=[1, 8192, 8192, 2]).tokens
    assert torch.equal(done.tokens, alone) and done.tokens[0, 0] == 1 and done.tokens[0, 3] == 2
    with pytest.raises(ValueError, match="^given"):
        engine.submit(Request(length=4, given=[1, 8192, 2]))


def test_serve_without_the_extra_says_so_in_one_line(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    assert main(["serve", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "serve extra" in err[0] and "uvicorn" in err[0]


def test_serve_refuses_light_without_heavy(capsys):
    assert main(["serve", "--light", "embedded:light"]) == 2
    assert "--light needs --heavy" in capsys.readouterr().err
