"""``EngineLoop``: one background thread stepping the engine while work exists, asyncio futures for results.

The thread sleeps on an Event while the engine is idle; ``submit`` wakes it. Finished requests
resolve their futures on the event loop that submitted them (``call_soon_threadsafe``), so the
HTTP handlers never block on a forward.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

from mdlm_fast.sampling.engine import Completion, Request

SHUTDOWN_MESSAGE = "the server shut down before this request finished"


class ShuttingDown(RuntimeError):
    """The server is draining: no new requests, in-flight ones finish or fail."""


class EngineLoop:
    def __init__(
        self, engine: Any, *, on_finished: Callable[[Completion], None] | None = None, idle_poll_s: float = 0.5
    ) -> None:
        self.engine = engine
        self._on_finished = on_finished
        self._idle_poll_s = idle_poll_s
        self._lock = threading.Lock()  # submit + registration are one step, so a result never beats its future
        self._waiters: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future]] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._accepting = True
        self._thread: threading.Thread | None = None
        self.step_errors = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mdlm-fast-engine", daemon=True)
        self._thread.start()

    @property
    def accepting(self) -> bool:
        return self._accepting

    @property
    def running(self) -> bool:
        """Whether the engine thread is still alive (stop() gives up waiting on a step it cannot interrupt)."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._waiters)

    def submit(self, request: Request) -> tuple[int, asyncio.Future]:
        """Hand ``request`` to the engine; the future resolves to its Completion. Raises what
        engine.submit raises (ValueError, EngineError, QueueFull) or ShuttingDown."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._lock:
            if not self._accepting:
                raise ShuttingDown("the server is shutting down")
            handle = self.engine.submit(request)
            self._waiters[handle] = (loop, future)
        self._wake.set()
        return handle, future

    def cancel(self, handle: int) -> bool:
        """Free the request's rows now (a client went away); its future is dropped unresolved."""
        with self._lock:
            self._waiters.pop(handle, None)
        return self.engine.cancel(handle)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()  # before the idle check: a submit after it sets the Event again
            if self.engine.idle:
                self._wake.wait(self._idle_poll_s)
                continue
            try:
                finished = self.engine.step()
            except Exception as exc:  # noqa: BLE001 -- a broken step fails the requests in flight, not the thread
                self.step_errors += 1
                self._fail_all(f"engine step failed: {type(exc).__name__}: {exc}", cancel=True)
                time.sleep(0.05)
                continue
            for completion in finished:
                with self._lock:
                    waiter = self._waiters.pop(completion.handle, None)
                if self._on_finished is not None:
                    self._on_finished(completion)
                if waiter is not None:
                    loop, future = waiter
                    loop.call_soon_threadsafe(_resolve, future, completion)

    def _fail_all(self, message: str, *, cancel: bool) -> None:
        with self._lock:
            waiters, self._waiters = self._waiters, {}
        for handle, (loop, future) in waiters.items():
            if cancel:
                self.engine.cancel(handle)
            try:
                loop.call_soon_threadsafe(_resolve, future, Completion(handle, None, message, {}))
            except RuntimeError:  # that event loop is closed: nobody waits any more
                pass

    def fail_in_flight(self) -> None:
        """Fail (and cancel) every request still waiting for its result: the drain's deadline."""
        self._fail_all(SHUTDOWN_MESSAGE, cancel=True)

    def stop_accepting(self) -> None:
        with self._lock:
            self._accepting = False

    def stop(self, timeout_s: float = 5.0) -> None:
        """Refuse new work, fail what is still in flight, and stop the thread (bounded wait)."""
        self.stop_accepting()
        self._fail_all(SHUTDOWN_MESSAGE, cancel=True)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)


def _resolve(future: asyncio.Future, completion: Completion) -> None:
    if not future.done():
        future.set_result(completion)
