"""Running the app under uvicorn: a socket bound here (so port 0 works and the real port is announced),
SIGTERM as a drain (stop accepting, let in-flight requests finish within the grace period, fail the
rest), and exit status 0 after it."""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Callable

import uvicorn

from mdlm_fast.serve.app import build_app
from mdlm_fast.serve.service import Service


class _DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, svc: Service, on_ready: Callable[[], None] | None) -> None:
        super().__init__(config)
        self._svc = svc
        self._on_ready = on_ready
        self._deadline: threading.Timer | None = None

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets=sockets)
        if self._on_ready is not None and self.started:
            self._on_ready()

    def handle_exit(self, sig, frame) -> None:
        self._svc.loop.stop_accepting()  # requests on open keep-alive connections now get 503
        if self._deadline is None:
            # Fail what is still running shortly before uvicorn's grace period ends, so those clients
            # get a 503 answer rather than a dropped connection.
            grace = self.config.timeout_graceful_shutdown or 0.0
            self._deadline = threading.Timer(max(0.0, grace - min(1.0, grace / 2)), self._svc.loop.fail_in_flight)
            self._deadline.daemon = True
            self._deadline.start()
        super().handle_exit(sig, frame)


def bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def make_server(
    svc: Service,
    *,
    grace_period_s: float = 10.0,
    log_level: str = "warning",
    on_ready: Callable[[], None] | None = None,
) -> _DrainingServer:
    config = uvicorn.Config(
        build_app(svc),
        lifespan="on",
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=grace_period_s,  # type: ignore[arg-type]  # a float works
        timeout_keep_alive=5,
    )
    return _DrainingServer(config, svc, on_ready)


def serve(
    svc: Service,
    sock: socket.socket,
    *,
    grace_period_s: float = 10.0,
    log_level: str = "warning",
    on_ready: Callable[[], None] | None = None,
) -> int:
    """Serve on ``sock`` until SIGINT/SIGTERM; returns 0 after a drain."""
    server = make_server(svc, grace_period_s=grace_period_s, log_level=log_level, on_ready=on_ready)
    in_main = threading.current_thread() is threading.main_thread()
    # uvicorn re-raises the signal that stopped it, under the handler that was there before it ran:
    # a no-op SIGTERM handler turns a finished drain into exit status 0.
    previous = signal.signal(signal.SIGTERM, lambda *_: None) if in_main else None
    try:
        server.run(sockets=[sock])
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    return 0
