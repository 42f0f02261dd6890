"""A live server on 127.0.0.1 in a thread of the test process, and an engine whose steps wait for a gate."""

from __future__ import annotations

import threading
import time

from mdlm_fast.serve.runner import bind, make_server
from mdlm_fast.serve.service import ServeSettings, Service

START_TIMEOUT_S = 20.0


class LiveServer:
    """``with LiveServer(engine, tokenizer) as server: server.url``; stops (and fails what is in flight) on exit."""

    def __init__(self, engine, tokenizer, **settings) -> None:
        self.service = Service(engine, tokenizer, ServeSettings(**settings))
        self.engine = engine

    def __enter__(self) -> LiveServer:
        sock = bind("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self._server = make_server(self.service, grace_period_s=2.0)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(15)

    def wait_until(self, condition, timeout_s: float = 10.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
            time.sleep(0.02)


class GatedEngine:
    """A real engine whose step() waits until the gate opens: holds requests in its queue on demand."""

    def __init__(self, engine) -> None:
        self._engine = engine
        self.gate = threading.Event()

    def step(self):
        while not self.gate.wait(0.05):
            pass
        return self._engine.step()

    def __getattr__(self, name):
        return getattr(self._engine, name)
