"""The gateway in front of an OpenAI-compatible upstream, through the official openai SDK."""

from __future__ import annotations

import aiohttp
import openai
import pytest

from tests.conftest import FakeUpstream, GatewayFactory, openai_provider
from tests.fakes.openai_upstream import COMPLETION_TOKENS, PROMPT_TOKENS, TEXT
from tests.openai_types import check_chunks, check_completion, sse_chunks

MODELS = {
    "woozlit/gpt-4o-mini": [{"provider": "openai", "model": "gpt-4o-mini"}],
    "woozlit/deepseek-chat": [{"provider": "deepseek", "model": "deepseek-chat"}],
    "woozlit/deepseek-reasoner": [{"provider": "deepseek", "model": "deepseek-reasoner"}],
    "woozlit/tool-call": [{"provider": "deepseek", "model": "tool-call-nulls"}],
    "woozlit/bad-request": [{"provider": "openai", "model": "error-400"}],
    "woozlit/bad-credentials": [{"provider": "openai", "model": "error-401"}],
    "woozlit/overloaded": [{"provider": "openai", "model": "error-429"}],
    "woozlit/broken": [{"provider": "openai", "model": "error-500"}],
}


@pytest.fixture
async def gw(gateway: GatewayFactory, fake_openai: FakeUpstream):
    providers = {
        "openai": openai_provider(fake_openai.url),
        "deepseek": openai_provider(fake_openai.url),
    }
    return await gateway(providers, MODELS)


@pytest.fixture
async def sdk(gw):
    async with openai.AsyncOpenAI(api_key=gw.api_key, base_url=gw.api, max_retries=0) as client:
        yield client


async def test_non_stream_with_stream_omitted_gets_json(sdk, fake_openai: FakeUpstream):
    response = await sdk.chat.completions.create(
        model="woozlit/gpt-4o-mini", messages=[{"role": "user", "content": "Hello!"}]
    )
    assert response.choices[0].message.content == "".join(TEXT)
    assert response.id.startswith("woozlit-")
    assert response.model == "woozlit/gpt-4o-mini"
    assert response.usage.total_tokens == PROMPT_TOKENS + COMPLETION_TOKENS
    sent = fake_openai.record.requests[-1]
    assert sent["model"] == "gpt-4o-mini"
    assert sent["temperature"] == 0.7
    assert sent["stream"] is False
    assert fake_openai.record.headers[-1]["Authorization"] == "Bearer sk-test-provider-key"


async def test_stream(sdk, fake_openai: FakeUpstream):
    stream = await sdk.chat.completions.create(
        model="woozlit/gpt-4o-mini",
        messages=[{"role": "user", "content": "Hello!"}],
        stream=True,
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "".join(TEXT)
    assert {c.id for c in chunks} == {chunks[0].id}
    assert chunks[0].id.startswith("woozlit-")
    assert {c.model for c in chunks} == {"woozlit/gpt-4o-mini"}
    assert all(c.usage is None for c in chunks)  # not asked for
    assert fake_openai.record.requests[-1]["stream_options"] == {"include_usage": True}


async def test_stream_with_usage_when_asked(sdk):
    stream = await sdk.chat.completions.create(
        model="woozlit/gpt-4o-mini",
        messages=[{"role": "user", "content": "Hello!"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices == []
    assert chunks[-1].usage.total_tokens == PROMPT_TOKENS + COMPLETION_TOKENS


async def test_deepseek_stream_keepalives_and_reasoning(sdk):
    stream = await sdk.chat.completions.create(
        model="woozlit/deepseek-reasoner",
        messages=[{"role": "user", "content": "Think"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    reasoning = "".join(
        (c.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
        for c in chunks
        if c.choices
    )
    assert reasoning == "Let me think."
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "".join(TEXT)
    assert chunks[-1].usage.total_tokens == PROMPT_TOKENS + COMPLETION_TOKENS


async def test_models_list(sdk):
    models = [m.id async for m in sdk.models.list()]
    assert models == list(MODELS)


@pytest.mark.parametrize(
    ("model", "error", "status"),
    [
        ("woozlit/bad-request", openai.BadRequestError, 400),
        ("woozlit/bad-credentials", openai.InternalServerError, 502),
        ("woozlit/overloaded", openai.InternalServerError, 503),
        ("woozlit/broken", openai.InternalServerError, 502),
    ],
)
async def test_upstream_errors_raise_sdk_exceptions(sdk, model, error, status):
    with pytest.raises(error) as info:
        await sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == status
    assert "sk-" not in str(info.value.body)


async def test_unknown_model_is_bad_request(sdk):
    with pytest.raises(openai.BadRequestError) as info:
        await sdk.chat.completions.create(
            model="woozlit/nope", messages=[{"role": "user", "content": "x"}]
        )
    assert "Unknown model 'woozlit/nope'" in str(info.value.body)


async def test_bad_key_is_authentication_error(gw):
    key = "woozlit_" + "x" * 43
    async with openai.AsyncOpenAI(api_key=key, base_url=gw.api, max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError):
            await client.chat.completions.create(
                model="woozlit/gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
            )


async def raw_post(gw, body: dict) -> tuple[int, bytes, dict]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(gw.api + "/chat/completions", json=body, headers=gw.auth()) as resp,
    ):
        return resp.status, await resp.read(), dict(resp.headers)


@pytest.mark.parametrize("include_usage", [False, True])
async def test_reasoning_deltas_carry_no_null_content(gw, include_usage):
    """deepseek-reasoner sends `{"content": null, "reasoning_content": ...}`: the gateway
    forwards the delta without the null (the openai SDK printed it as "None")."""
    body = {
        "model": "woozlit/deepseek-reasoner",
        "messages": [{"role": "user", "content": "Think"}],
        "stream": True,
        "stream_options": {"include_usage": include_usage},
    }
    status, raw, headers = await raw_post(gw, body)
    assert status == 200
    assert headers["x-woozlit-deployment"] == "deepseek/deepseek-reasoner"
    chunks = sse_chunks(raw)
    check_chunks(chunks)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert {"reasoning_content": "Let me"} in deltas
    assert "".join(d.get("content", "") for d in deltas) == "".join(TEXT)


async def test_tool_call_deltas_carry_no_nulls(gw):
    """Later tool-call deltas of vLLM and DeepSeek carry `id`, `type`, `name`, `role` and
    `content` as null: none of them reaches the client, and the arguments add up."""
    body = {"model": "woozlit/tool-call", "messages": [{"role": "user", "content": "x"}]}
    status, raw, _ = await raw_post(gw, {**body, "stream": True})
    assert status == 200
    chunks = sse_chunks(raw)
    check_chunks(chunks)
    calls = [c["choices"][0]["delta"].get("tool_calls") for c in chunks if c["choices"]]
    calls = [call[0] for call in calls if call]
    assert calls[0]["id"] == "call_1" and calls[0]["function"]["name"] == "weather"
    assert calls[1] == {"index": 0, "function": {"arguments": '{"city": '}}


@pytest.mark.parametrize("stream", [False, True])
async def test_the_deployment_header_names_provider_and_upstream_model(gw, stream):
    body = {
        "model": "woozlit/gpt-4o-mini",
        "messages": [{"role": "user", "content": "x"}],
        "stream": stream,
    }
    status, raw, headers = await raw_post(gw, body)
    assert status == 200
    assert headers["x-woozlit-deployment"] == "openai/gpt-4o-mini"
    if stream:
        assert {c.model for c in check_chunks(sse_chunks(raw))} == {"woozlit/gpt-4o-mini"}
    else:
        import orjson

        assert check_completion(orjson.loads(raw)).model == "woozlit/gpt-4o-mini"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("public", "deployment"),
    [
        ("woozlit/gpt-4-turbo", "openai/gpt-4.1"),
        ("woozlit/gpt-3.5-turbo", "openai/gpt-4.1-mini"),
        ("woozlit/deepseek-reasoner", "deepseek/deepseek-v4-flash"),
    ],
)
async def test_a_shipped_route_answers_as_the_public_model(
    gateway: GatewayFactory, fake_openai: FakeUpstream, public, deployment, stream
):
    """The shipped table's OpenAI and DeepSeek routes, against the fake: the answer is the
    public model's, the header names the provider's model."""
    from pathlib import Path

    import orjson
    import yaml

    shipped = yaml.safe_load((Path(__file__).parent.parent / "config/woozlit.yaml").read_text())
    fake_openai.record.models += ["gpt-4.1", "gpt-4.1-mini", "deepseek-v4-flash"]
    providers = {
        "openai": openai_provider(fake_openai.url, max_tokens_parameter="max_completion_tokens"),
        "deepseek": openai_provider(fake_openai.url.removesuffix("/v1")),
    }
    gw = await gateway(providers, {public: shipped["models"][public]})
    body = {"model": public, "messages": [{"role": "user", "content": "x"}], "stream": stream}
    status, raw, headers = await raw_post(gw, body)
    assert status == 200, raw
    assert headers["x-woozlit-deployment"] == deployment
    if stream:
        assert {c.model for c in check_chunks(sse_chunks(raw))} == {public}
    else:
        assert check_completion(orjson.loads(raw)).model == public


async def test_tool_ids_of_other_providers_are_shortened_consistently(sdk, fake_openai):
    """A conversation begun on Gemini (ids carry a thought signature: hundreds of characters)
    goes on with an OpenAI model, which refuses ids over 40 characters (the fake, as OpenAI)."""
    long_id = "call_" + "a" * 32 + "~" + "c2lnbmF0dXJl" * 30
    call = {"id": long_id, "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages = [
        {"role": "user", "content": "Call f."},
        {"role": "assistant", "content": None, "tool_calls": [call, {**call, "id": "short"}]},
        {"role": "tool", "tool_call_id": long_id, "content": "42"},
        {"role": "tool", "tool_call_id": "short", "content": "43"},
    ]
    for stream in (False, True):
        answer = await sdk.chat.completions.create(
            model="woozlit/gpt-4o-mini", messages=messages, stream=stream
        )
        if stream:
            [chunk async for chunk in answer]
        sent = fake_openai.record.requests[-1]["messages"]
        ids = [c["id"] for c in sent[1]["tool_calls"]]
        assert len(ids[0]) <= 40 and ids[1] == "short"
        assert [sent[2]["tool_call_id"], sent[3]["tool_call_id"]] == ids
    assert messages[2]["tool_call_id"] == long_id  # the client's body is left as it is


async def test_deployment_params_are_defaults_the_client_can_override(gateway, fake_openai):
    thinking_off = {"thinking": {"type": "disabled"}}
    gw = await gateway(
        {"deepseek": openai_provider(fake_openai.url)},
        {
            "woozlit/deepseek-chat": [
                {"provider": "deepseek", "model": "deepseek-chat", "params": thinking_off}
            ]
        },
    )
    async with openai.AsyncOpenAI(api_key=gw.api_key, base_url=gw.api, max_retries=0) as sdk:
        hello = [{"role": "user", "content": "Hi"}]
        await sdk.chat.completions.create(model="woozlit/deepseek-chat", messages=hello)
        assert fake_openai.record.requests[-1]["thinking"] == {"type": "disabled"}
        await sdk.chat.completions.create(
            model="woozlit/deepseek-chat",
            messages=hello,
            extra_body={"thinking": {"type": "enabled"}},
        )
        assert fake_openai.record.requests[-1]["thinking"] == {"type": "enabled"}
        await sdk.chat.completions.create(
            model="woozlit/deepseek-chat", messages=hello, extra_body={"thinking": None}
        )
        assert fake_openai.record.requests[-1]["thinking"] == {"type": "disabled"}
