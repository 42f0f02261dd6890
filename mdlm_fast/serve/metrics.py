"""Server metrics in the Prometheus text format (version 0.0.4), written directly: a few counters,
gauges and two latency histograms, with the engine's own gauges read at scrape time."""

from __future__ import annotations

import bisect
import collections
import threading
import time
from typing import Any

LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300)
THROUGHPUT_WINDOW_S = 60.0
PREFIX = "mdlm_fast_"
FILL_KEYS = ("rows_per_forward", "mean_rows_per_forward", "fill")  # what engines call the fill


class Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = tuple(sorted(buckets))
        self.counts = [0] * (len(self.buckets) + 1)  # the last one is +Inf
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out, running = [], 0
        for bound, count in zip(self.buckets + (float("inf"),), self.counts):
            running += count
            le = "+Inf" if bound == float("inf") else f"{bound:g}"
            out.append(f'{name}_bucket{{le="{le}"}} {running}')
        out += [f"{name}_sum {self.total:.6f}", f"{name}_count {self.count}"]
        return out


class ServerMetrics:
    """What the HTTP layer counts; thread-safe (the engine thread reports finished requests)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: collections.Counter[tuple[str, int]] = collections.Counter()  # (endpoint, status)
        self.finished: collections.Counter[str] = collections.Counter()  # done / failed / cancelled
        self.tokens_generated = 0
        self.latency = Histogram(LATENCY_BUCKETS_S)
        self.queue_wait = Histogram(LATENCY_BUCKETS_S)
        self._recent: collections.deque[tuple[float, int]] = collections.deque()  # (time, tokens) in the window

    def count_request(self, endpoint: str, status: int) -> None:
        with self._lock:
            self.requests[(endpoint, status)] += 1

    def count_cancelled(self) -> None:
        with self._lock:
            self.finished["cancelled"] += 1

    def count_finished(self, completion: Any) -> None:
        stats = completion.stats or {}
        with self._lock:
            if completion.error is not None or completion.tokens is None:
                self.finished["failed"] += 1
                return
            self.finished["done"] += 1
            if "latency_s" in stats:
                self.latency.observe(float(stats["latency_s"]))
            if "queue_wait_s" in stats:
                self.queue_wait.observe(float(stats["queue_wait_s"]))
            tokens = int(completion.tokens.numel())
            self.tokens_generated += tokens
            self._recent.append((time.monotonic(), tokens))

    def tokens_per_second(self) -> float:
        now = time.monotonic()
        with self._lock:
            while self._recent and self._recent[0][0] < now - THROUGHPUT_WINDOW_S:
                self._recent.popleft()
            return sum(t for _, t in self._recent) / THROUGHPUT_WINDOW_S

    def render(self, engine: Any) -> str:
        """The scrape body: this object's counters and histograms plus the engine's gauges."""
        stats = engine.stats()
        tokens_per_second = self.tokens_per_second()
        lines: list[str] = []

        def metric(name: str, kind: str, doc: str, samples: list[tuple[str, Any]]) -> None:
            lines.append(f"# HELP {PREFIX}{name} {doc}")
            lines.append(f"# TYPE {PREFIX}{name} {kind}")
            lines.extend(f"{PREFIX}{name}{labels} {_number(value)}" for labels, value in samples)

        metric(
            "queue_depth", "gauge", "Requests submitted and not yet admitted by the engine.", [("", engine.queue_depth)]
        )
        metric(
            "rows_in_flight", "gauge", "Rows admitted by the engine and not finished.", [("", engine.rows_in_flight)]
        )
        metric("max_rows", "gauge", "The engine's row budget per forward (0: none).", [("", engine.max_rows)])
        fill = next((stats[k] for k in FILL_KEYS if isinstance(stats.get(k), (int, float))), 0.0)
        metric("rows_per_forward", "gauge", "Mean rows per model forward since start (the fill).", [("", fill)])
        forwards = stats.get("forwards", [])
        forwards = forwards.items() if isinstance(forwards, dict) else enumerate(forwards)
        metric(
            "forwards_total",
            "counter",
            "Model forwards run, per model index (0 = heavy).",
            [(f'{{model="{i}"}}', f) for i, f in forwards],
        )
        metric(
            "tokens_per_second",
            "gauge",
            f"Tokens generated per second over the last {THROUGHPUT_WINDOW_S:g} s.",
            [("", tokens_per_second)],
        )
        with self._lock:
            metric(
                "tokens_generated_total",
                "counter",
                "Tokens of finished requests (whole sequences).",
                [("", self.tokens_generated)],
            )
            metric(
                "http_requests_total",
                "counter",
                "HTTP requests answered, by endpoint and status.",
                [(f'{{endpoint="{e}",status="{s}"}}', c) for (e, s), c in sorted(self.requests.items())],
            )
            metric(
                "engine_requests_total",
                "counter",
                "Engine requests by outcome.",
                [(f'{{outcome="{o}"}}', self.finished[o]) for o in ("done", "failed", "cancelled")],
            )
            for name, hist, doc in (
                ("request_latency_seconds", self.latency, "Submission to completion."),
                ("queue_wait_seconds", self.queue_wait, "Submission to admission."),
            ):
                lines += [f"# HELP {PREFIX}{name} {doc}", f"# TYPE {PREFIX}{name} histogram"]
                lines += hist.lines(PREFIX + name)
        return "\n".join(lines) + "\n"


def _number(value: Any) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    return f"{float(value):.6g}"
