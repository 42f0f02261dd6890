"""``POST /v1/completions``, OpenAI's legacy completions API over the engine.

The prompt is the sequence's prefix; ``max_tokens`` is the number of positions generated after it
(default: the rest of the model's sequence). A stream's intermediate chunks carry empty ``text``
deltas, so a client that joins the deltas gets exactly the final text, and the partially denoised
text in an extra ``denoising`` object ({"step", "steps", "text"}); the last chunk of each choice
holds the whole text with ``finish_reason: "length"``.
"""

from __future__ import annotations

import secrets
import time
import uuid
from typing import Any

from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response

from mdlm_fast.sampling.api import NOISE_REMOVALS
from mdlm_fast.sampling.engine import Completion, Request
from mdlm_fast.serve.errors import ApiError, Fields, bad_field, read_json_object, token_ids
from mdlm_fast.serve.service import Service
from mdlm_fast.serve.streaming import Progress, WatchedStream, sse, submitted, wait_unless_disconnected, watch

SEED_LIMIT = 2**63  # JSON clients (and OpenAI's) hold a seed as a signed 64-bit int


def parse_prompt(svc: Service, value: Any) -> list[int]:
    """A text, a list of token ids, or a one-element list of either; several prompts are refused."""
    if isinstance(value, list) and value and all(isinstance(v, (str, list)) for v in value):
        if len(value) != 1:
            raise bad_field("prompt", f"one prompt per request, got {len(value)}; use n for several samples")
        value = value[0]
    if isinstance(value, str):
        return svc.encode("prompt", value)
    return token_ids("prompt", value, svc.vocab_size, svc.mask_index)


def parse(svc: Service, body: dict) -> tuple[Request, dict]:
    if svc.tokenizer is None:
        raise ApiError(
            400,
            "this server has no tokenizer, so no text to complete: use /v1/generate (token ids)",
            code="no_tokenizer",
        )
    f = Fields(body)
    model = f.string("model", svc.settings.model_name)
    if model != svc.settings.model_name:
        raise ApiError(
            404,
            f"model: the model {model!r} does not exist; this server has {svc.settings.model_name!r}",
            param="model",
            code="model_not_found",
        )
    prompt = parse_prompt(svc, f.raw("prompt", ""))
    room = svc.model_length - len(prompt)
    if room < 1:
        raise bad_field(
            "prompt",
            f"is {len(prompt)} tokens, which leaves no position to generate in the model's "
            f"sequence of {svc.model_length}",
        )
    max_tokens = f.integer("max_tokens", room, minimum=1)
    if max_tokens > room:
        raise bad_field(
            "max_tokens",
            f"the prompt ({len(prompt)} tokens) plus max_tokens ({max_tokens}) is longer "
            f"than the model's sequence of {svc.model_length}",
        )
    length = len(prompt) + max_tokens
    n = f.integer("n", 1, minimum=1, maximum=svc.settings.max_n)
    stream = f.boolean("stream", False)
    options = f.raw("stream_options", {})
    if (
        not isinstance(options, dict)
        or set(options) - {"include_usage"}
        or not isinstance(options.get("include_usage", False), bool)
    ):
        raise bad_field("stream_options", 'must be an object like {"include_usage": true}')
    if options and not stream:
        raise bad_field("stream_options", "is only allowed with stream: true")
    steps = f.integer("steps", svc.settings.default_steps or length, minimum=1)
    schedule = f.raw("schedule", svc.settings.default_schedule)
    if not isinstance(schedule, (str, list)) and schedule is not svc.settings.default_schedule:
        raise bad_field("schedule", "must be a schedule spec string or a list of model indices, one per step")
    request = Request(
        n=n,
        length=length,
        steps=steps,
        schedule=schedule,
        seed=f.integer("seed", secrets.randbelow(SEED_LIMIT), minimum=0, maximum=SEED_LIMIT - 1),
        prefix=prompt or None,
        temperature=f.number("temperature", 1.0, minimum=0.0),
        noise_removal=f.string("noise_removal", "greedy", NOISE_REMOVALS),
    )
    f.neutral("top_p", (1, 1.0), "the sampler draws from the whole distribution")
    f.neutral("best_of", (1,), "one draw per sequence")
    f.neutral("echo", (False,), "the prompt is not repeated")
    f.neutral("logprobs", (), "no log-probabilities are returned")
    f.neutral("stop", ("", []), "a sequence is generated whole, not left to right")
    f.neutral("suffix", ("",), "use /v1/generate's given tokens")
    f.neutral("presence_penalty", (0, 0.0), "no penalties")
    f.neutral("frequency_penalty", (0, 0.0), "no penalties")
    f.neutral("logit_bias", ({},), "no logit bias")
    f.string("user", None)
    f.finish()
    return request, {
        "stream": stream,
        "include_usage": options.get("include_usage", False),
        "prompt_tokens": len(prompt),
    }


async def completions(svc: Service, http: HttpRequest) -> Response:
    request, how = parse(svc, await read_json_object(http, svc.settings.max_body_bytes))
    handle, future = svc.submit(request)
    head = {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": svc.settings.model_name,
    }
    prompt_tokens = how["prompt_tokens"]
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": request.n * (request.length - prompt_tokens),
        "total_tokens": prompt_tokens + request.n * (request.length - prompt_tokens),
    }

    def texts(tokens, partial: bool = False) -> list[str]:
        return [svc.decode(row[prompt_tokens:].tolist(), partial=partial) or "" for row in tokens]

    if not how["stream"]:
        completion = await wait_unless_disconnected(svc, handle, future, http.is_disconnected)
        if completion is None:
            return Response(status_code=499)
        if completion.tokens is None:
            raise svc.failure(completion)
        choices = [
            {"text": text, "index": i, "logprobs": None, "finish_reason": "length"}
            for i, text in enumerate(texts(completion.tokens))
        ]
        return JSONResponse({**head, "choices": choices, "usage": usage, "seed": request.seed})

    async def events():
        async for item in watch(
            svc.engine, handle, future, svc.settings.stream_every, svc.cancel, submitted(svc.engine, request)
        ):
            if isinstance(item, Progress):
                yield sse(
                    {
                        **head,
                        "choices": [
                            {
                                "text": "",
                                "index": i,
                                "logprobs": None,
                                "finish_reason": None,
                                "denoising": {"step": item.step, "steps": item.steps, "text": text},
                            }
                            for i, text in enumerate(texts(item.tokens, partial=True))
                        ],
                    }
                )
                continue
            completion: Completion = item
            if completion.tokens is None:
                yield sse(svc.failure(completion).payload())
                break
            for i, text in enumerate(texts(completion.tokens)):
                choice = {"text": text, "index": i, "logprobs": None, "finish_reason": "length"}
                yield sse({**head, "choices": [choice]})
            if how["include_usage"]:
                yield sse({**head, "choices": [], "usage": usage})
        yield sse("[DONE]")

    return WatchedStream(
        events(),
        on_close=lambda: svc.cancel(handle),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache"},
    )
