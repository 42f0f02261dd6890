"""The ASGI application: routes, OpenAI-shaped errors, request counting, and the engine loop's lifespan.

Routes: POST /v1/completions (completions.py), POST /v1/generate (native.py), GET /v1/models,
GET /health (503 while draining), GET /metrics (Prometheus text).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from mdlm_fast.serve import completions, native
from mdlm_fast.serve.errors import ApiError
from mdlm_fast.serve.service import Service

STOP_TIMEOUT_S = 5.0


def build_app(svc: Service) -> Starlette:
    def endpoint(name: str, handler: Callable[[Service, HttpRequest], Awaitable[Response]]):
        @functools.wraps(handler)
        async def run(http: HttpRequest) -> Response:
            try:
                response = await handler(svc, http)
            except ApiError as exc:
                response = exc.response()
            svc.metrics.count_request(name, response.status_code)
            return response

        return run

    async def models(svc: Service, http: HttpRequest) -> Response:
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {
                        "id": svc.settings.model_name,
                        "object": "model",
                        "created": svc.started,
                        "owned_by": "mdlm_fast",
                        "max_model_len": svc.model_length,
                        "engine": svc.settings.engine_kind,
                    }
                ],
            }
        )

    async def health(svc: Service, http: HttpRequest) -> Response:
        body = {
            "status": "ok" if svc.loop.accepting else "draining",
            "engine": svc.settings.engine_kind,
            "queue_depth": svc.engine.queue_depth,
            "rows_in_flight": svc.engine.rows_in_flight,
        }
        return JSONResponse(body, status_code=200 if svc.loop.accepting else 503)

    async def metrics(svc: Service, http: HttpRequest) -> Response:
        return PlainTextResponse(svc.metrics.render(svc.engine), media_type="text/plain; version=0.0.4")

    async def http_error(http: HttpRequest, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        detail = getattr(exc, "detail", None) or "internal error"
        return ApiError(
            status, f"{http.method} {http.url.path}: {detail}", code="not_found" if status == 404 else None
        ).response()

    @contextlib.asynccontextmanager
    async def lifespan(app: Any):
        svc.loop.start()
        try:
            yield
        finally:
            svc.loop.stop(STOP_TIMEOUT_S)

    routes = [
        Route("/v1/completions", endpoint("completions", completions.completions), methods=["POST"]),
        Route("/v1/generate", endpoint("generate", native.generate), methods=["POST"]),
        Route("/v1/models", endpoint("models", models), methods=["GET"]),
        Route("/health", endpoint("health", health), methods=["GET"]),
        Route("/metrics", endpoint("metrics", metrics), methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error})
