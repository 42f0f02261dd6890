"""``POST /v1/generate``: what sample() offers, token ids in and out, with the request's stats.

Body fields: n, length (default the model's), steps (default the server's, else the length),
schedule (a spec or a list of model indices) or time_schedule (the JSON object a schedule file
holds), seed, prefix (token ids, [P] or [n, P]) or prompt (text), given (token ids with the mask id
where generated: infilling, where the engine has it), temperature, noise_removal, stream,
stream_every, return_text. A stream sends ``progress`` events ({"step", "steps", "tokens",
"texts"}) and one ``done`` event holding the whole answer (or ``error``).
"""

from __future__ import annotations

import secrets
import uuid
from typing import Any

from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response

from mdlm_fast.sampling.api import NOISE_REMOVALS
from mdlm_fast.sampling.engine import Request
from mdlm_fast.schedules.model_schedule import ScheduleError
from mdlm_fast.schedules.time_schedule import TimeSchedule
from mdlm_fast.serve.completions import SEED_LIMIT
from mdlm_fast.serve.errors import Fields, bad_field, read_json_object, token_ids
from mdlm_fast.serve.service import Service
from mdlm_fast.serve.streaming import Progress, WatchedStream, sse, submitted, wait_unless_disconnected, watch


def _ids(svc: Service, name: str, value: Any, *, mask_allowed: bool = False) -> list:
    """[ids] or [[ids], ...] (one row per sequence)."""
    if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
        if len({len(row) for row in value}) != 1:
            raise bad_field(name, "rows must all have the same number of token ids")
        return [token_ids(name, row, svc.vocab_size, svc.mask_index, mask_allowed=mask_allowed) for row in value]
    return token_ids(name, value, svc.vocab_size, svc.mask_index, mask_allowed=mask_allowed)


def parse(svc: Service, body: dict) -> tuple[Request, dict]:
    f = Fields(body)
    n = f.integer("n", 1, minimum=1, maximum=svc.settings.max_n)
    length = f.integer("length", svc.model_length, minimum=1, maximum=svc.model_length)
    steps = f.integer("steps", svc.settings.default_steps or length, minimum=1)
    if f.has("schedule") and f.has("time_schedule"):
        raise bad_field("time_schedule", "give schedule or time_schedule, not both")
    schedule = f.raw("schedule", svc.settings.default_schedule)
    if f.has("schedule") and not isinstance(schedule, (str, list)):
        raise bad_field("schedule", "must be a schedule spec string or a list of model indices, one per step")
    if f.has("time_schedule"):
        try:
            schedule = TimeSchedule.from_dict(f.raw("time_schedule"), where="time_schedule")
        except (ScheduleError, ValueError, TypeError) as exc:
            raise bad_field("time_schedule", str(exc)) from None
    if f.has("prefix") and f.has("prompt"):
        raise bad_field("prompt", "give prefix (token ids) or prompt (text), not both")
    prefix = _ids(svc, "prefix", f.raw("prefix")) if f.has("prefix") else None
    if f.has("prompt"):
        text = f.string("prompt", "")
        prefix = svc.encode("prompt", text) or None
    longest = max((len(r) for r in prefix), default=0) if prefix and isinstance(prefix[0], list) else len(prefix or [])
    if longest > length:
        raise bad_field(
            "prompt" if f.has("prompt") else "prefix", f"is {longest} tokens but the sequence length is {length}"
        )
    if prefix and isinstance(prefix[0], list) and len(prefix) != n:
        raise bad_field("prefix", f"has {len(prefix)} rows but n is {n}")
    given = _ids(svc, "given", f.raw("given"), mask_allowed=True) if f.has("given") else None
    if given and isinstance(given[0], list) and len(given) != n:
        raise bad_field("given", f"has {len(given)} rows but n is {n}")
    request = Request(
        n=n,
        length=length,
        steps=steps,
        schedule=schedule,
        seed=f.integer("seed", secrets.randbelow(SEED_LIMIT), minimum=0, maximum=SEED_LIMIT - 1),
        prefix=prefix,
        given=given,
        temperature=f.number("temperature", 1.0, minimum=0.0),
        noise_removal=f.string("noise_removal", "greedy", NOISE_REMOVALS),
    )
    how = {
        "stream": f.boolean("stream", False),
        "stream_every": f.integer("stream_every", svc.settings.stream_every, minimum=1),
        "return_text": f.boolean("return_text", svc.tokenizer is not None),
    }
    if how["return_text"] and svc.tokenizer is None:
        raise bad_field("return_text", "this server has no tokenizer")
    f.finish()
    return request, how


async def generate(svc: Service, http: HttpRequest) -> Response:
    request, how = parse(svc, await read_json_object(http, svc.settings.max_body_bytes))
    handle, future = svc.submit(request)
    head = {
        "id": f"gen-{uuid.uuid4().hex}",
        "object": "generation",
        "model": svc.settings.model_name,
        "seed": request.seed,
        "length": request.length,
        "steps": request.steps,
    }

    def payload(tokens, partial: bool = False) -> dict:
        rows = tokens.tolist()
        out = {"tokens": rows}
        if how["return_text"]:
            out["texts"] = [svc.decode(row, partial=partial) for row in rows]
        return out

    if not how["stream"]:
        completion = await wait_unless_disconnected(svc, handle, future, http.is_disconnected)
        if completion is None:
            return Response(status_code=499)
        if completion.tokens is None:
            raise svc.failure(completion)
        return JSONResponse({**head, **payload(completion.tokens), "stats": svc.plain(completion.stats)})

    async def events():
        async for item in watch(
            svc.engine, handle, future, how["stream_every"], svc.cancel, submitted(svc.engine, request)
        ):
            if isinstance(item, Progress):
                yield sse(
                    {"step": item.step, "steps": item.steps, **payload(item.tokens, partial=True)}, event="progress"
                )
            elif item.tokens is None:
                yield sse(svc.failure(item).payload(), event="error")
            else:
                yield sse({**head, **payload(item.tokens), "stats": svc.plain(item.stats)}, event="done")

    return WatchedStream(
        events(),
        on_close=lambda: svc.cancel(handle),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache"},
    )
