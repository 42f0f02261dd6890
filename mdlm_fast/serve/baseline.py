"""``SequentialEngine``: the engine interface run as one ``sample()`` per request, in arrival order.

The comparison server of the serving benchmark, and the engine of builds without the packed one.
Each ``step()`` admits the oldest waiting request and runs its whole ``sample()`` call, so its
tokens are ``sample()``'s by construction; a forward holds only that request's rows.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch

from mdlm_fast.models.denoiser import as_denoisers
from mdlm_fast.ops.compiled import check_seed, check_temperature
from mdlm_fast.sampling.api import NOISE_REMOVALS, _as_given, sample
from mdlm_fast.sampling.engine import Completion, QueueFull, Request
from mdlm_fast.schedules.time_schedule import resolve_schedule
from mdlm_fast.util.validate import integer, positive_int


@dataclass
class _Entry:
    handle: int
    request: Request
    length: int
    prior: torch.Tensor  # [n, L]: masks with the prefix written in (what snapshot() shows)
    submitted: float
    admitted: float | None = None
    cancelled: bool = False
    stats: dict = field(default_factory=dict)


class SequentialEngine:
    """One ``sample()`` per request, oldest first; same interface as the packed engine."""

    def __init__(
        self, models: Any, *, device: Any = None, dtype: Any = None, max_rows: int | None = None, max_queue: int = 1024
    ) -> None:
        self._models = as_denoisers(models)
        self._device = device
        self._dtype = dtype
        first = self._models[0]
        self.mask_index = first.mask_index
        self.vocab_size = first.vocab_size
        self.default_length = getattr(getattr(first.model, "config", None), "model_length", None)
        # No packing here: the row budget only bounds one request's n (None: any n).
        self.max_rows = positive_int("max_rows", max_rows) if max_rows is not None else 0
        self.max_queue = integer("max_queue", max_queue, minimum=0)
        self._lock = threading.Lock()
        self._handles = itertools.count(1)
        self._waiting: OrderedDict[int, _Entry] = OrderedDict()
        self._running: _Entry | None = None
        self._totals: dict[str, Any] = {
            "forwards": [0] * len(self._models),
            "rows": [0] * len(self._models),
            "executed_flops": 0.0,
            "tokens_generated": 0,
            "requests_done": 0,
            "requests_failed": 0,
            "requests_cancelled": 0,
            "queue_wait_s": 0.0,
        }

    # --- submission -----------------------------------------------------------------------------

    def _validate(self, request: Request) -> tuple[int, torch.Tensor]:
        """sample()'s checks, run at submission so a bad request fails at once, naming its field."""
        if not isinstance(request, Request):
            raise TypeError(f"submit() takes a Request, got {type(request).__name__}")
        n = positive_int("n", request.n)
        length = request.length if request.length is not None else self.default_length
        if length is None:
            raise ValueError("length is required for denoisers without config.model_length")
        length = positive_int("length", length)
        steps = positive_int("steps", request.steps)
        if self.max_rows and n > self.max_rows:
            raise ValueError(f"n must be at most the row budget max_rows={self.max_rows}, got {n}")
        check_seed(request.seed)
        if isinstance(request.temperature, bool) or not isinstance(request.temperature, (int, float)):
            raise ValueError(f"temperature must be a number, got {request.temperature!r}")
        check_temperature(request.temperature)
        if request.noise_removal not in NOISE_REMOVALS:
            raise ValueError(f"noise_removal must be one of {NOISE_REMOVALS}, got {request.noise_removal!r}")
        try:
            resolve_schedule(request.schedule, steps).validate_for(len(self._models))
        except ValueError as exc:
            raise ValueError(f"schedule: {exc}") from None
        prior = torch.full((n, length), self.mask_index, dtype=torch.int64)
        given = _as_given(
            request.given, request.prefix, n, length, self.vocab_size, self.mask_index, torch.device("cpu")
        )
        if given is not None:
            prior.copy_(given[0])
        return length, prior

    def submit(self, request: Request) -> int:
        length, prior = self._validate(request)
        with self._lock:
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"the queue holds {len(self._waiting)} requests (max_queue={self.max_queue})")
            handle = next(self._handles)
            self._waiting[handle] = _Entry(handle, request, length, prior, time.perf_counter())
        return handle

    def cancel(self, handle: int) -> bool:
        with self._lock:
            entry = self._waiting.pop(handle, None)
            if (
                entry is None
                and self._running is not None
                and self._running.handle == handle
                and not self._running.cancelled
            ):
                entry = self._running  # its sample() call runs on, but its rows no longer count
            if entry is None:
                return False
            entry.cancelled = True
            self._totals["requests_cancelled"] += 1
            return True

    # --- the loop ---------------------------------------------------------------------------------

    def step(self) -> list[Completion]:
        """Admit the oldest waiting request and run its whole sample() call (no-op when idle)."""
        with self._lock:
            if not self._waiting:
                return []
            _, entry = self._waiting.popitem(last=False)
            entry.admitted = time.perf_counter()
            self._running = entry
        r = entry.request
        try:
            result = sample(
                self._models,
                steps=r.steps,
                batch_size=r.n,
                length=entry.length,
                schedule=r.schedule,
                seed=r.seed,
                prefix=r.prefix,
                given=r.given,
                temperature=r.temperature,
                noise_removal=r.noise_removal,
                device=self._device,
                dtype=self._dtype,
            )
            tokens, error, run = result.tokens.cpu(), None, result.stats
        except Exception as exc:  # noqa: BLE001 -- one failed request must not stop the engine serving the others
            tokens, error, run = None, f"request {entry.handle}: {type(exc).__name__}: {exc}", None
        done = time.perf_counter()
        with self._lock:
            self._running = None
            if entry.cancelled:
                return []
            wait = entry.admitted - entry.submitted
            stats = {
                "latency_s": done - entry.submitted,
                "queue_wait_s": wait,
                "steps": r.steps,
                "forwards": list(run.forwards) if run else [],
                "rows": list(run.rows) if run else [],
            }
            t = self._totals
            t["queue_wait_s"] += wait
            if run is not None:
                for i, (f, rows) in enumerate(zip(run.forwards, run.rows)):
                    t["forwards"][i] += f
                    t["rows"][i] += rows
                t["executed_flops"] += (run.executed_flops or {}).get("total", 0.0)
                t["tokens_generated"] += int((entry.prior == self.mask_index).sum())
            t["requests_done" if error is None else "requests_failed"] += 1
        return [Completion(entry.handle, tokens, error, stats)]

    def run_until_done(self) -> list[Completion]:
        finished = []
        while not self.idle:
            finished.extend(self.step())
        return finished

    # --- observation ------------------------------------------------------------------------------

    def _live(self, handle: int) -> _Entry:
        entry = self._waiting.get(handle)
        if (
            entry is None
            and self._running is not None
            and self._running.handle == handle
            and not self._running.cancelled
        ):
            entry = self._running
        if entry is None:
            raise KeyError(f"no live request with handle {handle}")
        return entry

    def snapshot(self, handle: int) -> torch.Tensor:
        """The request's tokens so far: its prior until its sample() call returns (one call, no partial state)."""
        with self._lock:
            return self._live(handle).prior.clone()

    def progress(self, handle: int) -> tuple[int, int]:
        with self._lock:
            return 0, self._live(handle).request.steps

    @property
    def rows_in_flight(self) -> int:
        with self._lock:
            running = self._running
            return running.request.n if running is not None and not running.cancelled else 0

    @property
    def queue_depth(self) -> int:
        with self._lock:
            return len(self._waiting)

    @property
    def idle(self) -> bool:
        with self._lock:
            return not self._waiting and self._running is None

    def stats(self) -> dict:
        with self._lock:
            t = dict(self._totals)
            t["forwards"], t["rows"] = list(t["forwards"]), list(t["rows"])
        forwards = sum(t["forwards"])
        finished = t["requests_done"] + t["requests_failed"]
        return {
            "engine": "sequential",
            "max_rows": self.max_rows,
            **t,
            "rows_per_forward": sum(t["rows"]) / forwards if forwards else 0.0,
            "mean_queue_wait_s": t["queue_wait_s"] / finished if finished else 0.0,
        }
