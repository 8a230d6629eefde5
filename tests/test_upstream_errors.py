"""Whose fault is an upstream error? The client's (400, not retried) or the deployment's
(retryable: the next deployment is tried, and with none left the client gets the last error),
for OpenAI-compatible upstreams, against the fake OpenAI and DeepSeek upstream.

Also: what the fake itself refuses, as OpenAI's chat completions API does.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest

from proxy.config import ProviderConfig, Timeouts
from proxy.errors import BadRequest, ModelUnavailable, ServiceUnavailable, UpstreamError
from proxy.providers.openai import OpenAIProvider
from proxy.sse import SSEEvent
from tests.conftest import FakeUpstream, GatewayFactory, openai_provider

FAST = {"backoff_base_seconds": 0.001, "backoff_max_seconds": 0.002}
USER = [{"role": "user", "content": "hi"}]


def providers(fake: FakeUpstream) -> dict[str, Any]:
    return {
        "good": openai_provider(fake.url),
        # DeepSeek's base URL has no /v1: the fake answers there as DeepSeek does.
        "deepseek": openai_provider(fake.url.removesuffix("/v1")),
        # A deployment configured with the wrong name for the output cap.
        "misconfigured": openai_provider(fake.url, max_tokens_parameter="max_tokens"),
    }


async def post(gw: Any, body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(gw.api + "/chat/completions", json=body, headers=gw.auth()) as resp,
    ):
        data = await resp.read()
        is_json = resp.content_type == "application/json"
        return resp.status, (await resp.json()) if is_json else data, dict(resp.headers)


def message_of(body: Any) -> str:
    """The error's message, in either profile's shape."""
    error = body["error"]
    return error["message"] if isinstance(error, dict) else error


def chat(model: str, stream: bool = False, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": USER, "stream": stream, **extra}


# Deployments whose failure is the deployment's: (provider, upstream model, why).
DEPLOYMENT_FAULTS = [
    ("good", "error-404-model_not_found", "OpenAI: model retired"),
    ("good", "retired-model", "a model the upstream does not serve (404 model_not_found)"),
    ("deepseek", "retired-model", "DeepSeek: 400 Model Not Exist"),
    ("good", "error-404", "any 404"),
    ("good", "error-401", "our provider key rejected"),
    ("good", "error-403", "our provider key refused"),
    ("good", "error-403-unsupported_country_region_territory", "region"),
    ("deepseek", "error-402", "DeepSeek: Insufficient Balance"),
    ("good", "error-429-insufficient_quota", "OpenAI: out of credit"),
    ("good", "error-408", "upstream timeout"),
    ("good", "error-429", "rate-limited"),
    ("good", "error-503", "overloaded"),
    ("good", "error-529", "overloaded"),
    ("good", "error-500", "5xx"),
    ("good", "error-502", "5xx"),
    ("misconfigured", "o3", "max_tokens sent to a reasoning model: our config's fault"),
]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("provider", "model", "why"), DEPLOYMENT_FAULTS)
async def test_a_deployment_fault_goes_on_to_the_next_deployment(
    gateway: GatewayFactory, fake_openai: FakeUpstream, provider, model, why, stream
):
    models = {
        "woozlit/m": [
            {"provider": provider, "model": model},
            {"provider": "good", "model": "gpt-4o-mini"},
        ]
    }
    gw = await gateway(providers(fake_openai), models, routing=FAST)
    status, body, headers = await post(gw, chat("woozlit/m", stream, temperature=1))
    assert status == 200, (why, body)
    assert headers["x-woozlit-deployment"] == "good/gpt-4o-mini"
    assert [r["model"] for r in fake_openai.record.requests] == [model, "gpt-4o-mini"]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("provider", "model", "status", "words", "retry_after"),
    [
        ("good", "error-404-model_not_found", 503, "unavailable", None),
        ("good", "retired-model", 503, "unavailable", None),
        ("deepseek", "retired-model", 503, "unavailable", None),
        ("good", "error-403-unsupported_country_region_territory", 503, "unavailable", None),
        ("deepseek", "error-402", 503, "unavailable", None),
        ("good", "error-429-insufficient_quota", 503, "unavailable", None),
        ("good", "error-401", 502, "credentials for provider 'good' were rejected", None),
        ("good", "error-403", 502, "credentials for provider 'good' were rejected", None),
        ("good", "error-408", 504, "timed out", None),
        ("good", "error-429", 503, "rate-limited", "7"),
        ("good", "error-503", 503, "overloaded", "3"),
        ("good", "error-529", 503, "overloaded", "3"),
        ("good", "error-500", 502, "failed (500)", None),
        ("good", "error-502", 502, "failed (502)", None),
    ],
)
async def test_with_no_deployment_left_the_client_gets_the_last_error(
    gateway: GatewayFactory, fake_openai: FakeUpstream, provider, model, status, words,
    retry_after, stream,
):  # fmt: skip
    gw = await gateway(
        providers(fake_openai), {"woozlit/m": [{"provider": provider, "model": model}]}
    )
    got, body, headers = await post(gw, chat("woozlit/m", stream))
    assert got == status, body
    assert words in message_of(body)
    assert headers.get("Retry-After") == retry_after
    assert "sk-" not in str(body) and "API key" not in str(body)  # never the client's key


@pytest.mark.parametrize("stream", [False, True])
async def test_a_model_whose_only_deployment_is_retired_is_unavailable_not_a_bad_request(
    gateway: GatewayFactory, fake_openai: FakeUpstream, stream
):
    models = {"woozlit/gpt-4-turbo": [{"provider": "good", "model": "gpt-4-turbo"}]}
    gw = await gateway(providers(fake_openai), models)
    status, body, headers = await post(gw, chat("woozlit/gpt-4-turbo", stream))
    assert status == 503
    assert "model is unavailable" in message_of(body)
    assert headers["x-should-retry"] == "false"  # a retry at once fails the same way
    if isinstance(body["error"], dict):  # the OpenAI profile's shape
        assert body["error"]["code"] == "model_unavailable"


@pytest.mark.parametrize("stream", [False, True])
async def test_a_model_whose_first_deployment_answers_404_is_served_by_the_second(
    gateway: GatewayFactory, fake_openai: FakeUpstream, stream
):
    models = {
        "woozlit/gpt-4o": [
            {"provider": "good", "model": "gpt-4o-2024-05-13"},  # shut down upstream
            {"provider": "good", "model": "gpt-4o"},
        ]
    }
    gw = await gateway(providers(fake_openai), models, routing=FAST)
    status, body, headers = await post(gw, chat("woozlit/gpt-4o", stream))
    assert status == 200, body
    assert headers["x-woozlit-deployment"] == "good/gpt-4o"


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        (chat("error-400"), None, "too long"),
        (chat("error-422"), None, "422"),
        (chat("error-413"), None, "413"),
        (
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
                ]
            },
            "messages.[1].role",
            "must be a response to a preceding message with 'tool_calls'",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": "weather", "arguments": "{}"},
                            }
                        ],
                    },
                    {"role": "user", "content": "and?"},
                ]
            },
            "messages.[1].role",
            "did not have response messages: call_1",
        ),
    ],
)
async def test_a_client_fault_is_400_with_the_upstreams_param_and_not_retried(
    gateway: GatewayFactory, fake_openai: FakeUpstream, body, param, words
):
    upstream = body.get("model", "gpt-4o-mini")
    models = {
        "woozlit/m": [
            {"provider": "good", "model": upstream},
            {"provider": "good", "model": "gpt-4o-mini"},
        ]
    }
    gw = await gateway(providers(fake_openai), models, routing=FAST)
    status, answer, _ = await post(gw, {**body, "model": "woozlit/m"})
    assert status == 400, answer
    assert words in message_of(answer)
    if isinstance(answer["error"], dict):
        assert answer["error"]["param"] == param
    assert len(fake_openai.record.requests) == 1


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("model_not_found", ModelUnavailable),
        ("insufficient_quota", ModelUnavailable),
        ("rate_limit_exceeded", ServiceUnavailable),
        ("server_error", UpstreamError),
    ],
)
async def test_an_error_event_before_any_chunk_is_classified_like_an_answer(
    gateway: GatewayFactory, fake_openai: FakeUpstream, code, error
):
    models = {
        "woozlit/m": [
            {"provider": "good", "model": f"early-error-{code}"},
            {"provider": "good", "model": "gpt-4o-mini"},
        ]
    }
    gw = await gateway(providers(fake_openai), models, routing=FAST)
    status, _, headers = await post(gw, chat("woozlit/m", stream=True))
    assert status == 200
    assert headers["x-woozlit-deployment"] == "good/gpt-4o-mini"
    gw_alone = await gateway(
        providers(fake_openai),
        {"woozlit/m": [{"provider": "good", "model": f"early-error-{code}"}]},
    )
    status, _, _ = await post(gw_alone, chat("woozlit/m", stream=True))
    assert status == error.status


def provider() -> OpenAIProvider:
    config = ProviderConfig("p", "openai", "http://127.0.0.1:1/v1", "k", None, Timeouts())
    return OpenAIProvider(config)


@pytest.mark.parametrize(
    ("event", "error", "param"),
    [
        (b'{"error": {"message": "Bad tool.", "type": "invalid_request_error", '
         b'"param": "tools", "code": null}}', BadRequest, "tools"),
        (b'{"error": {"message": "Gone.", "type": "invalid_request_error", "param": null, '
         b'"code": "model_not_found"}}', ModelUnavailable, None),
        # vLLM's error event: the status in `code`
        (b'{"error": {"object": "error", "message": "No such model.", "type": "NotFoundError",'
         b' "param": null, "code": 404}}', ModelUnavailable, None),
        (b'{"error": {"message": "Overloaded.", "type": "server_error", "code": 503}}',
         ServiceUnavailable, None),
        (b'{"error": {"message": "The model crashed.", "type": "server_error"}}',
         UpstreamError, None),
        (b'{"error": "Ollama is out of memory"}', UpstreamError, None),
    ],
)  # fmt: skip
def test_stream_error_events(event: bytes, error: type, param: str | None):
    from proxy.core import ChatRequest

    stream = provider().stream_translator(ChatRequest({}, "woozlit/m", True, False, None, 10))
    with pytest.raises(error) as caught:
        stream.feed(SSEEvent(event))
    assert type(caught.value) is error
    assert caught.value.param == param


def test_error_bodies_of_ollama_and_old_vllm():
    p = provider()
    ollama = p.error_from_response(404, b'{"error": "model \\"llama9\\" not found"}', {})
    assert isinstance(ollama, ModelUnavailable)
    vllm = p.error_from_response(
        400, b'{"object": "error", "message": "Bad n.", "type": "BadRequestError", '
        b'"param": "n", "code": 400}', {},
    )  # fmt: skip
    assert isinstance(vllm, BadRequest) and vllm.message == "Bad n." and vllm.param == "n"
    assert isinstance(p.error_from_response(502, b"<html>Bad gateway</html>", {}), UpstreamError)
    assert isinstance(p.error_from_response(405, b"", {}), UpstreamError)  # our request's shape


# -- the fake refuses what OpenAI refuses --------------------------------------------------


async def fake_post(fake: FakeUpstream, body: dict[str, Any], path: str = "/chat/completions"):
    async with (
        aiohttp.ClientSession() as session,
        session.post(fake.url + path, json=body) as resp,
    ):
        return resp.status, await resp.json()


def assert_openai_error(body: dict[str, Any]) -> dict[str, Any]:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [
        ({"model": "gpt-9", "messages": USER}, 404, None, "model_not_found"),
        ({"model": "gpt-4o-mini", "messages": []}, 400, "messages", "empty_array"),
        ({"model": "gpt-4o-mini"}, 400, "messages", "empty_array"),
        ({"model": "o3", "messages": USER, "max_tokens": 10}, 400, "max_tokens",
         "unsupported_parameter"),
        ({"model": "o3", "messages": USER, "temperature": 0.7}, 400, "temperature",
         "unsupported_value"),
        ({"model": "gpt-4o-mini", "messages": USER, "stream_options": {"include_usage": True}},
         400, "stream_options", None),
        ({"model": "gpt-4o-mini", "messages": [{"role": "robot", "content": "x"}]}, 400,
         "messages[0].role", "invalid_value"),
        ({"model": "gpt-4o-mini", "messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "tool_calls": [{"id": "a", "type": "function",
             "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "b", "content": "x"},
        ]}, 400, "messages.[2].role", None),
    ],
)  # fmt: skip
async def test_the_fake_refuses_what_openai_refuses(fake_openai, body, status, param, code):
    got, answer = await fake_post(fake_openai, body)
    assert got == status
    error = assert_openai_error(answer)
    assert (error["param"], error["code"]) == (param, code)


async def test_the_fake_serves_answered_tool_calls_and_reasoning_models(fake_openai):
    calls = [
        {"id": i, "type": "function", "function": {"name": "f", "arguments": "{}"}}
        for i in ("a", "b")
    ]
    messages = [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "b", "content": "1"},
        {"role": "tool", "tool_call_id": "a", "content": "2"},
        {"role": "user", "content": "and?"},
    ]
    assert (await fake_post(fake_openai, {"model": "gpt-4o", "messages": messages}))[0] == 200
    body = {"model": "o3", "messages": USER, "max_completion_tokens": 10, "temperature": 1}
    assert (await fake_post(fake_openai, body))[0] == 200


async def test_the_fake_as_deepseek_says_model_not_exist(fake_openai):
    url = fake_openai.url.removesuffix("/v1")
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + "/chat/completions", json={"model": "x", "messages": USER}) as resp,
    ):
        assert resp.status == 400
        assert assert_openai_error(await resp.json())["message"] == "Model Not Exist"


async def test_the_fake_lists_its_models_in_openais_and_deepseeks_shapes(fake_openai):
    fake_openai.record.models = ["gpt-4.1", "deepseek-v4-flash"]
    fake_openai.record.api_key = "sk-fake"
    async with aiohttp.ClientSession() as session:
        url = fake_openai.url + "/models"
        async with session.get(url) as resp:
            assert resp.status == 401
            assert assert_openai_error(await resp.json())["code"] == "invalid_api_key"
        auth = {"Authorization": "Bearer sk-fake"}
        async with session.get(url, headers=auth) as resp:
            listing = await resp.json()
        assert listing["object"] == "list"
        assert [m["id"] for m in listing["data"]] == ["gpt-4.1", "deepseek-v4-flash"]
        assert all(m["object"] == "model" and m["owned_by"] == "openai" for m in listing["data"])
        assert all(isinstance(m["created"], int) for m in listing["data"])
        root = fake_openai.url.removesuffix("/v1")
        async with session.get(root + "/models", headers=auth) as resp:
            listing = await resp.json()
        assert {m["owned_by"] for m in listing["data"]} == {"deepseek"}
    got, _ = await fake_post(fake_openai, {"model": "gpt-4o-mini", "messages": USER})
    assert got == 401


async def test_a_redirect_is_never_followed_and_goes_on_to_the_next_deployment(
    gateway: GatewayFactory, fake_openai: FakeUpstream
):
    """A 307 from a provider would send the body and the key elsewhere if followed."""
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    elsewhere: list[dict[str, str]] = []

    async def steal(request: web.Request) -> web.Response:
        elsewhere.append(dict(request.headers))
        return web.json_response({})

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(str(thief.make_url("/steal")))

    thief_app, moved_app = web.Application(), web.Application()
    thief_app.router.add_route("*", "/steal", steal)
    moved_app.router.add_post("/v1/chat/completions", redirect)
    thief, moved = TestServer(thief_app), TestServer(moved_app)
    await thief.start_server()
    await moved.start_server()
    try:
        configured = {
            **providers(fake_openai),
            "moved": openai_provider(str(moved.make_url("/v1"))),
        }
        models = {
            "woozlit/m": [
                {"provider": "moved", "model": "gpt-4o"},
                {"provider": "good", "model": "gpt-4o"},
            ]
        }
        gw = await gateway(configured, models, routing=FAST)
        for stream in (False, True):
            status, body, headers = await post(gw, chat("woozlit/m", stream))
            assert status == 200, body
            assert headers["x-woozlit-deployment"] == "good/gpt-4o"
        assert elsewhere == []
    finally:
        await thief.close()
        await moved.close()


def test_stream_events_without_choices_reach_no_client():
    """A provider's event that is no chunk (no `choices`) is dropped; its usage alone goes
    on, to a client that asked for it."""
    from proxy.core import ChatRequest

    for include_usage in (False, True):
        chat = ChatRequest({}, "woozlit/m", True, include_usage, None, 10)
        stream = provider().stream_translator(chat)
        assert stream.feed(SSEEvent(b'{"injected": 1}')) == []
        usage = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
        out = stream.feed(SSEEvent(orjson.dumps({"usage": usage})))
        assert out == ([{"choices": [], "usage": usage}] if include_usage else [])
        assert stream.usage is not None and stream.usage.total_tokens == 7
