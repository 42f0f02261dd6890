"""HTTP errors in OpenAI's shape (``{"error": {"message", "type", "param", "code"}}``), the bounded
JSON body reader, and the field checks that name the field they refuse."""

from __future__ import annotations

import json
import math
from typing import Any, overload

from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse

DEFAULT_MAX_BODY_BYTES = 1 << 20


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        kind: str = "invalid_request_error",
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = status, message, param, kind, code
        self.headers = headers or {}

    def payload(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.payload(), status_code=self.status, headers=self.headers)


def bad_field(param: str, message: str) -> ApiError:
    return ApiError(400, f"{param}: {message}", param=param)


async def read_json_object(request: HttpRequest, max_bytes: int) -> dict:
    """The body as a JSON object; 413 past ``max_bytes`` (checked before and while reading), 400 if not JSON."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(
            413, f"request body of {declared} bytes is over the limit of {max_bytes} bytes", code="body_too_large"
        )
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise ApiError(413, f"request body is over the limit of {max_bytes} bytes", code="body_too_large")
    try:
        data = json.loads(bytes(body), parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"request body must be a JSON object, got {type(data).__name__}", code="invalid_json")
    return data


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


class Fields:
    """Typed access to a request body; ``finish()`` refuses the fields nobody asked for."""

    def __init__(self, body: dict) -> None:
        self.body = body
        self._seen: set[str] = set()

    def has(self, name: str) -> bool:
        self._seen.add(name)
        return self.body.get(name) is not None

    def raw(self, name: str, default: Any = None) -> Any:
        self._seen.add(name)
        value = self.body.get(name)
        return default if value is None else value

    def integer(self, name: str, default: Any, *, minimum: int | None = None, maximum: int | None = None) -> Any:
        value = self.raw(name, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad_field(name, f"must be an integer, got {json.dumps(value)}")
        if minimum is not None and value < minimum or maximum is not None and value > maximum:
            bounds = f"in [{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
            raise bad_field(name, f"must be an integer {bounds}, got {value}")
        return value

    def number(self, name: str, default: float, *, minimum: float | None = None) -> float:
        value = self.raw(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad_field(name, f"must be a finite number, got {json.dumps(value)}")
        if minimum is not None and value < minimum:
            raise bad_field(name, f"must be >= {minimum:g}, got {value}")
        return float(value)

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name, default)
        if not isinstance(value, bool):
            raise bad_field(name, f"must be true or false, got {json.dumps(value)}")
        return value

    @overload
    def string(self, name: str, default: str, choices: tuple[str, ...] | None = None) -> str: ...

    @overload
    def string(self, name: str, default: None, choices: tuple[str, ...] | None = None) -> str | None: ...

    def string(self, name: str, default: str | None, choices: tuple[str, ...] | None = None) -> str | None:
        value = self.raw(name, default)
        if value is None:
            return None
        if not isinstance(value, str):
            raise bad_field(name, f"must be a string, got {json.dumps(value)}")
        if choices is not None and value not in choices:
            raise bad_field(name, f"must be one of {list(choices)}, got {json.dumps(value)}")
        return value

    def neutral(self, name: str, accepted: tuple[Any, ...], why: str) -> None:
        """An OpenAI field this server has no such option for: its neutral values pass, others are refused."""
        value = self.raw(name)
        if value is not None and not any(
            value == a and isinstance(value, bool) == isinstance(a, bool) for a in accepted
        ):
            raise bad_field(name, f"{json.dumps(value)} is not supported ({why})")

    def finish(self) -> None:
        unknown = sorted(set(self.body) - self._seen)
        if unknown:
            raise ApiError(400, f"{unknown[0]}: unknown field", param=unknown[0], code="unknown_field")


def token_ids(name: str, value: Any, vocab_size: int, mask_index: int, *, mask_allowed: bool = False) -> list[int]:
    """A JSON list of token ids, each in the model's vocabulary (the mask id only where allowed)."""
    if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
        raise bad_field(name, "must be a list of integer token ids")
    bad = [v for v in value if not 0 <= v < vocab_size]
    if bad:
        raise bad_field(name, f"token id {bad[0]} is outside the vocabulary [0, {vocab_size})")
    if not mask_allowed and mask_index in value:
        raise bad_field(
            name,
            f"holds the mask id {mask_index} at position {value.index(mask_index)}; given tokens must be real tokens",
        )
    return value
