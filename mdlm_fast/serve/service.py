"""``Service``: what every endpoint shares -- the engine loop, the tokenizer, the settings, the metrics --
and the steps common to both generation endpoints (submit with errors mapped, decode)."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Any

from mdlm_fast.sampling.engine import EngineError, QueueFull, Request
from mdlm_fast.serve.errors import DEFAULT_MAX_BODY_BYTES, ApiError
from mdlm_fast.serve.loop import SHUTDOWN_MESSAGE, EngineLoop, ShuttingDown
from mdlm_fast.serve.metrics import ServerMetrics
from mdlm_fast.serve.streaming import MASK_PLACEHOLDER

# Fields an engine's ValueError may start with (sample()'s messages name their argument first).
_ENGINE_FIELDS = ("n", "length", "steps", "schedule", "seed", "prefix", "given", "temperature", "noise_removal")


@dataclass
class ServeSettings:
    model_name: str = "mdlm-fast"
    engine_kind: str = "sequential"
    default_steps: int | None = None  # None: as many steps as positions (generate's default)
    default_schedule: Any = None  # a spec, list or TimeSchedule; None: all heavy
    stream_every: int = 8  # steps between streamed snapshots
    max_n: int = 16  # sequences per request
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    retry_after_s: int = 1  # the Retry-After of a 429 (queue full) or 503 (draining)


class Service:
    def __init__(self, engine: Any, tokenizer: Any, settings: ServeSettings) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.settings = settings
        self.metrics = ServerMetrics()
        self.loop = EngineLoop(engine, on_finished=self.metrics.count_finished)
        self.started = int(time.time())
        if engine.default_length is None:
            raise ValueError("the engine's model has no config.model_length; the server needs a sequence length")
        self.model_length = int(engine.default_length)
        self.mask_index = int(engine.mask_index)
        self.vocab_size = int(engine.vocab_size)

    def submit(self, request: Request) -> tuple[int, asyncio.Future]:
        """Hand a request to the engine; its refusals become HTTP errors naming the field."""
        try:
            return self.loop.submit(request)
        except QueueFull as exc:
            raise ApiError(
                429,
                f"the server is at capacity ({exc}); retry later",
                kind="rate_limit_error",
                code="queue_full",
                headers={"Retry-After": str(self.settings.retry_after_s)},
            ) from None
        except ShuttingDown as exc:
            raise ApiError(
                503,
                str(exc),
                kind="server_error",
                code="shutting_down",
                headers={"Retry-After": str(self.settings.retry_after_s)},
            ) from None
        except (EngineError, ValueError, TypeError) as exc:
            message = str(exc)
            head = message.split(":", 1)[0].split(" ", 1)[0]
            param = head if head in _ENGINE_FIELDS else None
            raise ApiError(400, message, param=param) from None

    def cancel(self, handle: int) -> None:
        if self.loop.cancel(handle):
            self.metrics.count_cancelled()

    def decode(self, ids: list[int], *, partial: bool = False) -> str | None:
        """Text of ``ids``; masks (not yet revealed) shown as MASK_PLACEHOLDER where ``partial``."""
        if self.tokenizer is None:
            return None
        return self.tokenizer.decode(ids, mask_id=self.mask_index, mask_text=MASK_PLACEHOLDER if partial else "")

    def encode(self, param: str, text: str) -> list[int]:
        if self.tokenizer is None:
            raise ApiError(400, f"{param}: this server has no tokenizer; send token ids", param=param)
        ids = self.tokenizer.encode(text)
        if self.mask_index in ids:
            raise ApiError(
                400,
                f"{param}: holds the mask token's text (id {self.mask_index}); a prompt must be real tokens",
                param=param,
            )
        return ids

    @staticmethod
    def plain(value: Any) -> Any:
        """``value`` as strict JSON: tensors as lists, non-finite floats as null, anything else unknown as text."""
        if isinstance(value, dict):
            return {str(k): Service.plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [Service.plain(v) for v in value]
        if hasattr(value, "tolist"):
            return Service.plain(value.tolist())
        if isinstance(value, float):
            return value if math.isfinite(value) else None
        if value is None or isinstance(value, (bool, int, str)):
            return value
        return str(value)

    def failure(self, completion: Any) -> ApiError:
        if completion.error == SHUTDOWN_MESSAGE:
            return ApiError(503, completion.error, kind="server_error", code="shutting_down")
        return ApiError(500, completion.error or "the request failed", kind="server_error", code="generation_failed")
