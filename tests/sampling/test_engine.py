"""The engine: every request's tokens equal sample() alone, whatever else is in flight, whenever it
was submitted and whatever the row budget; packing keeps forwards full and starves no row; a
non-finite forward fails only its own requests; bad requests are refused by field."""

import random
import threading
import time

import pytest
import torch

import mdlm_fast as mf
from mdlm_fast.sampling.engine_state import RequestState, RowState
from mdlm_fast.sampling.packing import choose_pack

VOCAB, MASK = 40, 39


def tiny_dit(n_blocks, seed, time_conditioning, length=12):
    config = mf.DiTConfig(
        hidden_dim=16,
        n_heads=2,
        n_blocks=n_blocks,
        cond_dim=8,
        vocab_size=VOCAB,
        model_length=length,
        time_conditioning=time_conditioning,
    )
    model = mf.DiT(config)
    model.init_random_(seed, std=0.5)
    return model.eval()


@pytest.fixture(scope="module")
def tiny_pair():
    return [tiny_dit(2, 0, True), tiny_dit(1, 1, True)]


@pytest.fixture(scope="module")
def embedded():
    return [mf.load_denoiser("embedded:heavy"), mf.load_denoiser("embedded:light")]


def _alone(models, request, **kw):
    return mf.sample(
        models,
        steps=request.steps,
        batch_size=request.n,
        length=request.length,
        schedule=request.schedule,
        seed=request.seed,
        prefix=request.prefix,
        given=request.given,
        temperature=request.temperature,
        noise_removal=request.noise_removal,
        **kw,
    ).tokens


def _random_request(rng, lengths, max_steps, schedules, vocab):
    """vocab: the mask id; the ids below it are real tokens."""
    length = rng.choice(lengths)
    n = rng.randint(1, 3)
    steps = rng.randint(1, max_steps)
    prefix = given = None
    if rng.random() < 0.4:
        p = rng.randint(1, length)
        prefix = (
            torch.tensor([rng.randrange(vocab) for _ in range(p)])
            if rng.random() < 0.5
            else torch.tensor([[rng.randrange(vocab) for _ in range(p)] for _ in range(n)])
        )
    elif rng.random() < 0.4:  # infilling: real tokens at random positions, the mask id elsewhere
        given = torch.tensor(
            [[rng.randrange(vocab) if rng.random() < 0.4 else vocab for _ in range(length)] for _ in range(n)]
        )
    return mf.Request(
        n=n,
        length=length,
        steps=steps,
        schedule=rng.choice(schedules),
        seed=rng.randrange(2**64),
        prefix=prefix,
        given=given,
        temperature=rng.choice([1.0, 0.0, 0.6]),
        noise_removal=rng.choice(["greedy", "ancestral", "none"]),
    )


def _run_mix(models, requests, rng, *, max_rows, cancel_rate=0.0, **engine_kw):
    """Submit requests at random forwards, cancel some at random; return {handle: (request, completion)}."""
    engine = mf.Engine(models, max_rows=max_rows, **engine_kw)
    pending = list(requests)
    submitted, completions, cancelled = {}, {}, set()
    while pending or not engine.idle:
        while pending and rng.random() < 0.5:
            request = pending.pop(0)
            submitted[engine.submit(request)] = request
        live = [h for h in submitted if h not in completions and h not in cancelled]
        if live and rng.random() < cancel_rate:
            victim = rng.choice(live)
            assert engine.cancel(victim)
            cancelled.add(victim)
        for c in engine.step():
            completions[c.handle] = c
    assert engine.rows_in_flight == 0 and engine.queue_depth == 0
    for handle in cancelled:
        assert completions[handle].tokens is None and completions[handle].error == "cancelled"
    return {h: (submitted[h], c) for h, c in completions.items() if h not in cancelled}, engine


@pytest.mark.parametrize("max_rows", [1, 3, 8])
def test_randomized_mix_equals_sample_alone_on_tiny_models(tiny_pair, max_rows):
    rng = random.Random(max_rows)
    schedules = [None, "sandwich:0.5", "time:0.5-1=L", [1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0]]
    requests = []
    for _ in range(14):
        r = _random_request(rng, [5, 9, 12], 12, schedules, MASK)
        if isinstance(r.schedule, list):  # a per-step list names every step
            r = mf.Request(**{**r.__dict__, "schedule": r.schedule[: r.steps]})
        requests.append(r)
    done, engine = _run_mix(tiny_pair, requests, rng, max_rows=max_rows, cancel_rate=0.1)
    assert len(done) >= 8
    for handle, (request, completion) in done.items():
        assert completion.error is None
        assert torch.equal(completion.tokens, _alone(tiny_pair, request)), (handle, request)
    stats = engine.stats()
    assert max(stats["rows_per_forward"], 1) <= max_rows
    assert stats["requests_done"] == len(done)


def test_randomized_mix_equals_sample_alone_on_embedded_models(embedded):
    rng = random.Random(7)
    vocab = embedded[0].config.vocab_size - 1
    requests = [
        _random_request(rng, [12, 20], 8, [None, "sandwich:0.25", "time:0.9-1=L,0-0.1=L"], vocab) for _ in range(6)
    ]
    alone = {}
    for max_rows in (2, 5):
        done, _ = _run_mix(
            embedded, requests, random.Random(max_rows), max_rows=max_rows, cancel_rate=0.1, dtype="float32"
        )
        for request, completion in done.values():
            assert completion.error is None
            index = requests.index(request)
            if index not in alone:
                alone[index] = _alone(embedded, request, dtype="float32")
            assert torch.equal(completion.tokens, alone[index]), (max_rows, request)


def test_embedded_models_in_bfloat16(embedded):
    requests = [mf.Request(n=2, length=16, steps=8, schedule="sandwich:0.5", seed=s) for s in (3, 4)]
    done, engine = _run_mix(embedded, requests, random.Random(0), max_rows=3, dtype="bfloat16")
    assert engine.stats()["dtype"] == "bfloat16"
    for request, completion in done.values():
        assert torch.equal(completion.tokens, _alone(embedded, request, dtype="bfloat16"))


def test_callable_denoisers_draw_from_their_logits_exactly():
    model = tiny_dit(1, 3, False)
    wrapped = mf.Denoiser(lambda x, sigma: model(x, sigma), vocab_size=VOCAB, mask_index=MASK)
    requests = [mf.Request(n=2, length=7, steps=6, seed=s, temperature=t) for s, t in ((1, 1.0), (2, 0.5), (1, 0.0))]
    done, _ = _run_mix(wrapped, requests, random.Random(1), max_rows=3)
    assert len(done) == 3
    for request, completion in done.values():
        assert torch.equal(completion.tokens, _alone(wrapped, request))


class _Poisoned(torch.nn.Module):
    """A DiT whose hidden states are NaN in rows that start with the token `poison`."""

    def __init__(self, inner, poison):
        super().__init__()
        self.inner, self.poison, self.config = inner, poison, inner.config

    @property
    def head_weight(self):
        return self.inner.head_weight

    @property
    def head_bias(self):
        return self.inner.head_bias

    def trunk(self, x, sigma, positions=None):
        h = self.inner.trunk(x, sigma, positions=positions)
        return torch.where((x[:, 0] == self.poison)[:, None, None], torch.full_like(h, float("nan")), h)

    def forward(self, x, sigma):
        return torch.nn.functional.linear(self.trunk(x, sigma), self.head_weight, self.head_bias)


def test_a_non_finite_forward_fails_its_own_requests_only(tiny_pair):
    heavy = _Poisoned(tiny_pair[0], poison=5)
    models = [heavy, tiny_pair[1]]
    good = [mf.Request(n=2, length=9, steps=8, schedule="sandwich:0.5", seed=s, prefix=[7]) for s in (1, 2)]
    bad = mf.Request(n=2, length=9, steps=8, schedule="sandwich:0.5", seed=3, prefix=[5])
    engine = mf.Engine(models, max_rows=6)
    handles = [engine.submit(r) for r in (good[0], bad, good[1])]
    completions = {c.handle: c for c in engine.run_until_done()}
    failed = completions[handles[1]]
    assert failed.tokens is None
    assert "non-finite" in failed.error and "model 0 (heavy)" in failed.error and "step " in failed.error
    for handle, request in zip((handles[0], handles[2]), good):
        assert completions[handle].error is None
        assert torch.equal(completions[handle].tokens, _alone(models, request))
    stats = engine.stats()
    assert stats["requests_failed"] == 1 and stats["requests_done"] == 2 and engine.rows_in_flight == 0


class _Overflowing(_Poisoned):
    """Finite hidden states whose logits are NaN (inf - inf) in rows that start with `poison`: the
    finite check passes them and the fused op refuses them."""

    def __init__(self, inner, poison):
        super().__init__(inner, poison)
        weight = inner.head_weight.detach().clone()
        weight[:, :2] = 2.0
        self.weight = torch.nn.Parameter(weight, requires_grad=False)

    @property
    def head_weight(self):
        return self.weight

    def trunk(self, x, sigma, positions=None):
        h = self.inner.trunk(x, sigma, positions=positions).clone()
        big = torch.tensor([3e38, -3e38], dtype=h.dtype)
        h[..., :2] = torch.where((x[:, 0] == self.poison)[:, None, None], big, h[..., :2])
        return h


def test_a_row_the_head_cannot_draw_from_fails_its_request_only(tiny_pair):
    heavy = _Overflowing(tiny_pair[0], poison=5)
    good = [mf.Request(n=2, length=9, steps=6, seed=s, prefix=[7]) for s in (1, 2)]
    bad = mf.Request(n=1, length=9, steps=6, seed=3, prefix=[5])
    engine = mf.Engine(heavy, max_rows=5)
    handles = [engine.submit(r) for r in (good[0], bad, good[1])]
    completions = {c.handle: c for c in engine.run_until_done()}
    assert completions[handles[1]].tokens is None and "NaN" in completions[handles[1]].error
    for handle, request in zip((handles[0], handles[2]), good):
        assert torch.equal(completions[handle].tokens, _alone(heavy, request))


def test_sustained_load_keeps_forwards_full(tiny_pair):
    engine = mf.Engine(tiny_pair[0], max_rows=4)
    for seed in range(12):
        engine.submit(mf.Request(n=2, length=12, steps=12, seed=seed))
    engine.run_until_done()
    stats = engine.stats()
    # only the drain at the end runs short forwards
    assert stats["fill"] >= 0.9, stats


def _row(handle, row, model, ready_since, length=8):
    state = RequestState(
        handle=handle,
        n=1,
        length=length,
        steps=4,
        schedule=mf.ModelSchedule([model] * 4),
        seed=0,
        temperature=1.0,
        noise_removal="greedy",
        x=torch.zeros(1, length, dtype=torch.int64),
    )
    r = RowState(state, row, [0, 1, 2, 3], [torch.tensor([0])] * 4, ready_since=ready_since)
    state.rows = [r]
    return r


def test_packing_prefers_full_forwards_but_never_starves_the_oldest_row():
    lonely = _row(0, 0, model=1, ready_since=0)
    crowd = [_row(1 + i, 0, model=0, ready_since=0) for i in range(6)]
    # young: the largest group wins
    pack = choose_pack([lonely] + crowd, max_rows=4, forward_count=2, patience=3)
    assert pack.model_index == 0 and len(pack.rows) == 4
    # the lone row has waited `patience` forwards: its group runs
    pack = choose_pack([lonely] + crowd, max_rows=4, forward_count=3, patience=3)
    assert pack.model_index == 1 and pack.rows == [lonely]
    # lengths are buckets: rows of another length never share a forward
    other = [_row(10 + i, 0, model=0, ready_since=1, length=5) for i in range(3)]
    pack = choose_pack(crowd[:2] + other, max_rows=4, forward_count=1, patience=3)
    assert pack.length == 5 and len(pack.rows) == 3
    # oldest first inside the group
    late = _row(20, 0, model=0, ready_since=1)
    pack = choose_pack([late] + crowd, max_rows=4, forward_count=1, patience=9)
    assert late not in pack.rows


def _minority_run(tiny_pair, patience):
    """One all-light request among many all-heavy ones: (the most forwards it waited between two of
    its own, the order requests finished in, its handle)."""
    engine = mf.Engine(tiny_pair, max_rows=4, max_in_flight=64, patience=patience)
    light = engine.submit(mf.Request(n=1, length=12, steps=12, schedule=[1] * 12, seed=0))
    for seed in range(1, 13):
        engine.submit(mf.Request(n=2, length=12, steps=12, seed=seed))
    last_progress, waited, worst, order = None, 0, 0, []
    while not engine.idle:
        for c in engine.step():
            order.append(c.handle)
        if light not in order:
            progress = engine.progress(light)
            waited = 0 if progress != last_progress else waited + 1
            worst = max(worst, waited)
            last_progress = progress
    return worst, order, light


def test_a_minority_model_request_is_not_starved_by_a_flood(tiny_pair):
    """Its wait is bounded by patience plus one round of the older rows (25 rows in flight, 4 per
    forward); without the patience rule (the control) the flood runs first and it finishes last."""
    worst, order, light = _minority_run(tiny_pair, patience=2)
    assert worst <= 2 + -(-25 // 4)
    assert order.index(light) < len(order) // 2
    worst, order, light = _minority_run(tiny_pair, patience=10**6)
    assert order.index(light) == len(order) - 1 and worst > 2 + -(-25 // 4)


def test_submit_validates_like_sample(tiny_pair):
    engine = mf.Engine(tiny_pair, max_rows=2)
    for field, request in [
        ("n", mf.Request(n=0)),
        ("steps", mf.Request(steps=0)),
        ("length", mf.Request(length=0)),
        ("length", mf.Request(length=13)),
        ("seed", mf.Request(seed=-1)),
        ("temperature", mf.Request(temperature=-1.0)),
        ("noise_removal", mf.Request(noise_removal="nope")),
        ("prefix", mf.Request(prefix=[MASK])),
        ("prefix", mf.Request(length=3, prefix=[1, 2, 3, 4])),
        ("schedule", mf.Request(steps=4, schedule=[0, 2, 0, 0])),
    ]:
        with pytest.raises(ValueError) as info:
            engine.submit(request)
        assert field in str(info.value) or (field == "schedule" and "model" in str(info.value)), (field, info.value)
    with pytest.raises(ValueError, match="given has 3 positions but the sequence length is 12"):
        engine.submit(mf.Request(given=[1, 2, MASK]))
    with pytest.raises(ValueError, match="given= or prefix=, not both"):
        engine.submit(mf.Request(given=[MASK] * 12, prefix=[1]))
    with pytest.raises(ValueError, match="max_rows"):
        mf.Engine(tiny_pair, max_rows=0)
    assert engine.idle and engine.queue_depth == 0


def test_queue_full_cancel_snapshot_progress(tiny_pair):
    engine = mf.Engine(tiny_pair, max_rows=2, max_queue=2, max_in_flight=2)
    a = engine.submit(mf.Request(n=2, length=12, steps=10, seed=1, prefix=[3, 4]))
    b = engine.submit(mf.Request(n=1, length=12, steps=10, seed=2))
    with pytest.raises(mf.QueueFull):
        engine.submit(mf.Request())
    assert engine.queue_depth == 2 and engine.progress(a) == (0, 10)
    engine.step()  # admits a (2 rows fill max_in_flight); b waits
    assert engine.rows_in_flight == 2 and engine.queue_depth == 1
    snap = engine.snapshot(a)
    assert snap.shape == (2, 12) and snap.dtype == torch.int64
    assert snap[:, :2].tolist() == [[3, 4], [3, 4]] and (snap[:, 2:] == MASK).sum() >= 1
    assert 0 <= engine.progress(a)[0] <= 10
    assert engine.cancel(a) and not engine.cancel(a)
    assert engine.rows_in_flight == 0
    assert engine.cancel(b) and engine.queue_depth == 0 and engine.idle is False  # completions not yet drained
    gone = engine.step()
    assert sorted(c.handle for c in gone) == [a, b] and all(c.error == "cancelled" for c in gone)
    assert engine.idle
    with pytest.raises(KeyError):
        engine.snapshot(a)
    assert engine.step() == []


def test_submit_and_cancel_from_another_thread_while_stepping(tiny_pair):
    engine = mf.Engine(tiny_pair, max_rows=3)
    requests = [mf.Request(n=1 + s % 2, length=9, steps=6, schedule="sandwich:0.5", seed=s) for s in range(8)]
    handles, stop = {}, threading.Event()
    completions = {}

    def loop():
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            for c in engine.step():
                completions[c.handle] = c

    worker = threading.Thread(target=loop)
    worker.start()
    try:
        for r in requests:
            handles[engine.submit(r)] = r
            engine.rows_in_flight, engine.stats()
        victim = next(iter(handles))
        engine.cancel(victim)
        deadline = time.monotonic() + 60
        while len(completions) < len(requests) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        worker.join()
    assert len(completions) == len(requests)
    for handle, r in handles.items():
        c = completions[handle]
        if c.error == "cancelled":
            continue
        assert torch.equal(c.tokens, _alone(tiny_pair, r))
