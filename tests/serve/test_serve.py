"""``mdlm-fast serve`` against a live server on 127.0.0.1: the official ``openai`` client, streaming over
httpx, the native endpoint, bad input, queue limits, disconnects and SIGTERM. Every request is bounded
in size (embedded light model, short sequences, few steps) and time (client timeouts)."""

import copy
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

from mdlm_fast.models.checkpoint import load_denoiser  # noqa: E402
from mdlm_fast.sampling.api import sample  # noqa: E402
from mdlm_fast.serve.baseline import SequentialEngine  # noqa: E402
from mdlm_fast.serve.engines import build_engine  # noqa: E402
from mdlm_fast.serve.streaming import MASK_PLACEHOLDER  # noqa: E402
from mdlm_fast.text.tokenizer import load_tokenizer  # noqa: E402
from tests.helpers.paths import REPO_ROOT  # noqa: E402
from tests.helpers.serve_helpers import GatedEngine, LiveServer  # noqa: E402

TIMEOUT = httpx.Timeout(30.0)
ENGINE_KINDS = ["sequential", "packed"]


@pytest.fixture(scope="module")
def light():
    return load_denoiser("embedded:light")


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("embedded")


@pytest.fixture(scope="module", params=ENGINE_KINDS)
def server(request, light, tokenizer):
    engine = build_engine(request.param, light, max_queue=64)
    with LiveServer(engine, tokenizer, engine_kind=request.param, stream_every=2, max_n=4, max_body_bytes=4096) as live:
        yield live


def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=30.0)


def expected_texts(light, tokenizer, prompt: str, max_tokens: int, n: int, seed: int, steps: int) -> list[str]:
    """What sample() alone gives for these arguments: the server must return exactly this."""
    ids = tokenizer.encode(prompt)
    tokens = sample(light, steps=steps, batch_size=n, length=len(ids) + max_tokens, seed=seed, prefix=ids).tokens
    return [tokenizer.decode(row[len(ids) :].tolist(), mask_id=light.mask_index) for row in tokens]


def events(response) -> list[tuple[str | None, str]]:
    """(event, data) of each server-sent event of a streaming httpx response."""
    out, event, data = [], None, []
    for line in response.iter_lines():
        if line.startswith("event: "):
            event = line[len("event: ") :]
        elif line.startswith("data: "):
            data.append(line[len("data: ") :])
        elif line == "" and data:
            out.append((event, "\n".join(data)))
            event, data = None, []
    return out


def test_openai_client_gets_what_sample_gives(server, light, tokenizer):
    result = client(server).completions.create(
        model="mdlm-fast", prompt="ROMEO:", max_tokens=12, n=2, seed=5, extra_body={"steps": 6}
    )
    assert [c.index for c in result.choices] == [0, 1]
    assert all(c.finish_reason == "length" for c in result.choices)
    assert [c.text for c in result.choices] == expected_texts(light, tokenizer, "ROMEO:", 12, 2, 5, 6)
    prompt_tokens = len(tokenizer.encode("ROMEO:"))
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (prompt_tokens, 24)
    assert result.usage.total_tokens == prompt_tokens + 24
    other = client(server).completions.create(
        model="mdlm-fast", prompt="ROMEO:", max_tokens=12, n=2, seed=6, extra_body={"steps": 6}
    )
    assert [c.text for c in other.choices] != [c.text for c in result.choices]


def test_openai_client_stream_joins_to_the_whole_text(server, light, tokenizer):
    chunks = list(
        client(server).completions.create(
            model="mdlm-fast",
            prompt="KING:",
            max_tokens=10,
            seed=9,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"steps": 4},
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == expected_texts(light, tokenizer, "KING:", 10, 1, 9, 4)[0]
    partial = [
        c.choices[0].model_extra["denoising"] for c in chunks if c.choices and c.choices[0].finish_reason is None
    ]
    assert partial and partial[0]["step"] == 0 and partial[0]["steps"] == 4
    assert partial[0]["text"].count(MASK_PLACEHOLDER) >= 1  # masks shown, not dropped
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10


def test_native_generate_streams_progress_then_tokens(server, light):
    body = {"prefix": [5, 6, 7], "length": 12, "steps": 6, "seed": 2, "stream": True}
    with httpx.stream("POST", server.url + "/v1/generate", json=body, timeout=TIMEOUT) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        got = events(response)
    kinds = [e for e, _ in got]
    assert kinds[0] == "progress" and kinds[-1] == "done" and set(kinds) == {"progress", "done"}
    first, done = json.loads(got[0][1]), json.loads(got[-1][1])
    assert first["tokens"][0][:3] == [5, 6, 7] and light.mask_index in first["tokens"][0]
    want = sample(light, steps=6, batch_size=1, length=12, seed=2, prefix=[5, 6, 7]).tokens.tolist()
    assert done["tokens"] == want
    assert done["stats"]["steps"] == 6 and done["seed"] == 2
    plain = httpx.post(
        server.url + "/v1/generate", json={**body, "stream": False, "return_text": False}, timeout=TIMEOUT
    ).json()
    assert plain["tokens"] == want and "texts" not in plain


def test_models_health_and_metrics(server):
    models = client(server).models.list()
    assert [m.id for m in models.data] == ["mdlm-fast"]
    health = httpx.get(server.url + "/health", timeout=TIMEOUT)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    httpx.post(server.url + "/v1/generate", json={"length": 6, "steps": 3}, timeout=TIMEOUT).raise_for_status()
    text = httpx.get(server.url + "/metrics", timeout=TIMEOUT).text
    lines = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert lines["mdlm_fast_queue_depth"] == "0" and lines["mdlm_fast_rows_in_flight"] == "0"
    assert int(lines['mdlm_fast_engine_requests_total{outcome="done"}']) >= 1
    assert int(lines['mdlm_fast_request_latency_seconds_bucket{le="+Inf"}']) >= 1
    assert float(lines["mdlm_fast_tokens_per_second"]) > 0
    assert int(lines['mdlm_fast_http_requests_total{endpoint="generate",status="200"}']) >= 1


BAD = [  # (path, raw body, status, param, text the message holds)
    ("/v1/completions", b"{not json", 400, None, "not valid JSON"),
    ("/v1/completions", b"[1, 2]", 400, None, "JSON object"),
    ("/v1/completions", b'{"prompt": "a", "bogus": 1}', 400, "bogus", "unknown field"),
    ("/v1/completions", b'{"prompt": "a", "n": 0}', 400, "n", "[1, 4]"),
    ("/v1/completions", b'{"prompt": "a", "n": 5}', 400, "n", "[1, 4]"),
    ("/v1/completions", b'{"prompt": "a", "temperature": -1}', 400, "temperature", ">= 0"),
    ("/v1/completions", b'{"prompt": "a", "seed": -3}', 400, "seed", "integer"),
    ("/v1/completions", b'{"prompt": "a", "max_tokens": 1000}', 400, "max_tokens", "longer"),
    ("/v1/completions", b'{"prompt": "a", "steps": 0}', 400, "steps", ">= 1"),
    ("/v1/completions", b'{"prompt": "a", "top_p": 0.5}', 400, "top_p", "not supported"),
    ("/v1/completions", b'{"prompt": "a [MASK] b"}', 400, "prompt", "mask"),
    ("/v1/completions", b'{"prompt": ["a", "b"]}', 400, "prompt", "one prompt"),
    ("/v1/completions", b'{"prompt": [8192]}', 400, "prompt", "mask id"),
    ("/v1/completions", b'{"prompt": "a", "schedule": "nonsense"}', 400, "schedule", "schedule"),
    ("/v1/completions", b'{"prompt": "a", "stream": "yes"}', 400, "stream", "true or false"),
    ("/v1/completions", b'{"model": "gpt-4", "prompt": "a"}', 404, "model", "does not exist"),
    ("/v1/generate", b'{"length": 4, "prefix": [1, 2, 3, 4, 5]}', 400, "prefix", "length is 4"),
    ("/v1/generate", b'{"length": 300}', 400, "length", "[1, 256]"),
    ("/v1/generate", b'{"prefix": [1, 99999]}', 400, "prefix", "outside the vocabulary"),
    ("/v1/generate", b'{"time_schedule": {"x": 1}}', 400, "time_schedule", ""),
    ("/v1/generate", b'{"noise_removal": "best"}', 400, "noise_removal", "one of"),
    ("/v1/generate", b'{"n": 2, "prefix": [[1, 2], [3]]}', 400, "prefix", "same number"),
    ("/v1/generate", b'{"n": 3, "prefix": [[1, 2], [3, 4]]}', 400, "prefix", "n is 3"),
]


def test_bad_input_is_400_in_openai_shape_naming_the_field(server):
    long_prompt = json.dumps({"prompt": list(range(1, 300))}).encode()
    cases = BAD + [("/v1/completions", long_prompt, 400, "prompt", "no position")]
    for path, raw, status, param, text in cases:
        response = httpx.post(
            server.url + path, content=raw, timeout=TIMEOUT, headers={"content-type": "application/json"}
        )
        assert response.status_code == status, (raw, response.text)
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["param"] == param and text in error["message"], (raw, error)
    # Infilling: a given row of the wrong length is refused naming it; a right one keeps its tokens.
    response = httpx.post(server.url + "/v1/generate", json={"length": 4, "given": [1, 8192, 2]}, timeout=TIMEOUT)
    assert response.status_code == 400 and response.json()["error"]["param"] == "given"
    response = httpx.post(
        server.url + "/v1/generate", json={"length": 4, "steps": 2, "given": [1, 8192, 8192, 2]}, timeout=TIMEOUT
    )
    assert response.status_code == 200, response.text
    (row,) = response.json()["tokens"]
    assert row[0] == 1 and row[3] == 2 and 8192 not in row
    assert server.engine.rows_in_flight == 0 and server.engine.queue_depth == 0


def test_body_over_the_limit_is_413(server):
    big = json.dumps({"prompt": "x" * 5000}).encode()
    declared = httpx.post(server.url + "/v1/completions", content=big, timeout=TIMEOUT)
    chunked = httpx.post(server.url + "/v1/completions", content=iter([big[:3000], big[3000:]]), timeout=TIMEOUT)
    for response in (declared, chunked):
        assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"


def test_queue_full_is_429_with_retry_after(light, tokenizer):
    engine = GatedEngine(SequentialEngine(light, max_queue=1))
    with LiveServer(engine, tokenizer) as live:
        first: dict = {}
        waiting = threading.Thread(
            target=lambda: first.update(
                r=httpx.post(live.url + "/v1/generate", json={"length": 6, "steps": 2}, timeout=TIMEOUT)
            )
        )
        waiting.start()
        live.wait_until(lambda: engine.queue_depth == 1, what="the first request to wait in the queue")
        refused = httpx.post(live.url + "/v1/completions", json={"prompt": "a", "max_tokens": 4}, timeout=TIMEOUT)
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["code"] == "queue_full"
        engine.gate.set()
        waiting.join(30)
        assert first["r"].status_code == 200


def test_client_leaving_mid_stream_frees_its_rows(light, tokenizer):
    engine = build_engine(ENGINE_KINDS[-1], light)
    with LiveServer(engine, tokenizer) as live:
        body = {"length": 128, "steps": 128, "stream": True}
        with httpx.stream("POST", live.url + "/v1/generate", json=body, timeout=TIMEOUT) as response:
            lines = response.iter_lines()  # held: dropping the iterator would close the connection already
            next(lines)  # the first progress event: the request is in the engine
            live.wait_until(lambda: engine.rows_in_flight > 0, what="rows in flight")
        live.wait_until(
            lambda: engine.rows_in_flight == 0 and engine.queue_depth == 0,
            timeout_s=5,
            what="the rows of the abandoned request to be freed",
        )
        live.wait_until(lambda: live.service.metrics.finished["cancelled"] == 1, timeout_s=5, what="the cancel")
        assert live.service.loop.pending == 0


def test_client_leaving_a_plain_request_frees_its_rows(light, tokenizer):
    engine = build_engine(ENGINE_KINDS[-1], light)
    with LiveServer(engine, tokenizer) as live:
        host, port = live.url.rsplit("//", 1)[1].split(":")
        body = json.dumps({"length": 128, "steps": 128}).encode()
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(
                b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            live.wait_until(lambda: engine.rows_in_flight > 0, what="rows in flight")
        live.wait_until(
            lambda: engine.rows_in_flight == 0 and live.service.metrics.finished["cancelled"] == 1,
            timeout_s=5,
            what="the rows of the abandoned request to be freed",
        )
        assert live.service.loop.pending == 0


def test_a_failed_forward_is_a_500_and_the_server_goes_on(light, tokenizer):
    broken = copy.deepcopy(light)
    with torch.no_grad():
        broken.output_layer.linear.bias.fill_(float("nan"))
    engine = build_engine(ENGINE_KINDS[-1], broken)
    with LiveServer(engine, tokenizer) as live:
        for _ in range(2):  # the second request is served (and fails alike): nothing hangs
            response = httpx.post(live.url + "/v1/generate", json={"length": 4, "steps": 2}, timeout=TIMEOUT)
            assert response.status_code == 500, response.text
            error = response.json()["error"]
            assert error["type"] == "server_error" and "NaN or inf" in error["message"], error
        assert httpx.get(live.url + "/health", timeout=TIMEOUT).json()["status"] == "ok"
        assert engine.rows_in_flight == 0


def test_a_server_without_a_tokenizer_speaks_token_ids_only(light):
    with LiveServer(SequentialEngine(light), None) as live:
        refused = httpx.post(live.url + "/v1/completions", json={"prompt": [5, 6]}, timeout=TIMEOUT)
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "no_tokenizer"
        text = httpx.post(live.url + "/v1/generate", json={"length": 4, "return_text": True}, timeout=TIMEOUT)
        assert text.status_code == 400 and text.json()["error"]["param"] == "return_text"
        ids = httpx.post(live.url + "/v1/generate", json={"length": 4, "steps": 2, "seed": 1}, timeout=TIMEOUT).json()
        want = sample(light, steps=2, batch_size=1, length=4, seed=1).tokens.tolist()
        assert "texts" not in ids and ids["tokens"] == want


def start_server(tmp_path, *flags):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mdlm_fast.cli",
            "serve",
            "--port",
            "0",
            "--heavy",
            "embedded:light",
            "--tokenizer",
            "embedded",
            "--engine",
            "sequential",
            "--threads",
            "1",
            *flags,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=tmp_path,
        text=True,
    )
    line = proc.stderr.readline()  # the announcement, once the app has started
    if "listening on http://127.0.0.1:" not in line:
        proc.kill()
        raise AssertionError(line + proc.stderr.read())
    return proc, line.split("listening on ")[1].split()[0]


def in_flight_request(url: str, body: dict) -> tuple[threading.Thread, dict]:
    """A request sent from a thread, returned once the server's engine holds its rows."""
    result: dict = {}
    thread = threading.Thread(
        target=lambda: result.update(r=httpx.post(url + "/v1/generate", json=body, timeout=TIMEOUT))
    )
    thread.start()
    deadline = time.monotonic() + 20
    while httpx.get(url + "/health", timeout=TIMEOUT).json()["rows_in_flight"] == 0:
        assert time.monotonic() < deadline and thread.is_alive(), "the request never reached the engine"
        time.sleep(0.01)
    return thread, result


@pytest.mark.parametrize("grace, length, answer", [("20", 16, 200), ("1", 256, 503)])
def test_sigterm_finishes_or_fails_in_flight_requests_and_exits_zero(tmp_path, grace, length, answer):
    """Within the grace period the request finishes; past it, it is answered 503; either way exit 0."""
    proc, url = start_server(tmp_path, "--grace-period", grace)
    try:
        thread, result = in_flight_request(url, {"length": length, "steps": length, "seed": 4})
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0, proc.stderr.read()
        thread.join(10)
        assert result["r"].status_code == answer, result["r"].text
        if answer == 200:
            assert len(result["r"].json()["tokens"][0]) == length
        else:
            assert result["r"].json()["error"]["code"] == "shutting_down"
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/health", timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
