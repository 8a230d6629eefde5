"""What Google's Gemini API accepts and refuses, through the whole gateway.

Every valid OpenAI request here gets a 200 with a translation the fake Google (which refuses
what the real one refuses, `tests/fakes/gemini_upstream.py`) accepts; every answer is checked
against the openai SDK's types (`tests/openai_types.py`), stream and non-stream. Requests
Gemini cannot honour get a 400 naming the field; errors that are the deployment's fault go on
to the next deployment.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer

from proxy.config import Deployment, ProviderConfig, Timeouts
from proxy.core import ChatRequest
from proxy.providers.gemini import DUMMY_SIGNATURE, GeminiProvider
from tests.fakes.gemini_upstream import FAKE_GEMINI, SCENARIOS, FakeGemini, create_fake_gemini
from tests.openai_types import check_chunks, check_completion, sse_chunks

USER = [{"role": "user", "content": "Weather in Paris and London?"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
        },
    },
}


@pytest.fixture
async def fake() -> AsyncIterator[TestServer]:
    server = TestServer(create_fake_gemini(chunk_delay=0.01))
    await server.start_server()
    yield server
    await server.close()


def fake_of(server: TestServer) -> FakeGemini:
    return server.app[FAKE_GEMINI]


def url_of(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


class Client:
    """Posts chat requests to a gateway and checks every answer against the SDK's types."""

    def __init__(self, base_url: str, api_key: str, session: aiohttp.ClientSession):
        self.url = base_url + "/v1/chat/completions"
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.session = session

    async def post(self, **body: Any) -> tuple[int, Any]:
        body = {"model": "woozlit/g-text", "messages": USER, "stream": False, **body}
        async with self.session.post(self.url, json=body, headers=self.headers) as resp:
            raw = await resp.read()
            if resp.status != 200:
                return resp.status, orjson.loads(raw)["error"]
            if body["stream"]:
                chunks = sse_chunks(raw)
                check_chunks(chunks)
                return 200, chunks
            completion = orjson.loads(raw)
            check_completion(completion)
            return 200, completion


@pytest.fixture
async def client(gateway: Any, fake: TestServer) -> AsyncIterator[Client]:
    models: dict[str, Any] = {
        f"woozlit/g-{s}": [{"provider": "google", "model": s}] for s in SCENARIOS
    }
    models["woozlit/g-gone"] = [{"provider": "google", "model": "gemini-0"}]
    # The first deployment fails in a way that is not the request's fault: the next serves.
    for bad in ("gemini-0", "precondition", "unavailable", "server-error"):
        models[f"woozlit/g-then-{bad}"] = [
            {"provider": "google", "model": bad},
            {"provider": "google", "model": "text"},
        ]
    handle = await gateway(
        providers={"google": {"kind": "gemini", "base_url": url_of(fake), "api_key": "test-key"}},
        models=models,
        routing={"backoff_base_seconds": 0.001, "backoff_max_seconds": 0.001},
    )
    async with aiohttp.ClientSession() as session:
        yield Client(handle.base_url, handle.api_key, session)


def assembled_calls(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tool calls of a stream, as a non-stream answer would hold them."""
    calls: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            for call in choice["delta"].get("tool_calls") or ():
                entry = calls.setdefault(
                    call["index"],
                    {"id": "", "type": "function", "function": {"name": "", "arguments": ""}},
                )
                entry["id"] += call.get("id", "")
                entry["function"]["name"] += call.get("function", {}).get("name", "")
                entry["function"]["arguments"] += call.get("function", {}).get("arguments", "")
    return [calls[i] for i in sorted(calls)]


async def tool_step(client: Client, messages: list[Any], stream: bool) -> list[dict[str, Any]]:
    status, answer = await client.post(
        model="woozlit/g-tools", messages=messages, tools=[WEATHER], stream=stream
    )
    assert status == 200, answer
    if stream:
        return assembled_calls(answer)
    return answer["choices"][0]["message"]["tool_calls"]


def answered(calls: list[dict[str, Any]], order: list[int] | None = None) -> list[Any]:
    """The assistant message with these calls, and a tool message for each (in `order`)."""
    tools = [
        {"role": "tool", "tool_call_id": calls[i]["id"], "content": '{"temp": 21}'}
        for i in (order or range(len(calls)))
    ]
    return [{"role": "assistant", "content": None, "tool_calls": calls}, *tools]


# -- thought signatures --------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_signatures_come_back_with_each_step_of_a_tool_conversation(client, fake, stream):
    calls = await tool_step(client, USER, stream)
    sent = fake_of(fake).last
    assert len(calls) == 2
    messages = [*USER, *answered(calls)]
    second = await tool_step(client, messages, stream)  # Gemini 3 refuses this without it
    contents = fake_of(fake).last.body["contents"]
    model_parts = contents[1]["parts"]
    # Parallel calls: the signature goes back on the first call only, exactly as issued.
    assert model_parts[0]["thoughtSignature"] in fake_of(fake).signatures
    assert model_parts[0]["thoughtSignature"] != DUMMY_SIGNATURE
    assert "thoughtSignature" not in model_parts[1]
    assert sent is not fake_of(fake).last
    # A third step: both earlier steps of the turn carry their own signatures.
    await tool_step(client, [*messages, *answered(second)], stream)
    contents = fake_of(fake).last.body["contents"]
    signatures = [c["parts"][0]["thoughtSignature"] for c in contents if c["role"] == "model"]
    assert len(set(signatures)) == 2 and DUMMY_SIGNATURE not in signatures


async def test_tool_results_out_of_order_are_put_in_the_calls_order(client, fake):
    calls = await tool_step(client, USER, False)
    status, answer = await client.post(
        model="woozlit/g-tools", messages=[*USER, *answered(calls, [1, 0])], tools=[WEATHER]
    )
    assert status == 200, answer


async def test_history_from_another_model_gets_the_dummy_signature(client, fake):
    calls = [
        {
            "id": "toolu_01A",  # Anthropic's, say: no signature in it
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
        }
    ]
    status, answer = await client.post(
        model="woozlit/g-tools", messages=[*USER, *answered(calls)], tools=[WEATHER]
    )
    assert status == 200, answer
    parts = fake_of(fake).last.body["contents"][1]["parts"]
    assert parts[0]["thoughtSignature"] == DUMMY_SIGNATURE


async def test_a_forged_signature_is_the_clients_400(client):
    calls = [
        {
            "id": "call_" + "0" * 32 + "~Zm9yZ2Vk",
            "type": "function",
            "function": {"name": "get_weather", "arguments": "{}"},
        }
    ]
    status, error = await client.post(
        model="woozlit/g-tools", messages=[*USER, *answered(calls)], tools=[WEATHER]
    )
    assert status == 400 and "thought signature" in error["message"]
    assert error["param"] == "messages"


@pytest.mark.parametrize("stream", [False, True])
async def test_signed_text_answers_stream_no_empty_or_null_deltas(client, stream):
    status, answer = await client.post(model="woozlit/g-thinking", stream=stream)
    assert status == 200
    if stream:
        texts = [c["choices"][0]["delta"].get("content") for c in answer if c["choices"]]
        assert "".join(t or "" for t in texts) == "42"
        assert texts.count("") == 1  # the role chunk's only
    else:
        assert answer["choices"][0]["message"]["content"] == "42"


# -- valid OpenAI requests Gemini would refuse as sent --------------------------------------


VALID = {
    "system only": {"messages": [{"role": "system", "content": "Write a haiku"}]},
    "developer only": {"messages": [{"role": "developer", "content": "Write a haiku"}]},
    "assistant first": {
        "messages": [
            {"role": "assistant", "content": "How can I help?"},
            {"role": "user", "content": "A haiku, please."},
        ]
    },
    "assistant only": {"messages": [{"role": "assistant", "content": "Hello."}]},
    "empty user": {"messages": [{"role": "user", "content": ""}]},
    "empty user parts": {"messages": [{"role": "user", "content": []}]},
    "empty user after system": {
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": ""}]
    },
    "empty user last": {
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": ""},
        ]
    },
    "empty assistant": {
        "messages": [
            {"role": "assistant", "content": ""},
            {"role": "user", "content": "Hi"},
        ]
    },
    "empty and repeated stops": {"stop": ["", "END", "END", "\n"]},
    "empty stop string": {"stop": ""},
    "tool name starting with a digit": {
        "tools": [{"type": "function", "function": {"name": "1lookup"}}],
        "tool_choice": {"type": "function", "function": {"name": "1lookup"}},
    },
    "tool name starting with a dash": {
        "tools": [{"type": "function", "function": {"name": "-lookup"}}]
    },
    "image/jpg data URL": {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": "data:image/jpg;base64,/9j/4AA="}}
                ],
            }
        ]
    },
    "mp3 audio": {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "input_audio", "input_audio": {"data": "SUQz", "format": "mp3"}}
                ],
            }
        ]
    },
    "logprobs false": {"logprobs": False, "modalities": ["text"]},
}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("extra", VALID.values(), ids=VALID.keys())
async def test_valid_openai_requests_are_answered(client, fake, extra, stream):
    status, answer = await client.post(stream=stream, **extra)
    assert status == 200, answer
    body = fake_of(fake).last.body
    assert body["contents"][0]["role"] == "user"
    assert all(p.get("text") != "" for c in body["contents"] for p in c["parts"])


def test_tool_names_gemini_refuses_are_mapped_back_in_the_answer():
    provider = GeminiProvider(
        ProviderConfig(
            name="google",
            kind="gemini",
            base_url="http://x",
            api_key="k",
            api_key_env="",
            timeouts=Timeouts(),
        )
    )
    tools = [{"type": "function", "function": {"name": "1lookup"}}]
    body = {"model": "woozlit/x", "messages": USER, "tools": tools}
    chat = ChatRequest(body, "woozlit/x", False, False, None, 10)
    sent = orjson.loads(provider.build_request(chat, Deployment("google", "m")).body)
    assert sent["tools"][0]["functionDeclarations"][0]["name"] == "_1lookup"
    answer = {
        "candidates": [{"content": {"parts": [{"functionCall": {"name": "_1lookup", "args": {}}}]}}]
    }
    completion, _ = provider.parse_response(orjson.dumps(answer), chat)
    assert completion["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "1lookup"


# -- requests Gemini cannot honour: 400 naming the field -------------------------------------


REFUSED = {
    "logprobs": ({"logprobs": True}, "logprobs"),
    "top_logprobs": ({"top_logprobs": 3}, "top_logprobs"),
    "audio out": ({"modalities": ["text", "audio"]}, "modalities"),
    "audio options": ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
    "web search": ({"web_search_options": {}}, "web_search_options"),
    "six stops": ({"stop": ["1", "2", "3", "4", "5", "6"]}, "stop"),
    "bad tool name": (
        {"tools": [{"type": "function", "function": {"name": "get weather"}}]},
        "tools[0].function.name",
    ),
    "duplicate tool": ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name"),
    "gif": (
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "data:image/gif;base64,R0lG"}}
                    ],
                }
            ]
        },
        "messages[0].content[0].image_url.url",
    ),
    "unanswered tool call": (
        {
            "messages": [
                *USER,
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": "{}"},
                        }
                    ],
                },
                {"role": "user", "content": "Well?"},
            ]
        },
        "messages",
    ),
    "tool result for no call": (
        {"messages": [*USER, {"role": "tool", "tool_call_id": "c9", "content": "1"}]},
        "messages[1].tool_call_id",
    ),
}


@pytest.mark.parametrize(("extra", "param"), REFUSED.values(), ids=REFUSED.keys())
async def test_untranslatable_requests_are_400_naming_the_field(client, fake, extra, param):
    before = len(fake_of(fake).requests)
    status, error = await client.post(**extra)
    assert status == 400, error
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert len(fake_of(fake).requests) == before  # refused before anything went to Google


# -- errors: the client's, or the deployment's (the next one is tried) -----------------------


async def test_unknown_upstream_model_is_503_model_unavailable(client):
    status, error = await client.post(model="woozlit/g-gone")
    assert status == 503 and error["code"] == "model_unavailable"
    assert "gemini-0" not in error["message"]


@pytest.mark.parametrize("bad", ["gemini-0", "precondition", "unavailable", "server-error"])
async def test_a_deployment_at_fault_falls_through_to_the_next(client, fake, bad):
    status, answer = await client.post(model=f"woozlit/g-then-{bad}")
    assert status == 200, answer
    assert answer["choices"][0]["message"]["content"] == "Hello from Gemini!"
    assert [r.path.rsplit("/", 1)[-1] for r in fake_of(fake).requests[-2:]] == [
        f"{bad}:generateContent",
        "text:generateContent",
    ]


# -- the fake's model list ------------------------------------------------------------------


async def test_fake_lists_the_models_it_serves_by_pages():
    server = TestServer(create_fake_gemini(models=("gemini-2.5-flash", "a", "b")))
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            url = url_of(server) + "/v1beta/models"
            names, token, pages = [], None, 0
            while True:
                query = {"pageSize": "2", **({"pageToken": token} if token else {})}
                async with session.get(
                    url, params=query, headers={"x-goog-api-key": "test-key"}
                ) as resp:
                    assert resp.status == 200
                    page = await resp.json()
                pages += 1
                names += [m["name"] for m in page["models"]]
                assert all(
                    "generateContent" in m["supportedGenerationMethods"] for m in page["models"]
                )
                token = page.get("nextPageToken")
                if token is None:
                    break
            assert names == ["models/gemini-2.5-flash", "models/a", "models/b"] and pages == 2
            async with session.get(url, params={"key": "test-key"}) as resp:
                assert resp.status == 200
            async with session.get(url, params={"key": "wrong"}) as resp:
                error = (await resp.json())["error"]
                assert (resp.status, error["status"]) == (400, "INVALID_ARGUMENT")
            async with session.get(url) as resp:
                assert resp.status == 403
            body = {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}
            async with session.post(
                url + "/gemini-1.5-pro:generateContent",
                json=body,
                headers={"x-goog-api-key": "test-key"},
            ) as resp:
                error = (await resp.json())["error"]
                assert (resp.status, error["status"]) == (404, "NOT_FOUND")
                assert "models/gemini-1.5-pro is not found" in error["message"]
    finally:
        await server.close()


async def test_a_stream_with_fewer_candidates_than_asked_ends_cleanly(client):
    """n=3, and Google streams one candidate: the stream ends with [DONE], each choice with a
    finish reason (the ones that never came, empty), not with "ended the stream early"."""
    status, chunks = await client.post(n=3, stream=True)
    assert status == 200
    reasons = {
        choice["index"]: choice["finish_reason"]
        for chunk in chunks
        for choice in chunk["choices"]
        if choice["finish_reason"]
    }
    assert reasons == {0: "stop", 1: "stop", 2: "stop"}


@pytest.mark.parametrize(
    ("response_format", "param"),
    [
        ("json", "response_format"),
        ({"type": None}, "response_format"),
        ({"type": "xml"}, "response_format.type"),
        ({"type": "json_schema", "json_schema": "x"}, "response_format.json_schema"),
    ],
)
async def test_a_bad_response_format_is_a_400_naming_it(client, response_format, param):
    status, error = await client.post(response_format=response_format)
    assert status == 400
    assert error["param"] == param and "None" not in error["message"]
