"""The gateway's raw HTTP surface, byte by byte, with aiohttp as the client.

The SDK tests (test_openai_e2e.py) show that clients work; these show what they see on the
wire: SSE framing, headers, every validation error, the error format of every failure, and
the timing of streamed chunks.
"""

from __future__ import annotations

import asyncio
import gzip
import itertools
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest
from multidict import CIMultiDictProxy

from proxy.app_state import UPSTREAM
from tests.conftest import (
    ADMIN_TOKEN,
    FakeUpstream,
    Gateway,
    GatewayFactory,
    free_port,
    openai_provider,
)
from tests.fakes.openai_upstream import COMPLETION_TOKENS, PROMPT_TOKENS, TEXT

PROVIDER_KEY = "sk-test-provider-key"  # what openai_provider() configures
UNSET_VAR = "WOOZLIT_TEST_UNSET_VAR"
MAX_BODY = 1024
MODEL = "woozlit/gpt-4o-mini"
HELLO = [{"role": "user", "content": "Hello!"}]
NO_BODY: Any = object()  # `body=None` sends the JSON `null`

MODELS = {
    MODEL: [{"provider": "openai", "model": "gpt-4o-mini"}],
    "woozlit/slow": [{"provider": "openai", "model": "slow"}],
    "woozlit/endless": [{"provider": "openai", "model": "endless"}],
    "woozlit/truncated": [{"provider": "openai", "model": "truncated"}],
    "woozlit/midstream-error": [{"provider": "openai", "model": "midstream-error"}],
    "woozlit/bad-request": [{"provider": "openai", "model": "error-400"}],
    "woozlit/bad-credentials": [{"provider": "openai", "model": "error-401"}],
    "woozlit/overloaded": [{"provider": "openai", "model": "error-429"}],
    "woozlit/hang": [{"provider": "impatient", "model": "hang"}],
    "woozlit/stall": [{"provider": "impatient", "model": "slow"}],
    "woozlit/refused": [{"provider": "closed", "model": "gpt-4o-mini"}],
    "woozlit/keyless": [{"provider": "keyless", "model": "gpt-4o"}],
}


@dataclass
class Answer:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


@pytest.fixture
async def gw(
    gateway: GatewayFactory, fake_openai: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> Gateway:
    monkeypatch.delenv(UNSET_VAR, raising=False)
    providers = {
        "openai": openai_provider(fake_openai.url),
        "impatient": openai_provider(fake_openai.url, timeouts={"first_byte": 0.3, "idle": 0.3}),
        "closed": openai_provider(f"http://127.0.0.1:{free_port()}/v1"),
        "keyless": {
            "kind": "openai",
            "base_url": "https://api.openai.com/v1",
            "api_key": "${" + UNSET_VAR + ":-}",
        },
    }
    return await gateway(providers, MODELS, server={"max_body_bytes": MAX_BODY})


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def send(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    body: Any = NO_BODY,
    data: Any = None,
    headers: dict[str, str] | None = None,
    skip_auto_headers: Iterable[str] = (),
) -> Answer:
    if body is not NO_BODY:
        data = orjson.dumps(body)
        headers = {"Content-Type": "application/json", **(headers or {})}
    async with http.request(
        method, url, data=data, headers=headers, skip_auto_headers=skip_auto_headers
    ) as resp:
        return Answer(resp.status, resp.headers, await resp.read())


async def chat(
    http: aiohttp.ClientSession, gw: Gateway, body: Any, headers: dict[str, str] | None = None
) -> Answer:
    return await send(
        http,
        "POST",
        gw.api + "/chat/completions",
        body=body,
        headers={**gw.auth(), **(headers or {})},
    )


def assert_error(answer: Answer, status: int, *needles: str) -> str:
    """The answer is `status` with exactly `{"error": "<message>"}`; return the message."""
    assert answer.status == status, answer.body
    assert answer.headers["Content-Type"].startswith("application/json")
    body = answer.json()
    assert list(body) == ["error"]
    assert isinstance(body["error"], str) and body["error"]
    for needle in needles:
        assert needle in body["error"]
    return str(body["error"])


def sse_events(answer: Answer) -> list[bytes]:
    """The data of each event, checking the framing: `data: <one line>\\n\\n`, then EOF."""
    assert answer.status == 200, answer.body
    assert answer.headers["Content-Type"].startswith("text/event-stream")
    raw = answer.body
    assert raw.endswith(b"\n\n")
    events = raw[:-2].split(b"\n\n")
    for event in events:
        assert event.startswith(b"data: "), event
        assert b"\n" not in event and b"\r" not in event, event
    return [e[len(b"data: ") :] for e in events]


def chunks_of(events: list[bytes]) -> list[dict[str, Any]]:
    """The JSON chunks of a stream that ended with [DONE] and nothing after it."""
    assert events[-1] == b"[DONE]"
    assert b"[DONE]" not in events[:-1]
    return [orjson.loads(e) for e in events[:-1]]


def assert_chunks(chunks: list[dict[str, Any]], model: str = MODEL) -> None:
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1
    assert ids.pop().startswith("woozlit-")
    assert {c["model"] for c in chunks} == {model}
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert all(isinstance(c["created"], int) for c in chunks)


def text_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


# -- the spec's examples ------------------------------------------------------------------


@pytest.mark.parametrize("accept", [None, "*/*"], ids=["no-accept", "curl-accept"])
async def test_curl_example_streams(gw, http, accept):
    # Byte for byte what the spec's curl example sends (curl itself adds `Accept: */*`).
    data = b"""{
    "model": "woozlit/gpt-4o-mini",
    "messages": [
      {"role": "user", "content": "Hello!"}
    ]
  }"""
    headers = {"Content-Type": "application/json", **gw.auth()}
    if accept:
        headers["Accept"] = accept
    answer = await send(
        http,
        "POST",
        gw.api + "/chat/completions",
        data=data,
        headers=headers,
        skip_auto_headers=() if accept else ("Accept",),
    )
    assert answer.headers["Cache-Control"] == "no-cache"
    assert answer.headers["X-Accel-Buffering"] == "no"
    assert answer.body.endswith(b'"}]}\n\ndata: [DONE]\n\n')
    chunks = chunks_of(sse_events(answer))
    assert_chunks(chunks)
    assert text_of(chunks) == "".join(TEXT)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all("usage" not in c or c["usage"] is None for c in chunks)  # not asked for


async def test_python_requests_example_gets_json(gw, http, fake_openai):
    # What `requests.post(API_URL, headers=headers, json=data)` sends: Accept */*, stream False.
    answer = await chat(http, gw, {"model": MODEL, "messages": HELLO, "stream": False})
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("application/json")
    body = answer.json()
    assert set(body) >= {"id", "object", "created", "model", "choices", "usage"}
    assert body["id"].startswith("woozlit-")
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["model"] == MODEL
    assert body["choices"][0]["index"] == 0
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["choices"][0]["message"]["content"] == "".join(TEXT)
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": COMPLETION_TOKENS,
        "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
    }
    assert fake_openai.record.requests[-1]["stream"] is False


@pytest.mark.parametrize(
    ("accept", "streams"),
    [
        ("application/json", False),
        ("Application/JSON; charset=utf-8", False),
        ("application/json, text/plain, */*", False),
        ("text/event-stream, application/json", True),
        ("text/event-stream", True),
        ("*/*", True),
    ],
)
async def test_accept_decides_when_stream_is_omitted(gw, http, fake_openai, accept, streams):
    answer = await chat(http, gw, {"model": MODEL, "messages": HELLO}, {"Accept": accept})
    assert answer.status == 200
    if streams:
        assert text_of(chunks_of(sse_events(answer))) == "".join(TEXT)
    else:
        assert answer.headers["Content-Type"].startswith("application/json")
        assert answer.json()["choices"][0]["message"]["content"] == "".join(TEXT)
    assert fake_openai.record.requests[-1]["stream"] is streams


@pytest.mark.parametrize("stream", [True, False])
async def test_explicit_stream_beats_accept(gw, http, stream):
    accept = "application/json" if stream else "text/event-stream"
    answer = await chat(
        http, gw, {"model": MODEL, "messages": HELLO, "stream": stream}, {"Accept": accept}
    )
    ctype = answer.headers["Content-Type"]
    assert ctype.startswith("text/event-stream" if stream else "application/json")


@pytest.mark.parametrize("prefix", ["/api/woozlit/v1", "/v1"])
async def test_both_prefixes(gw, http, prefix):
    url = gw.base_url + prefix
    streamed = await send(
        http,
        "POST",
        url + "/chat/completions",
        body={"model": MODEL, "messages": HELLO, "stream": True},
        headers=gw.auth(),
    )
    assert text_of(chunks_of(sse_events(streamed))) == "".join(TEXT)
    whole = await send(
        http,
        "POST",
        url + "/chat/completions",
        body={"model": MODEL, "messages": HELLO, "stream": False},
        headers=gw.auth(),
    )
    assert whole.json()["model"] == MODEL
    models = await send(http, "GET", url + "/models", headers=gw.auth())
    assert models.status == 200
    assert [m["id"] for m in models.json()["data"]] == list(MODELS)


# -- validation ---------------------------------------------------------------------------


def with_(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": HELLO, "stream": False, **fields}


INVALID = {
    "string body": ("just a string", "JSON object"),
    "number body": (42, "JSON object"),
    "null body": (None, "JSON object"),
    "array body": ([with_()], "JSON object"),
    "model missing": ({"messages": HELLO}, "'model'"),
    "model not string": (with_(model=4), "'model'"),
    "model null": (with_(model=None), "'model'"),
    "model without prefix": (with_(model="gpt-4o-mini"), "'model'"),
    "model unknown": (with_(model="woozlit/gpt-5"), "'woozlit/gpt-5'"),
    "messages missing": ({"model": MODEL}, "'messages'"),
    "messages empty": (with_(messages=[]), "'messages'"),
    "messages string": (with_(messages="Hello!"), "'messages'"),
    "messages object": (with_(messages={"role": "user", "content": "x"}), "'messages'"),
    "message not object": (with_(messages=["Hello!"]), "'messages[0]'"),
    "message null": (with_(messages=[None]), "'messages[0]'"),
    "role bad": (with_(messages=[{"role": "robot", "content": "x"}]), "'messages[0].role'"),
    "role missing": (with_(messages=[{"content": "x"}]), "'messages[0].role'"),
    "role not string": (with_(messages=[{"role": 1, "content": "x"}]), "'messages[0].role'"),
    "second message bad": (
        with_(messages=[*HELLO, {"role": "user"}]),
        "'messages[1].content'",
    ),
    "content missing": (with_(messages=[{"role": "user"}]), "'messages[0].content'"),
    "content null": (
        with_(messages=[{"role": "user", "content": None}]),
        "'messages[0].content'",
    ),
    "content number": (
        with_(messages=[{"role": "user", "content": 42}]),
        "'messages[0].content'",
    ),
    "content object": (
        with_(messages=[{"role": "user", "content": {"text": "x"}}]),
        "'messages[0].content'",
    ),
    "assistant null content without tool_calls": (
        with_(messages=[*HELLO, {"role": "assistant", "content": None}]),
        "'messages[1].content'",
    ),
    "tool_calls string, string content": (
        with_(messages=[*HELLO, {"role": "assistant", "content": "x", "tool_calls": "bad"}]),
        "'messages[1].tool_calls'",
    ),
    "tool_calls string, null content": (
        with_(messages=[*HELLO, {"role": "assistant", "content": None, "tool_calls": "bad"}]),
        "'messages[1].tool_calls'",
    ),
    "tool_calls of numbers": (
        with_(messages=[*HELLO, {"role": "assistant", "content": None, "tool_calls": [1]}]),
        "'messages[1].tool_calls'",
    ),
    "tool_calls empty, null content": (
        with_(messages=[*HELLO, {"role": "assistant", "content": None, "tool_calls": []}]),
        "'messages[1].content'",
    ),
    "part not object": (
        with_(messages=[{"role": "user", "content": ["Hello"]}]),
        "'messages[0].content[0]'",
    ),
    "part without type": (
        with_(messages=[{"role": "user", "content": [{"text": "Hello"}]}]),
        "'messages[0].content[0]'",
    ),
    "text part without text": (
        with_(messages=[{"role": "user", "content": [{"type": "text", "text": 5}]}]),
        "'messages[0].content[0].text'",
    ),
    "temperature -0.1": (with_(temperature=-0.1), "'temperature'"),
    "temperature 2.1": (with_(temperature=2.1), "'temperature'"),
    "temperature string": (with_(temperature="1"), "'temperature'"),
    "temperature true": (with_(temperature=True), "'temperature'"),
    "top_p 1.5": (with_(top_p=1.5), "'top_p'"),
    "top_p -0.1": (with_(top_p=-0.1), "'top_p'"),
    "top_p string": (with_(top_p="0.5"), "'top_p'"),
    "frequency_penalty -2.1": (with_(frequency_penalty=-2.1), "'frequency_penalty'"),
    "frequency_penalty 2.1": (with_(frequency_penalty=2.1), "'frequency_penalty'"),
    "presence_penalty -3": (with_(presence_penalty=-3), "'presence_penalty'"),
    "presence_penalty 2.5": (with_(presence_penalty=2.5), "'presence_penalty'"),
    "presence_penalty false": (with_(presence_penalty=False), "'presence_penalty'"),
    "max_tokens 0": (with_(max_tokens=0), "'max_tokens'"),
    "max_tokens -1": (with_(max_tokens=-1), "'max_tokens'"),
    "max_tokens 1.5": (with_(max_tokens=1.5), "'max_tokens'"),
    "max_tokens 10.0": (with_(max_tokens=10.0), "'max_tokens'"),
    "max_tokens string": (with_(max_tokens="10"), "'max_tokens'"),
    "max_tokens true": (with_(max_tokens=True), "'max_tokens'"),
    "max_completion_tokens 0": (with_(max_completion_tokens=0), "'max_completion_tokens'"),
    "stream yes": (with_(stream="yes"), "'stream'"),
    "stream 1": (with_(stream=1), "'stream'"),
    "stream_options string": (with_(stream=True, stream_options="x"), "'stream_options'"),
    "include_usage string": (
        with_(stream=True, stream_options={"include_usage": "yes"}),
        "'stream_options.include_usage'",
    ),
}


@pytest.mark.parametrize(("body", "field"), list(INVALID.values()), ids=list(INVALID))
async def test_validation_errors(gw, http, fake_openai, body, field):
    assert_error(await chat(http, gw, body), 400, field)
    assert fake_openai.record.requests == []  # refused before anything went upstream


VALID = {
    "bounds low": with_(temperature=0, top_p=0, frequency_penalty=-2, presence_penalty=-2),
    "bounds high": with_(temperature=2, top_p=1, frequency_penalty=2.0, presence_penalty=2),
    "max_tokens 1": with_(max_tokens=1),
    "nulls mean absent": with_(temperature=None, top_p=None, max_tokens=None, stream=None),
    "assistant with tool_calls and null content": with_(
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18C, sunny"},
        ]
    ),
    "content parts": with_(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            }
        ]
    ),
    "every role": with_(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": "Really brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hi!"},
            {"role": "user", "content": "Bye"},
        ]
    ),
}


@pytest.mark.parametrize("body", list(VALID.values()), ids=list(VALID))
async def test_valid_requests(gw, http, fake_openai, body):
    answer = await chat(http, gw, body, {"Accept": "application/json"})
    assert answer.status == 200, answer.body
    sent = fake_openai.record.requests[-1]
    assert sent["messages"] == body["messages"]


async def test_body_over_the_limit(gw, http, fake_openai):
    body = with_(messages=[{"role": "user", "content": "x" * MAX_BODY}])
    assert_error(await chat(http, gw, body), 413, str(MAX_BODY))
    assert fake_openai.record.requests == []


async def test_body_just_under_the_limit(gw, http):
    body = with_(messages=[{"role": "user", "content": ""}])
    padding = MAX_BODY - len(orjson.dumps(body))
    body["messages"][0]["content"] = "x" * padding
    assert len(orjson.dumps(body)) == MAX_BODY
    assert (await chat(http, gw, body)).status == 200


async def test_chunked_body_over_the_limit(gw, http, fake_openai):
    """No Content-Length to trust: the gateway counts the bytes as they come."""
    sent: list[int] = []

    async def pieces() -> AsyncIterator[bytes]:
        yield b'{"model": "woozlit/gpt-4o-mini", "messages": [{"role": "user", "content": "'
        for _ in range(8):
            sent.append(1)
            yield b"x" * 400
        yield b'"}]}'

    async with http.post(
        gw.api + "/chat/completions",
        data=pieces(),
        headers={"Content-Type": "application/json", **gw.auth()},
    ) as resp:
        assert "Content-Length" not in resp.request_info.headers
        assert resp.request_info.headers["Transfer-Encoding"] == "chunked"
        answer = Answer(resp.status, resp.headers, await resp.read())
    assert_error(answer, 413)
    assert fake_openai.record.requests == []


async def test_chunked_body_under_the_limit(gw, http):
    async def pieces() -> AsyncIterator[bytes]:
        yield b'{"model": "woozlit/gpt-4o-mini",'
        yield b' "messages": [{"role": "user", "content": "Hello!"}], "stream": false}'

    async with http.post(
        gw.api + "/chat/completions",
        data=pieces(),
        headers={"Content-Type": "application/json", **gw.auth()},
    ) as resp:
        assert resp.status == 200
        assert (await resp.json())["choices"][0]["message"]["content"] == "".join(TEXT)


async def test_gzip_body_is_limited_by_its_decompressed_size(gw, http):
    """A small compressed body that inflates past the limit is refused (no zip bombs)."""
    big = orjson.dumps(with_(messages=[{"role": "user", "content": "x" * (4 * MAX_BODY)}]))
    for body, status in ((orjson.dumps(with_()), 200), (big, 413)):
        compressed = gzip.compress(body)
        assert len(compressed) < MAX_BODY
        answer = await send(
            http,
            "POST",
            gw.api + "/chat/completions",
            data=compressed,
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip", **gw.auth()},
        )
        assert answer.status == status, answer.body


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",  # curl -d
        "application/jsonp",
        None,
        "application/json; charset=utf-8",
        "APPLICATION/JSON",
    ],
)
async def test_a_json_body_is_read_whatever_its_content_type(gw, http, content_type):
    headers = {**gw.auth()}
    if content_type:
        headers["Content-Type"] = content_type
    answer = await send(
        http,
        "POST",
        gw.api + "/chat/completions",
        data=orjson.dumps(with_()),
        headers=headers,
        skip_auto_headers=("Content-Type",),
    )
    assert answer.status == 200, answer.body
    form = await send(
        http,
        "POST",
        gw.api + "/chat/completions",
        data=b"model=woozlit%2Fgpt-4o-mini",
        headers=headers,
        skip_auto_headers=("Content-Type",),
    )
    assert_error(form, 400, "not valid JSON")


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (
            b'{"model": "woozlit/gpt-4o-mini", "messages": [{"role": "user", "content": "\xff"}]}',
            "UTF-8",
        ),
        (b'{"model": "woozlit/gpt-4o-mini", "messages": [', "not valid JSON"),
        (b"{'model': 'woozlit/gpt-4o-mini'}", "not valid JSON"),
        (b'{"temperature": NaN}', "not valid JSON"),
        (b"", "empty"),
    ],
    ids=["invalid-utf8", "truncated-json", "single-quotes", "nan", "empty"],
)
async def test_undecodable_bodies(gw, http, data, needle):
    answer = await send(
        http,
        "POST",
        gw.api + "/chat/completions",
        data=data,
        headers={"Content-Type": "application/json", **gw.auth()},
    )
    assert_error(answer, 400, needle)


async def test_unknown_path(gw, http):
    for path in ("/nope", "/api/woozlit/v1/completions", "/v2/chat/completions"):
        assert_error(await send(http, "POST", gw.base_url + path, body={}), 404)
        assert_error(await send(http, "GET", gw.base_url + path), 404)


async def test_missing_key(gw, http):
    answer = await send(http, "POST", gw.api + "/chat/completions", body=with_())
    assert_error(answer, 401, "API key")


@pytest.mark.parametrize("key", [None, "Bearer nope", "Bearer woozlit_" + "u" * 43])
async def test_the_key_is_checked_before_the_body(gw, http, key):
    """As OpenAI does: without a valid key, nothing about the request is discussed."""
    headers = {"Authorization": key} if key else {}
    for body in ({"model": "woozlit/nope"}, "not an object"):
        answer = await send(http, "POST", gw.api + "/chat/completions", body=body, headers=headers)
        assert_error(answer, 401)


async def test_protocol_errors_use_the_error_format(gw, http):
    answer = await send(http, "GET", gw.base_url + "/healthz", headers={"X-Big": "x" * 9000})
    assert_error(answer, 400)


async def test_wrong_method(gw, http):
    for method in ("GET", "PUT", "DELETE"):
        answer = await send(http, method, gw.api + "/chat/completions", headers=gw.auth())
        assert_error(answer, 405)
        assert set(answer.headers["Allow"].split(",")) == {"POST", "OPTIONS"}  # CORS preflight
    assert_error(await send(http, "POST", gw.base_url + "/healthz", body={}), 405)


# -- request ids, health, metrics ---------------------------------------------------------


async def answers_of_every_kind(gw, http) -> dict:
    """One answer of each kind: a stream, JSON, the errors, health and metrics."""
    return {
        "stream": await chat(http, gw, {"model": MODEL, "messages": HELLO}),
        "json": await chat(http, gw, with_()),
        "400": await chat(http, gw, with_(temperature=5)),
        "401": await chat(http, gw, with_(), {"Authorization": "Bearer nope"}),
        "404": await send(http, "GET", gw.base_url + "/nope"),
        "405": await send(http, "GET", gw.api + "/chat/completions"),
        "413": await chat(http, gw, with_(messages=[{"role": "user", "content": "x" * 2000}])),
        "502": await chat(http, gw, with_(model="woozlit/refused")),
        "healthz": await send(http, "GET", gw.base_url + "/healthz"),
        "metrics": await send(http, "GET", gw.base_url + "/metrics"),
    }


async def test_request_id_on_every_answer(gw, http):
    answers = await answers_of_every_kind(gw, http)
    ids = {name: a.headers.get("x-request-id") for name, a in answers.items()}
    assert all(i and i.startswith("woozlit-") for i in ids.values()), ids
    assert len(set(ids.values())) == len(ids)  # one per request
    assert ids["json"] == answers["json"].json()["id"]  # the same id, for support requests


async def test_request_id_echoed(gw, http):
    rid = "trace-7f3a.B_9:x"
    for answer in (
        await chat(http, gw, with_(), {"x-request-id": rid}),
        await chat(http, gw, {"model": MODEL, "messages": HELLO}, {"x-request-id": rid}),
        await chat(http, gw, with_(top_p=9), {"X-Request-ID": rid}),
        await send(http, "GET", gw.base_url + "/nope", headers={"x-request-id": rid}),
    ):
        assert answer.headers["x-request-id"] == rid


@pytest.mark.parametrize("given", ["has space", "x" * 129, "new\\nline", "ünïcode"])
async def test_unsafe_request_id_replaced(gw, http, given):
    answer = await chat(http, gw, with_(), {"x-request-id": given})
    assert answer.headers["x-request-id"] == answer.json()["id"]


async def test_health(gw, http):
    for path in ("/healthz", "/readyz"):
        answer = await send(http, "GET", gw.base_url + path)
        assert answer.status == 200


async def test_metrics_never_show_secrets(gw, http):
    wrong_key = "woozlit_" + "LeakedKeyMustNotAppear" * 2
    await chat(http, gw, with_())
    await chat(http, gw, {"model": MODEL, "messages": HELLO})
    await chat(http, gw, with_(model="woozlit/bad-credentials"))
    await chat(http, gw, with_(), {"Authorization": f"Bearer {wrong_key}"})
    answer = await send(http, "GET", gw.base_url + "/metrics")
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("text/plain")
    text = answer.body.decode()
    assert "# TYPE woozlit_requests_total counter" in text
    assert (
        'woozlit_requests_total{model="woozlit/gpt-4o-mini",protocol="chat_completions",'
        'provider="openai",status="200"} 2.0' in text
    )
    assert 'status="502"' in text
    for secret in (gw.api_key, PROVIDER_KEY, wrong_key, "sk-secret"):
        assert secret not in text
    assert gw.api_key[:20] not in text


# -- what goes upstream -------------------------------------------------------------------


async def test_default_temperature_is_sent(gw, http, fake_openai):
    await chat(http, gw, with_())
    await chat(http, gw, {"model": MODEL, "messages": HELLO})
    assert [r["temperature"] for r in fake_openai.record.requests] == [0.7, 0.7]


async def test_no_default_temperature_beside_the_clients_top_p(gw, http, fake_openai):
    """Claude takes one of the two: the client's top_p must not lose to our default."""
    await chat(http, gw, with_(top_p=0.5))
    assert "temperature" not in fake_openai.record.requests[-1]
    assert fake_openai.record.requests[-1]["top_p"] == 0.5


@pytest.mark.parametrize("temperature", [0, 0.0, 1, 1.3, 2])
async def test_given_temperature_passes_unchanged(gw, http, fake_openai, temperature):
    await chat(http, gw, with_(temperature=temperature))
    sent = fake_openai.record.requests[-1]["temperature"]
    assert sent == temperature and type(sent) is type(temperature)


async def test_other_openai_fields_pass_through(gw, http, fake_openai):
    extra = {
        "tools": [
            {
                "type": "function",
                "function": {"name": "weather", "parameters": {"type": "object"}},
            }
        ],
        "tool_choice": "auto",
        "seed": 42,
        "response_format": {"type": "json_object"},
        "user": "user-1234",
        "n": 2,
        "stop": ["\n\n", "END"],
        "logit_bias": {"50256": -100},
        "top_p": 0.9,
        "frequency_penalty": 0.5,
        "presence_penalty": -0.5,
        "metadata": {"team": "x"},
    }
    caps = {"max_completion_tokens": 300, "max_tokens": 100}
    for stream in (False, True):
        answer = await chat(http, gw, with_(stream=stream, **extra, **caps))
        assert answer.status == 200
        sent = fake_openai.record.requests[-1]
        assert {k: sent[k] for k in extra} == extra
        assert sent["model"] == "gpt-4o-mini"
        assert sent["messages"] == HELLO
        # The two names of one cap become one, the smaller, under the name the upstream
        # reads: the cap that was reserved.
        assert sent["max_tokens"] == 100
        assert "max_completion_tokens" not in sent


async def test_stream_always_asks_upstream_for_usage(gw, http, fake_openai):
    body = {"model": MODEL, "messages": HELLO, "stream_options": {"include_usage": False}}
    chunks = chunks_of(sse_events(await chat(http, gw, body)))
    assert fake_openai.record.requests[-1]["stream_options"] == {"include_usage": True}
    assert all(c["choices"] for c in chunks)  # the usage-only chunk stayed with us
    assert all(c.get("usage") is None for c in chunks)


async def test_stream_with_usage_when_asked(gw, http):
    body = {"model": MODEL, "messages": HELLO, "stream_options": {"include_usage": True}}
    chunks = chunks_of(sse_events(await chat(http, gw, body)))
    assert_chunks(chunks)
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["total_tokens"] == PROMPT_TOKENS + COMPLETION_TOKENS


# -- upstream failures --------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_connection_refused_is_502(gw, http, stream):
    answer = await chat(http, gw, with_(model="woozlit/refused", stream=stream))
    assert_error(answer, 502, "closed")


@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_hang_is_504(gw, http, stream):
    started = time.perf_counter()
    answer = await chat(http, gw, with_(model="woozlit/hang", stream=stream))
    assert_error(answer, 504, "impatient")
    assert 0.25 < time.perf_counter() - started < 2


@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_401_is_502_without_the_key(gw, http, stream):
    answer = await chat(http, gw, with_(model="woozlit/bad-credentials", stream=stream))
    message = assert_error(answer, 502)
    assert PROVIDER_KEY not in answer.body.decode()
    assert "sk-" not in message
    assert PROVIDER_KEY not in str(dict(answer.headers))


@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_429_is_503_with_retry_after(gw, http, stream):
    answer = await chat(http, gw, with_(model="woozlit/overloaded", stream=stream))
    assert_error(answer, 503)
    assert answer.headers["Retry-After"] == "7"


@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_400_is_400_with_its_message(gw, http, stream):
    answer = await chat(http, gw, with_(model="woozlit/bad-request", stream=stream))
    assert assert_error(answer, 400) == "Invalid 'messages': too long."


async def test_error_mid_stream_is_one_event_then_eof(gw, http):
    answer = await chat(http, gw, {"model": "woozlit/midstream-error", "messages": HELLO})
    events = sse_events(answer)
    assert orjson.loads(events[-1]) == {
        "error": {"message": "The model crashed.", "type": "server_error", "code": "upstream_error"}
    }
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert_chunks(chunks, "woozlit/midstream-error")
    assert text_of(chunks) == "Hello!"
    assert b"[DONE]" not in answer.body


async def test_truncated_stream_ends_with_an_error_event(gw, http):
    answer = await chat(http, gw, {"model": "woozlit/truncated", "messages": HELLO})
    events = sse_events(answer)
    error = orjson.loads(events[-1])
    assert list(error) == ["error"] and list(error["error"]) == ["message", "type", "code"]
    assert "ended the stream early" in error["error"]["message"]
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert_chunks(chunks, "woozlit/truncated")
    assert text_of(chunks) == "".join(TEXT[:3])
    assert b"[DONE]" not in answer.body


async def test_stream_that_stalls_ends_with_an_error_event(gw, http, fake_openai):
    fake_openai.record.delay = 0.6  # silence after the first chunk, longer than `idle`
    started = time.perf_counter()
    answer = await chat(http, gw, {"model": "woozlit/stall", "messages": HELLO})
    assert 0.25 < time.perf_counter() - started < 0.55
    events = sse_events(answer)
    assert len(events) == 2
    assert_chunks([orjson.loads(events[0])], "woozlit/stall")
    error = orjson.loads(events[1])["error"]
    assert error["message"] == "Provider 'impatient' stalled mid-stream."
    assert (error["type"], error["code"]) == ("server_error", "timeout")


@pytest.mark.parametrize("stream", [False, True])
async def test_provider_without_key_names_the_variable(gw, http, monkeypatch, stream):
    async def no_network(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the gateway went to the network")

    monkeypatch.setattr(gw.app[UPSTREAM], "open", no_network)
    monkeypatch.setattr(gw.app[UPSTREAM], "complete", no_network)
    answer = await chat(http, gw, with_(model="woozlit/keyless", stream=stream))
    assert_error(answer, 503, UNSET_VAR, "keyless")


# -- streaming behaviour ------------------------------------------------------------------


async def test_client_disconnect_closes_the_upstream_stream(gw, http, fake_openai):
    async with http.post(
        gw.api + "/chat/completions",
        json={"model": "woozlit/endless", "messages": HELLO},
        headers=gw.auth(),
    ) as resp:
        assert resp.status == 200
        for _ in range(3):
            assert (await resp.content.readuntil(b"\n\n")).startswith(b"data: {")
        resp.close()  # drop the connection, mid-stream
    for _ in range(200):  # up to 1 s
        if fake_openai.record.disconnects:
            break
        await asyncio.sleep(0.005)
    assert fake_openai.record.disconnects == 1
    # The upstream stopped sending: no chunk goes out later than a moment after it noticed.
    sent = len(fake_openai.record.sent_at)
    await asyncio.sleep(0.05)
    assert len(fake_openai.record.sent_at) == sent
    # And the gateway finished the request: counted as the client's (499), gauges back to 0.
    metrics = (await send(http, "GET", gw.base_url + "/metrics")).body.decode().splitlines()
    assert (
        'woozlit_requests_total{model="woozlit/endless",protocol="chat_completions",'
        'provider="openai",status="499"} 1.0'
    ) in metrics
    assert "woozlit_in_flight_requests 0.0" in metrics
    assert "woozlit_open_streams 0.0" in metrics


async def test_each_chunk_is_forwarded_as_it_arrives(gw, http, fake_openai):
    """Paced upstream chunks reach the client one by one, each soon after its send."""
    body = {"model": "woozlit/slow", "messages": HELLO, "stream_options": {"include_usage": True}}
    received: list[float] = []
    reads: list[bytes] = []
    async with http.post(gw.api + "/chat/completions", json=body, headers=gw.auth()) as resp:
        assert resp.status == 200
        while True:
            event = await resp.content.readuntil(b"\n\n")
            if not event:
                break
            received.append(time.perf_counter())
            reads.append(event)
    assert reads[-1] == b"data: [DONE]\n\n"
    chunks = [orjson.loads(r.removeprefix(b"data: ")) for r in reads[:-1]]
    assert text_of(chunks) == "".join(TEXT)
    sent_at = fake_openai.record.sent_at
    assert len(sent_at) == len(chunks)  # one client event per upstream event, none merged
    lags = [r - s for r, s in zip(received, sent_at, strict=False)]
    assert all(0 <= lag < 0.05 for lag in lags), lags
    # The five paced chunks (after the role chunk) came apart, as the upstream sent them.
    gaps = [b - a for a, b in itertools.pairwise(received[:6])]
    assert all(gap > fake_openai.record.delay / 2 for gap in gaps), gaps


# -- the Server header --------------------------------------------------------------------

SERVER = "woozlit-gateway"


def assert_names_only_the_gateway(headers: list[tuple[str, str]], what: str) -> None:
    """One `Server: woozlit-gateway`, and no header that names Python or aiohttp."""
    assert [v for k, v in headers if k.lower() == "server"] == [SERVER], (what, headers)
    for name, value in headers:
        assert "python" not in value.lower() and "aiohttp" not in value.lower(), (what, name)


async def raw_exchange(port: int, data: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    """(status, headers, raw body) of the one answer to `data`, read to the server's close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        async with asyncio.timeout(10):
            raw = await reader.read(-1)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines)]
    return int(status_line.split()[1]), headers, body


async def test_every_answer_names_the_gateway(gw, http):
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    answers = {
        **await answers_of_every_kind(gw, http),
        "417": await chat(http, gw, with_(), {"Expect": "200-ok"}),
        "431 (aiohttp's parser)": await send(
            http, "GET", gw.base_url + "/healthz", headers={"X-Big": "x" * 9000}
        ),
        "models": await send(http, "GET", gw.api + "/models", headers=gw.auth()),
        "usage": await send(http, "GET", gw.api + "/usage", headers=gw.auth()),
        "readyz": await send(http, "GET", gw.base_url + "/readyz"),
        "admin": await send(
            http, "GET", gw.base_url + f"/admin/v1/accounts/{gw.account_id}", headers=admin
        ),
        "admin 401": await send(http, "GET", gw.base_url + "/admin/v1/accounts/x"),
    }
    assert answers["stream"].headers["Content-Type"].startswith("text/event-stream")
    assert answers["417"].status == 417
    assert 400 <= answers["431 (aiohttp's parser)"].status < 500
    for name, answer in answers.items():
        assert_names_only_the_gateway(list(answer.headers.items()), name)


async def test_server_header_on_the_wire(gw):
    """Over a raw socket: aiohttp's own answers to malformed HTTP, and a streamed answer."""
    port = gw.server.port
    malformed = {
        "request line": b"NOT AN HTTP REQUEST LINE\r\n\r\n",
        "version": b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n",
        "content-length": b"POST /v1/models HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n",
        "header": b"GET /healthz HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n",
    }
    for name, data in malformed.items():
        status, headers, body = await raw_exchange(port, data)
        assert status == 400, (name, body)
        assert orjson.loads(body) == {"error": "Malformed HTTP request."}
        assert_names_only_the_gateway(headers, name)

    one = orjson.dumps({"model": MODEL, "messages": HELLO, "stream": True})
    status, headers, body = await raw_exchange(
        port,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Authorization: Bearer " + gw.api_key.encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(one) + one,
    )
    assert status == 200
    assert dict(headers)["Content-Type"].startswith("text/event-stream")
    assert b"data: [DONE]\n\n" in body
    assert_names_only_the_gateway(headers, "stream")


async def test_upstream_requests_do_not_name_the_stack(gw, http, fake_openai):
    assert (await chat(http, gw, with_())).status == 200
    assert (await chat(http, gw, {"model": MODEL, "messages": HELLO})).status == 200
    assert len(fake_openai.record.headers) == 2
    for sent in fake_openai.record.headers:
        assert "User-Agent" not in sent, sent
        assert not any("aiohttp" in v.lower() or "python" in v.lower() for v in sent.values())
