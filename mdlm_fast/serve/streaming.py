"""Watching a request form: progress events every k steps from ``snapshot()``, then its Completion.

Server-sent events are written here too. A watcher that stops early (the client went away, the
server is cancelling) cancels its request, so its rows are freed at once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import torch
from starlette.responses import StreamingResponse

from mdlm_fast.sampling.engine import Completion

POLL_S = 0.05
MASK_PLACEHOLDER = "\u2591"  # light shade: a position not yet revealed


@dataclass
class Progress:
    step: int
    steps: int
    tokens: Any  # torch.Tensor [n, L]


def sse(data: Any, event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return head + f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def submitted(engine: Any, request: Any) -> Progress:
    """Step 0 of a request, built from the request itself: masks everywhere but its given tokens.
    (Read from the engine instead, it could already show later steps: the engine thread runs on.)"""
    length = request.length or engine.default_length
    tokens = torch.full((request.n, length), engine.mask_index, dtype=torch.int64)
    if request.given is not None:
        tokens[:] = torch.as_tensor(request.given, dtype=torch.int64)
    if request.prefix is not None:
        prefix = torch.as_tensor(request.prefix, dtype=torch.int64)
        tokens[:, : prefix.shape[-1]] = prefix
    return Progress(0, request.steps, tokens)


async def watch(
    engine: Any, handle: int, future: asyncio.Future, every: int, cancel: Callable[[int], None], first: Progress
) -> AsyncIterator[Any]:
    """Yield ``first`` (the request at submission), a Progress whenever ``every`` more steps are
    done, then the Completion. Leaving early cancels the request."""
    finished = False
    sent_step = first.step
    try:
        yield first
        while True:
            if not future.done():
                progress = _progress(engine, handle)
                if progress is not None and progress.step >= sent_step + every:
                    sent_step = progress.step
                    yield progress
            if future.done():
                finished = True
                yield future.result()
                return
            await asyncio.wait({future}, timeout=POLL_S)
    finally:
        if not finished:
            cancel(handle)


def _progress(engine: Any, handle: int) -> Progress | None:
    """The request's current tokens, or None where the engine no longer holds it (it just finished)."""
    try:
        step, steps = engine.progress(handle)
        tokens = engine.snapshot(handle)
    except (KeyError, ValueError, IndexError):
        return None
    return Progress(int(step), int(steps), tokens)


async def wait_unless_disconnected(
    svc: Any, handle: int, future: asyncio.Future, is_disconnected: Any, poll_s: float = 0.25
) -> Completion | None:
    """The Completion, or None after cancelling the request if the client went away first."""
    finished = False
    try:
        while not future.done():
            await asyncio.wait({future}, timeout=poll_s)
            if not future.done() and await is_disconnected():
                return None
        finished = True
        return future.result()
    finally:
        if not finished:
            svc.cancel(handle)


class WatchedStream(StreamingResponse):
    """A streaming response that calls ``on_close`` however it ends (done, client gone, server cancelling),
    so a request whose client left never keeps its rows."""

    def __init__(self, content: Any, *, on_close: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()
