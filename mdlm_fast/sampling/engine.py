"""``Engine``: continuous batching for exact masked-diffusion sampling (docs/design.md, "The engine").

Requests (what ``sample()`` takes for one batch) are submitted at any time; every ``step()`` runs
one packed forward over up to ``max_rows`` sequences of any requests, each at its own step, chosen
by the packing policy (packing.py). A request's tokens are those of ``sample()`` called alone with
its arguments, on the same device and dtype: a sequence's state is its token row and its reveal
plan, and its draws are keyed by its request's seed and its own (step, row, position).

Thread-safety: submit, cancel, snapshot, progress, the properties and stats may be called from
other threads while one thread loops ``step()``; the lock is held for bookkeeping only, not
during the forward.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import torch

from mdlm_fast.models.compute_dtype import denoisers_in_dtype
from mdlm_fast.models.denoiser import as_denoisers
from mdlm_fast.ops.compiled import check_seed, check_temperature
from mdlm_fast.sampling import fast
from mdlm_fast.sampling.api import NOISE_REMOVALS, _as_given, _resolve_device
from mdlm_fast.sampling.engine_state import RequestState, RowState, row_states
from mdlm_fast.sampling.packed_forward import model_name, run_pack
from mdlm_fast.sampling.packing import choose_pack
from mdlm_fast.sampling.run import SamplingRun
from mdlm_fast.schedules.flops import ExecutedFlops
from mdlm_fast.schedules.noise import LogLinearNoise, sampling_timesteps
from mdlm_fast.schedules.time_schedule import resolve_schedule
from mdlm_fast.util.validate import positive_int

__all__ = ["Completion", "Engine", "EngineError", "QueueFull", "Request", "default_max_rows"]


class EngineError(RuntimeError):
    """A request the engine cannot serve (an argument it does not support yet)."""


class QueueFull(EngineError):
    """``max_queue`` requests are already waiting: try again later."""


@dataclass(frozen=True)
class Request:
    """What ``sample()`` takes for one batch of ``n`` sequences (the fast sampler)."""

    n: int = 1
    length: int | None = None  # None: the model's config.model_length
    steps: int = 128
    schedule: Any = None  # ModelSchedule, spec string, list or time schedule; None = all heavy
    seed: int = 0
    prefix: Any = None  # [P] or [n, P] token ids
    given: Any = None  # infilling: [L] or [n, L], the mask id where tokens are generated
    temperature: float = 1.0
    noise_removal: str = "greedy"


@dataclass
class Completion:
    handle: int
    tokens: torch.Tensor | None  # [n, L] int64 on the CPU; None if failed or cancelled
    error: str | None
    stats: dict  # latency_s, queue_wait_s, forwards, rows, steps, tokens


def default_max_rows(device: torch.device) -> int:
    """The row budget per forward where none is given. On a CPU a forward's cost per row falls until
    about 8 rows and is flat beyond (embedded models: 37, 27, 25, 23.5, 22.4 ms per row at 1, 2, 4,
    8, 16 rows; benchmarks/results/engine_embedded.json), so a larger budget buys no throughput and
    costs latency: 8. On a GPU a forward over a few rows costs nearly what a full batch costs: 128
    (to be set from the paper config's curve in scripts/gpu_check.sh)."""
    return 128 if device.type == "cuda" else 8


class Engine:
    """Continuous batching over one model or a [heavy, light, ...] list, as sample() takes them.

    max_rows: the row budget of one forward (None: :func:`default_max_rows`). max_queue: requests
    waiting to be admitted before submit raises QueueFull. max_in_flight: rows admitted at once
    (None: 4 * max_rows, enough ready rows of each model to fill forwards under a heavy/light
    schedule; a request larger than it is admitted alone). patience: forwards a ready row may wait
    before its group runs first (see packing.py).
    """

    def __init__(
        self,
        models: Any,
        *,
        device: Any = None,
        dtype: Any = None,
        max_rows: int | None = None,
        max_queue: int = 1024,
        max_in_flight: int | None = None,
        patience: int = 4,
    ):
        denoisers = as_denoisers(models)
        self.device = _resolve_device(denoisers, device)
        self.models, self.dtype_choice = denoisers_in_dtype(denoisers, dtype, self.device)
        self.mask_index = self.models[0].mask_index
        self.vocab_size = self.models[0].vocab_size
        self.default_length = getattr(getattr(self.models[0].model, "config", None), "model_length", None)
        self.max_rows = positive_int("max_rows", max_rows) if max_rows is not None else default_max_rows(self.device)
        self.max_queue = positive_int("max_queue", max_queue)
        self.max_in_flight = (
            positive_int("max_in_flight", max_in_flight) if max_in_flight is not None else 4 * self.max_rows
        )
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ValueError(f"patience must be an int >= 0, got {patience!r}")
        self.patience = patience
        self._banned = torch.tensor([self.mask_index], dtype=torch.int64, device=self.device)
        self._noise = LogLinearNoise()
        self._head_ok: dict[int, bool] = {}
        self._lock = threading.Lock()
        self._step_lock = threading.Lock()
        self._handles = itertools.count()
        self._queue: deque[RequestState] = deque()
        self._live: dict[int, RequestState] = {}
        self._finished: list[Completion] = []  # cancelled requests, reported by the next step()
        self._forwards = [0] * len(self.models)
        self._rows = [0] * len(self.models)
        self._flops = ExecutedFlops()
        self._queue_waits: list[float] = []
        self._counts = {"done": 0, "failed": 0, "cancelled": 0, "tokens": 0}
        self._forward_time = 0.0

    # ---- submitting -------------------------------------------------------------------------

    def submit(self, request: Request) -> int:
        """Validate ``request`` as sample() would (ValueError naming the field), plan its reveals and
        queue it; returns its handle. Raises QueueFull when max_queue requests are waiting."""
        if not isinstance(request, Request):
            raise TypeError(f"submit takes a Request, got {type(request).__name__}")
        state = self._prepare(request)
        with self._lock:
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"the queue holds max_queue={self.max_queue} requests; retry later")
            state.handle = next(self._handles)
            self._queue.append(state)
            return state.handle

    def _prepare(self, request: Request) -> RequestState:
        n = positive_int("n", request.n)
        steps = positive_int("steps", request.steps)
        length = request.length if request.length is not None else self.default_length
        if length is None:
            raise ValueError("length is required for denoisers without config.model_length")
        positive_int("length", length)
        if self.default_length is not None and length > self.default_length:
            raise ValueError(f"length must be at most the model's model_length ({self.default_length}), got {length}")
        check_seed(request.seed)
        temperature = request.temperature
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
            raise ValueError(f"temperature must be a number, got {temperature!r}")
        check_temperature(temperature)
        if request.noise_removal not in NOISE_REMOVALS:
            raise ValueError(f"noise_removal must be one of {NOISE_REMOVALS}, got {request.noise_removal!r}")
        try:
            schedule = resolve_schedule(request.schedule, steps).validate_for(len(self.models))
        except ValueError as exc:  # ScheduleError included: name the field, as every other refusal does
            raise ValueError(f"schedule: {exc}") from None
        given = _as_given(request.given, request.prefix, n, length, self.vocab_size, self.mask_index, self.device)
        x = torch.full((n, length), self.mask_index, dtype=torch.int64, device=self.device)
        if given is not None:
            x.copy_(given[0])  # the mask id where tokens are generated; the reveal plan skips the rest
        run = SamplingRun(
            self.models, schedule, x, request.seed, "fp64", request.noise_removal, False, float(temperature)
        )
        with torch.inference_mode():
            reveal = fast.reveal_steps(run).cpu()
        state = RequestState(
            handle=-1,
            n=n,
            length=length,
            steps=steps,
            schedule=schedule,
            seed=request.seed,
            temperature=float(temperature),
            noise_removal=request.noise_removal,
            x=x,
            timesteps=sampling_timesteps(steps).tolist(),
        )
        state.rows = row_states(state, reveal)
        return state

    # ---- the loop ---------------------------------------------------------------------------

    def step(self) -> list[Completion]:
        """Run at most one packed forward; return the requests that finished, failed or were
        cancelled since the last call."""
        with self._step_lock:
            with self._lock:
                done = self._admit()
                pack = choose_pack(self._ready_rows(), self.max_rows, sum(self._forwards), self.patience)
                if pack is None:
                    return done + self._drain_finished()
                model = self.models[pack.model_index]
                head_ok = self._check_head(pack.model_index)
            start = time.perf_counter()
            with torch.inference_mode():
                try:
                    result = run_pack(pack, model, len(self.models), head_ok, self._banned, self._noise)
                except Exception as exc:  # noqa: BLE001 -- a forward that raises fails its requests, not the engine
                    result = None
                    error = f"the forward of model {pack.model_index} failed: {type(exc).__name__}: {exc}"
            elapsed = time.perf_counter() - start
            with self._lock:
                self._forward_time += elapsed
                if result is None:
                    for handle in {r.request.handle for r in pack.rows}:
                        done += self._fail(handle, error)
                else:
                    done += self._apply(pack, result)
                return done + self._drain_finished()

    def run_until_done(self) -> list[Completion]:
        """Loop step() until nothing is queued or in flight; every completion, in finishing order."""
        out = []
        while not self.idle:
            out += self.step()
        return out

    def _admit(self) -> list[Completion]:
        """Admit queued requests in arrival order while their rows fit max_in_flight (one that does
        not fit an empty engine is admitted alone); requests with nothing to reveal finish here."""
        done = []
        now = time.perf_counter()
        while self._queue:
            head = self._queue[0]
            in_flight = self._rows_in_flight()
            if in_flight and in_flight + head.n > self.max_in_flight:
                break
            self._queue.popleft()
            head.admitted_at = now
            self._queue_waits.append(now - head.submitted_at)
            for row in head.rows:
                row.ready_since = sum(self._forwards)
            self._live[head.handle] = head
            if head.rows_left == 0:
                done.append(self._complete(head))
        return done

    def _ready_rows(self) -> list[RowState]:
        return [row for state in self._live.values() for row in state.rows if not row.done]

    def _rows_in_flight(self) -> int:
        return sum(state.rows_left for state in self._live.values())

    def _check_head(self, model_index: int) -> bool:
        """Whether the model's output layer is finite (checked once per model, as sample() does per run)."""
        if model_index not in self._head_ok:
            model = self.models[model_index]
            ok = True
            if model.fused:
                weight, bias = model.head()
                ok = bool(torch.isfinite(weight).all()) and (bias is None or bool(torch.isfinite(bias).all()))
            self._head_ok[model_index] = ok
        return self._head_ok[model_index]

    def _apply(self, pack, result) -> list[Completion]:
        """Write a forward's tokens, advance its rows, finish requests; under the lock."""
        m = pack.model_index
        self._forwards[m] += 1
        self._rows[m] += len(pack.rows)
        shape = self.models[m].shape
        if shape is not None:
            self._flops.add_trunk(m, shape, len(pack.rows), pack.length, result.last_block_queries)
            self._flops.add_head(shape, result.head_positions)
        now_forward = sum(self._forwards)
        done = []
        for handle, error in result.errors.items():
            done += self._fail(handle, error)
        for handle, (rows, positions, tokens) in result.writes.items():
            state = self._live.get(handle)
            if state is None:  # cancelled while the forward ran
                continue
            state.x.index_put_((rows, positions), tokens)
            state.drawn += tokens.numel()
            self._counts["tokens"] += tokens.numel()
        touched: dict[int, Any] = {}
        for row in pack.rows:
            state = self._live.get(row.request.handle)
            if state is None or state is not row.request:
                continue
            row.cursor += 1
            row.ready_since = now_forward
            touched.setdefault(state.handle, state)
        for state in touched.values():
            state.forwards += 1
            state.row_forwards += sum(r.request is state for r in pack.rows)
            if state.rows_left == 0:
                done.append(self._complete(state))
        return done

    def _complete(self, state: RequestState) -> Completion:
        del self._live[state.handle]
        self._counts["done"] += 1
        return Completion(state.handle, state.x.cpu().clone(), None, state.stats(time.perf_counter()))

    def _fail(self, handle: int, error: str) -> list[Completion]:
        state = self._live.pop(handle, None)
        if state is None:
            return []
        state.error = error
        self._counts["failed"] += 1
        return [Completion(handle, None, error, state.stats(time.perf_counter()))]

    def _drain_finished(self) -> list[Completion]:
        out, self._finished = self._finished, []
        return out

    # ---- control and inspection (any thread) ------------------------------------------------

    def cancel(self, handle: int) -> bool:
        """Drop a queued or running request at once (its rows leave the next forward); True if it
        was live. Its Completion (tokens None, error "cancelled") comes with the next step()."""
        with self._lock:
            state = self._live.pop(handle, None)
            if state is None:
                for queued in self._queue:
                    if queued.handle == handle:
                        state = queued
                        self._queue.remove(queued)
                        break
            if state is None:
                return False
            state.cancelled = True
            self._counts["cancelled"] += 1
            self._finished.append(Completion(handle, None, "cancelled", state.stats(time.perf_counter())))
            return True

    def _find(self, handle: int) -> RequestState:
        state = self._live.get(handle) or next((q for q in self._queue if q.handle == handle), None)
        if state is None:
            raise KeyError(f"no live request with handle {handle} (finished, cancelled or never submitted)")
        return state

    def snapshot(self, handle: int) -> torch.Tensor:
        """The request's tokens so far, [n, L] int64 on the CPU, the mask id where not yet revealed."""
        with self._lock:
            return self._find(handle).x.cpu().clone()

    def progress(self, handle: int) -> tuple[int, int]:
        """(steps done, steps total) of the request's slowest row: a row has done the steps before its
        next reveal (the steps between reveals need no forward); a queued request has done none."""
        with self._lock:
            state = self._find(handle)
            if state.admitted_at is None:
                return 0, state.steps
            return min((row.steps_done() for row in state.rows), default=state.steps), state.steps

    @property
    def rows_in_flight(self) -> int:
        with self._lock:
            return self._rows_in_flight()

    @property
    def queue_depth(self) -> int:
        with self._lock:
            return len(self._queue)

    @property
    def idle(self) -> bool:
        with self._lock:
            return not self._queue and not self._live and not self._finished

    def stats(self) -> dict[str, Any]:
        with self._lock:
            forwards, rows = list(self._forwards), list(self._rows)
            total = sum(forwards)
            waits = self._queue_waits
            return {
                "max_rows": self.max_rows,
                "models": [model_name(i, len(self.models)) for i in range(len(self.models))],
                "forwards": forwards,
                "rows": rows,
                "rows_per_forward": sum(rows) / total if total else 0.0,
                "fill": sum(rows) / (total * self.max_rows) if total else 0.0,
                "forward_time_s": self._forward_time,
                "queue_wait_s": {"mean": sum(waits) / len(waits) if waits else 0.0, "max": max(waits, default=0.0)},
                "executed_flops": self._flops.as_dict() if all(m.shape is not None for m in self.models) else None,
                "tokens_generated": self._counts["tokens"],
                "requests_done": self._counts["done"],
                "requests_failed": self._counts["failed"],
                "requests_cancelled": self._counts["cancelled"],
                "rows_in_flight": self._rows_in_flight(),
                "queue_depth": len(self._queue),
                "dtype": self.dtype_choice.name,
            }
