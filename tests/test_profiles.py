"""The two API profiles, and what browsers and quota-aware clients need from every answer.

`/api/woozlit/v1` keeps the Woozlit API's semantics (`stream` absent streams, errors are
`{"error": "<sentence>"}`); `/v1` is OpenAI-compatible (`stream` absent is false, errors are
OpenAI's error objects). In both, an error after a stream began is an error object event.
Every API answer carries the rate-limit headers; the API routes serve CORS, the admin API
does not; a stream whose provider is silent before its first token shows signs of life.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from tests.conftest import ADMIN_TOKEN, FakeUpstream, Gateway, GatewayFactory, openai_provider
from tests.fakes.openai_upstream import TEXT
from tests.openai_types import check_chunks, check_completion, sse_chunks

MODEL = "woozlit/gpt-4o-mini"
HELLO = [{"role": "user", "content": "Hello!"}]
QUOTA = "Monthly token limit exceeded. Your usage will reset next month."
WOOZLIT, OPENAI = "/api/woozlit/v1", "/v1"
RATE_HEADERS = (
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
)
TOKEN_HEADERS = (
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
)


def models() -> dict[str, Any]:
    return {
        MODEL: [{"provider": "openai", "model": "gpt-4o-mini"}],
        "woozlit/midstream-error": [{"provider": "openai", "model": "midstream-error"}],
        "woozlit/deepseek-reasoner": [{"provider": "openai", "model": "deepseek-reasoner"}],
        "woozlit/tool-call-nulls": [{"provider": "openai", "model": "tool-call-nulls"}],
    }


@pytest.fixture
async def gw(gateway: GatewayFactory, fake_openai: FakeUpstream, redis_url: str) -> Gateway:
    return await gateway(
        {"openai": openai_provider(fake_openai.url)}, models(), redis_url=redis_url
    )


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post(
    http: aiohttp.ClientSession,
    url: str,
    body: Any,
    headers: dict[str, str],
) -> tuple[int, aiohttp.typedefs.LooseHeaders, bytes]:
    async with http.post(url, data=orjson.dumps(body), headers=headers) as resp:
        return resp.status, resp.headers, await resp.read()


def openai_error(body: bytes) -> dict[str, Any]:
    """OpenAI's error object, with exactly its four fields."""
    payload = orjson.loads(body)
    assert list(payload) == ["error"], payload
    error = payload["error"]
    assert sorted(error) == ["code", "message", "param", "type"], error
    assert isinstance(error["message"], str) and error["message"], error
    return dict(error)


def woozlit_error(body: bytes) -> str:
    payload = orjson.loads(body)
    assert list(payload) == ["error"] and isinstance(payload["error"], str), payload
    return str(payload["error"])


# -- stream absent ---------------------------------------------------------------------------


@pytest.mark.parametrize("accept", [None, "*/*", "text/event-stream, application/json"])
async def test_openai_profile_answers_json_when_stream_is_absent(gw, http, accept):
    """Vercel's generateText and curl send no `stream` and `Accept: */*`: OpenAI answers JSON."""
    headers = {**gw.auth(), **({"Accept": accept} if accept else {})}
    status, answer_headers, body = await post(
        http,
        gw.base_url + OPENAI + "/chat/completions",
        {"model": MODEL, "messages": HELLO},
        headers,
    )
    assert status == 200, body
    assert answer_headers["Content-Type"].startswith("application/json")
    check_completion(orjson.loads(body))


@pytest.mark.parametrize("accept", [None, "*/*"])
async def test_woozlit_api_streams_when_stream_is_absent(gw, http, accept):
    headers = {**gw.auth(), **({"Accept": accept} if accept else {})}
    status, answer_headers, body = await post(
        http, gw.api + "/chat/completions", {"model": MODEL, "messages": HELLO}, headers
    )
    assert status == 200, body
    assert answer_headers["Content-Type"].startswith("text/event-stream")
    check_chunks(sse_chunks(body))


# -- error shapes ---------------------------------------------------------------------------


async def test_errors_in_each_profile_carry_the_same_sentence(
    gateway, fake_openai, redis_url, http
):
    gw = await gateway(
        {"openai": openai_provider(fake_openai.url)},
        models(),
        redis_url=redis_url,
        account={"tier": "free", "developer": True},
    )
    body = {"model": MODEL, "messages": HELLO, "stream": False}
    cases: list[tuple[str, dict[str, Any], dict[str, str], int, str | None, str, str | None]] = [
        # what, body, headers, status, param, type, code
        ("bad key", body, {"Authorization": "Bearer woozlit_nope"}, 401, None,
         "invalid_request_error", "invalid_api_key"),
        ("no key", body, {}, 401, None, "invalid_request_error", "invalid_api_key"),
        ("bad temperature", {**body, "temperature": 5}, gw.auth(), 400, "temperature",
         "invalid_request_error", None),
        ("unknown model", {**body, "model": "woozlit/nope"}, gw.auth(), 400, "model",
         "invalid_request_error", "model_not_found"),
        ("bad message", {**body, "messages": [{"role": "robot", "content": "x"}]}, gw.auth(),
         400, "messages[0].role", "invalid_request_error", None),
    ]  # fmt: skip
    for what, payload, headers, status, param, kind, code in cases:
        s1, _, b1 = await post(http, gw.base_url + OPENAI + "/chat/completions", payload, headers)
        s2, _, b2 = await post(http, gw.api + "/chat/completions", payload, headers)
        assert s1 == s2 == status, (what, b1, b2)
        error = openai_error(b1)
        assert error["message"] == woozlit_error(b2), what
        assert (error["param"], error["type"], error["code"]) == (param, kind, code), what


async def test_quota_and_rate_limit_in_openai_shape(gateway, fake_openai, redis_url, http):
    tiers = {
        "free": {"monthly_tokens": 10, "requests_per_minute": 3},
        "premium": {"monthly_tokens": None, "requests_per_minute": 100},
    }
    gw = await gateway(
        {"openai": openai_provider(fake_openai.url)},
        models(),
        redis_url=redis_url,
        tiers=tiers,
        account={"tier": "free", "developer": True},
    )
    url = gw.base_url + OPENAI + "/chat/completions"
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 100}
    status, headers, answer = await post(http, url, body, gw.auth())
    assert status == 429
    error = openai_error(answer)
    assert error == {
        "message": QUOTA,
        "type": "insufficient_quota",
        "param": None,
        "code": "insufficient_quota",
    }
    assert headers["x-should-retry"] == "false"
    for name in RATE_HEADERS + TOKEN_HEADERS:
        assert name in headers, name
    assert headers["x-ratelimit-limit-tokens"] == "10"
    assert headers["x-ratelimit-remaining-tokens"] == "0"
    assert re.fullmatch(r"\d+h\d+m\d+s", headers["x-ratelimit-reset-tokens"])
    # The quota refusal and the 400s count against the rate limit (or refusals would be
    # free): one refusal, two 400s, and the fourth request is refused by the rate limit.
    assert headers["x-ratelimit-remaining-requests"] == "2"
    status, headers, answer = await post(http, url, {**body, "temperature": 9}, gw.auth())
    assert status == 400, answer
    status, headers, answer = await post(
        http, url, body, {**gw.auth(), "Idempotency-Key": "k" * 300}
    )
    assert status == 400 and headers["x-ratelimit-remaining-requests"] == "0"
    status, headers, answer = await post(http, url, body, gw.auth())
    assert status == 429
    error = openai_error(answer)
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    assert "Rate limit of 3 requests per minute" in error["message"]
    assert headers["Retry-After"]


async def test_unknown_paths_and_methods_in_each_profile(gw, http):
    async with http.get(gw.base_url + OPENAI + "/nope", headers=gw.auth()) as resp:
        assert resp.status == 404
        assert openai_error(await resp.read())["type"] == "invalid_request_error"
    async with http.get(gw.api + "/nope", headers=gw.auth()) as resp:
        assert resp.status == 404
        woozlit_error(await resp.read())
    async with http.put(gw.base_url + OPENAI + "/chat/completions", headers=gw.auth()) as resp:
        assert resp.status == 405
        openai_error(await resp.read())
    async with http.get(gw.base_url + "/healthz/x") as resp:  # not an API path: Woozlit's shape
        assert resp.status == 404
        woozlit_error(await resp.read())


@pytest.mark.parametrize("prefix", [WOOZLIT, OPENAI])
async def test_mid_stream_error_is_an_error_object_in_both_profiles(gw, http, prefix):
    status, _, body = await post(
        http,
        gw.base_url + prefix + "/chat/completions",
        {"model": "woozlit/midstream-error", "messages": HELLO, "stream": True},
        gw.auth(),
    )
    assert status == 200
    events = [line[6:] for line in body.split(b"\n") if line.startswith(b"data: ")]
    assert b"[DONE]" not in events
    assert orjson.loads(events[-1]) == {
        "error": {"message": "The model crashed.", "type": "server_error", "code": "upstream_error"}
    }
    check_chunks([orjson.loads(e) for e in events[:-1]])


# -- deltas ----------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["woozlit/deepseek-reasoner", "woozlit/tool-call-nulls"])
async def test_deltas_never_carry_null_values(gw, http, model):
    status, _, body = await post(
        http,
        gw.base_url + OPENAI + "/chat/completions",
        {"model": model, "messages": HELLO, "stream": True},
        gw.auth(),
    )
    assert status == 200
    assert b":null" not in body.replace(b'"finish_reason":null', b"").replace(
        b'"logprobs":null', b""
    ), body
    check_chunks(sse_chunks(body))


async def test_seed_stream_example_prints_no_none(gw, http):
    """The spec's streaming example reads `delta.get("content", "")` of every chunk."""
    _, _, body = await post(
        http,
        gw.api + "/chat/completions",
        {"model": "woozlit/deepseek-reasoner", "messages": HELLO, "stream": True},
        gw.auth(),
    )
    printed = "".join(
        str(chunk["choices"][0]["delta"].get("content", "")) for chunk in sse_chunks(body)
    )
    assert "None" not in printed and printed


# -- models, content type, headers -------------------------------------------------------------


@pytest.mark.parametrize("prefix", [WOOZLIT, OPENAI])
async def test_retrieve_one_model(gw, http, prefix):
    async with http.get(gw.base_url + prefix + "/models/" + MODEL, headers=gw.auth()) as resp:
        assert resp.status == 200
        assert (await resp.json())["id"] == MODEL
        assert "x-ratelimit-limit-requests" in resp.headers
    async with http.get(gw.base_url + prefix + "/models/woozlit/nope", headers=gw.auth()) as resp:
        assert resp.status == 404
        if prefix == OPENAI:
            error = openai_error(await resp.read())
            assert (error["code"], error["param"]) == ("model_not_found", "model")
    async with http.get(gw.base_url + prefix + "/models/" + MODEL) as resp:
        assert resp.status == 401


async def test_rate_limit_headers_on_every_api_answer(gateway, fake_openai, redis_url, http):
    gw = await gateway(
        {"openai": openai_provider(fake_openai.url)},
        models(),
        redis_url=redis_url,
        account={"tier": "free", "developer": True},
    )
    url = gw.base_url + OPENAI + "/chat/completions"
    body = {"model": MODEL, "messages": HELLO}
    answers = {
        "200": await post(http, url, body, gw.auth()),
        "200 stream": await post(http, url, {**body, "stream": True}, gw.auth()),
        "400": await post(http, url, {**body, "n": 0}, gw.auth()),
        "400 body": await post(http, url, "not an object", gw.auth()),
        "first": await post(http, url, body, {**gw.auth(), "Idempotency-Key": "k1"}),
        "replay": await post(http, url, body, {**gw.auth(), "Idempotency-Key": "k1"}),
    }
    assert answers["replay"][1]["Idempotent-Replayed"] == "true"
    for what, (status, headers, answer) in answers.items():
        assert status in (200, 400), (what, answer)
        for name in RATE_HEADERS + TOKEN_HEADERS:
            assert name in headers, (what, name)
    remaining = [int(h["x-ratelimit-remaining-requests"]) for _, h, _ in answers.values()]
    assert remaining == sorted(remaining, reverse=True) and remaining[0] > remaining[-1]


# -- CORS ------------------------------------------------------------------------------------


async def test_cors_preflight_and_answers(gw, http):
    origin = {"Origin": "https://app.example"}
    preflight = {
        **origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os",
    }
    for prefix in (WOOZLIT, OPENAI):
        url = gw.base_url + prefix + "/chat/completions"
        async with http.options(url, headers=preflight) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.headers["Access-Control-Allow-Origin"] in ("*", "https://app.example")
            assert "POST" in resp.headers["Access-Control-Allow-Methods"]
            allowed = resp.headers["Access-Control-Allow-Headers"].lower()
            assert "authorization" in allowed and "x-stainless-os" in allowed
        # answers, errors included, can be read by the page, with their headers
        for headers in ({**origin, **gw.auth()}, origin):
            async with http.post(
                url, json={"model": MODEL, "messages": HELLO, "stream": False}, headers=headers
            ) as resp:
                assert resp.headers["Access-Control-Allow-Origin"] in ("*", "https://app.example")
                exposed = resp.headers["Access-Control-Expose-Headers"].lower()
                for name in ("x-request-id", "retry-after", *RATE_HEADERS, *TOKEN_HEADERS):
                    assert name in exposed, name
                assert "Origin" in resp.headers.getall("Vary", [])  # the origin is echoed
    # never on the admin API
    admin = gw.base_url + "/admin/v1/accounts"
    async with http.options(admin, headers=preflight) as resp:
        assert "Access-Control-Allow-Origin" not in resp.headers
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}", **origin}
    async with http.post(admin, json={"tier": "free", "developer": True}, headers=auth) as resp:
        assert resp.status == 201
        assert "Access-Control-Allow-Origin" not in resp.headers


async def test_cors_origins_are_configurable(gateway, fake_openai, http):
    gw = await gateway(
        {"openai": openai_provider(fake_openai.url)},
        models(),
        server={"cors_origins": ["https://good.example"]},
    )
    url = gw.base_url + OPENAI + "/models"
    for origin, allowed in (("https://good.example", True), ("https://evil.example", False)):
        async with http.get(url, headers={**gw.auth(), "Origin": origin}) as resp:
            assert resp.status == 200
            assert ("Access-Control-Allow-Origin" in resp.headers) is allowed


# -- silence before the first token ------------------------------------------------------------


@pytest.mark.slow
async def test_a_thinking_upstream_does_not_time_out_a_patient_client(gateway, fake_openai, http):
    """Upstream: 200, comments every second for 4 s, then the answer. A client with a 3 s
    read timeout gets the headers within ~2 s, then the upstream's comments, then the answer."""
    gw = await gateway(
        {"deepseek": openai_provider(fake_openai.url)},
        {"woozlit/deepseek-reasoner": [{"provider": "deepseek", "model": "thinking-4-0"}]},
    )
    timeout = aiohttp.ClientTimeout(sock_read=3)
    started = time.perf_counter()
    async with http.post(
        gw.base_url + OPENAI + "/chat/completions",
        json={"model": "woozlit/deepseek-reasoner", "messages": HELLO, "stream": True},
        headers=gw.auth(),
        timeout=timeout,
    ) as resp:
        headers_after = time.perf_counter() - started
        assert resp.status == 200
        body = await resp.read()
    assert 1.5 < headers_after < 2.8, headers_after
    assert body.count(b": keep-alive\n\n") >= 3  # ours at 2 s, then the upstream's
    contents = [c["choices"][0]["delta"].get("content") for c in sse_chunks(body) if c["choices"]]
    assert "".join(c or "" for c in contents) == "".join(TEXT)


@pytest.mark.slow
async def test_a_silent_upstream_gets_the_gateways_own_sign_of_life(gateway, fake_openai, http):
    """No comments at all for 3 s: the headers and a comment of the gateway's at ~2 s."""
    gw = await gateway(
        {"deepseek": openai_provider(fake_openai.url)},
        {"woozlit/deepseek-reasoner": [{"provider": "deepseek", "model": "thinking-0-3"}]},
    )
    started = time.perf_counter()
    async with http.post(
        gw.api + "/chat/completions",
        json={"model": "woozlit/deepseek-reasoner", "messages": HELLO, "stream": True},
        headers=gw.auth(),
    ) as resp:
        assert 1.5 < time.perf_counter() - started < 2.8
        first = await resp.content.readuntil(b"\n\n")
        assert first == b": keep-alive\n\n"
        body = first + await resp.read()
    assert 2.8 < time.perf_counter() - started
    assert body.count(b": keep-alive") == 1
    check_chunks(sse_chunks(body))


async def test_a_fast_stream_carries_no_comment(gw, http):
    status, _, body = await post(
        http,
        gw.base_url + OPENAI + "/chat/completions",
        {"model": MODEL, "messages": HELLO, "stream": True},
        gw.auth(),
    )
    assert status == 200 and b": keep-alive" not in body


@pytest.mark.slow
async def test_comments_alone_do_not_keep_a_stream_open(gateway, fake_openai, http, redis_url):
    """Comments show a provider alive, not working: with no event for `first_byte` seconds
    the stream ends with an error event, and the provider's bytes never reach the client."""
    provider = openai_provider(fake_openai.url, timeouts={"connect": 1, "first_byte": 3, "idle": 1})
    gw = await gateway(
        {"chatty": provider},
        {"woozlit/chatty": [{"provider": "chatty", "model": "chatty"}]},
        redis_url=redis_url,
    )
    started = time.perf_counter()
    status, _, body = await post(
        http,
        gw.base_url + OPENAI + "/chat/completions",
        {"model": "woozlit/chatty", "messages": HELLO, "stream": True},
        gw.auth(),
    )
    assert status == 200
    assert 2.9 < time.perf_counter() - started < 4.5
    assert b"\x1b" not in body and b"\x00" not in body and b"ping" not in body
    assert body.count(b": keep-alive\n\n") >= 3
    error = orjson.loads(body.rstrip().rsplit(b"\n", 1)[-1][6:])["error"]
    assert error["code"] == "timeout" and "stalled" in error["message"]


async def test_refusals_of_a_known_key_carry_and_count_the_rate_limit(
    gateway, fake_openai, redis_url, http
):
    """409, 422, a too-long Idempotency-Key, the concurrency 429 and a model 404: each
    carries the rate-limit headers and counts as a request of the minute."""
    tiers = {
        "free": {"monthly_tokens": None, "requests_per_minute": 50, "max_concurrent_requests": 1},
        "premium": {"monthly_tokens": None, "requests_per_minute": 50},
    }
    gw = await gateway(
        {"openai": openai_provider(fake_openai.url)},
        {**models(), "woozlit/gated": [{"provider": "openai", "model": "gated"}]},
        redis_url=redis_url,
        tiers=tiers,
        account={"tier": "free", "developer": True},
    )
    url = gw.base_url + OPENAI + "/chat/completions"
    body = {"model": "woozlit/gated", "messages": HELLO}
    idem = {**gw.auth(), "Idempotency-Key": "same"}
    first = asyncio.create_task(post(http, url, body, idem))
    await asyncio.sleep(0.3)  # the gated answer waits: the key is in use, the slot taken
    answers = {
        409: await post(http, url, body, idem),
        422: await post(http, url, {**body, "temperature": 0.1}, idem),
        400: await post(http, url, body, {**gw.auth(), "Idempotency-Key": "k" * 300}),
        429: await post(http, url, {"model": MODEL, "messages": HELLO}, gw.auth()),
    }
    async with http.get(gw.base_url + OPENAI + "/models/woozlit/nope", headers=gw.auth()) as r:
        answers[404] = (r.status, r.headers, await r.read())
    fake_openai.record.gate.set()
    assert (await first)[0] == 200
    remaining = []
    for status, (got, headers, answer) in answers.items():
        assert got == status, (status, answer)
        assert "x-ratelimit-remaining-requests" in headers, status
        remaining.append(int(headers["x-ratelimit-remaining-requests"]))
    assert remaining == [48, 47, 46, 45, 45], remaining  # the model lookup only reads


async def test_an_alias_is_served_as_its_public_model(gateway, fake_openai, redis_url, http):
    """A name of `aliases` (Claude Code sends its own) is the public model it names: the
    answer, the metrics and the quota all know it by the public name."""
    gw = await gateway(
        {"openai": openai_provider(fake_openai.url)},
        models(),
        aliases={"gpt-4o-mini-*": MODEL, "mini": MODEL},
        redis_url=redis_url,
    )
    for name in ("mini", "gpt-4o-mini-2024-07-18"):
        body = {"model": name, "messages": [{"role": "user", "content": "hi"}]}
        status, _, data = await post(
            http, gw.base_url + OPENAI + "/chat/completions", body, gw.auth()
        )
        assert status == 200, data
        assert orjson.loads(data)["model"] == MODEL
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    status, _, data = await post(http, gw.base_url + OPENAI + "/chat/completions", body, gw.auth())
    assert status == 400
    assert openai_error(data)["param"] == "model"
