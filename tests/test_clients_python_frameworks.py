"""The Python frameworks of the OpenAI ecosystem, pointed at the gateway's `/v1` as their users
point them: LangChain (ChatOpenAI), litellm (`openai/` prefix, api_base), pydantic-ai
(OpenAIChatModel with a base URL), openai-agents (OpenAIChatCompletionsModel) and llm (an
extra OpenAI model in extra-openai-models.yaml).

Each is run with its default retry settings, answers non-stream and stream, parses a tool call,
and shows the gateway's sentence for a 401, a 400, the quota 429 (sent once) and an error
mid-stream. Synchronous clients run in a thread: the gateway serves on this event loop.
"""

from __future__ import annotations

import gc
import json
import os
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.clients.harness import (
    ANSWERS,
    BAD_KEY,
    CRASHING_MODEL,
    OPENAI_MODEL,
    TOOL_CITIES,
    TOOLS_MODEL,
    UNKNOWN_MODEL,
    WEATHER_TOOL,
    ClientGateway,
    serving,
)
from tests.conftest import FakeUpstream, GatewayFactory

# litellm fetches its model price map from the web at import unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

CITY_PROPERTIES = WEATHER_TOOL["function"]["parameters"]


@pytest.fixture
async def client_gateway(
    gateway: GatewayFactory, fake_openai: FakeUpstream, redis_url: str
) -> AsyncIterator[ClientGateway]:
    async with serving(gateway, fake_openai, redis_url) as served:
        yield served


# -- one adapter per client: (base URL, key, model) -> what its user gets -------------------


class Client:
    """What a test asks of a client; each subclass does it the way that client's docs do."""

    name = ""

    def __init__(self, base: str, key: str, tmp: Path):
        self.base, self.key, self.tmp = base, key, tmp
        self.opened: list[Any] = []  # openai clients made here, closed at the end

    def openai(self) -> Any:
        from openai import AsyncOpenAI

        client = AsyncOpenAI(base_url=self.base, api_key=self.key, timeout=20)
        self.opened.append(client)
        return client

    async def aclose(self) -> None:
        for client in self.opened:
            await client.close()

    async def text(self, model: str) -> str:
        raise NotImplementedError

    async def stream(self, model: str) -> str:
        """The text streamed, as received before any error."""
        raise NotImplementedError

    async def tool_calls(self, model: str, stream: bool) -> list[tuple[str, dict[str, Any]]]:
        raise NotImplementedError


class LangChain(Client):
    name = "langchain"

    def chat(self, model: str) -> Any:
        from langchain_openai import ChatOpenAI

        return ChatOpenAI(model=model, base_url=self.base, api_key=self.key, timeout=20)

    async def text(self, model: str) -> str:
        return str((await self.chat(model).ainvoke("Hello!")).content)

    async def stream(self, model: str) -> str:
        self.received = ""
        async for chunk in self.chat(model).astream("Hello!"):
            self.received += str(chunk.content)
        return self.received

    async def tool_calls(self, model: str, stream: bool) -> list[tuple[str, dict[str, Any]]]:
        bound = self.chat(model).bind_tools([WEATHER_TOOL])
        if stream:
            message = None
            async for chunk in bound.astream("Weather in Paris and London?"):
                message = chunk if message is None else message + chunk
        else:
            message = await bound.ainvoke("Weather in Paris and London?")
        assert message is not None
        return [(c["name"], c["args"]) for c in message.tool_calls]


class LiteLLM(Client):
    name = "litellm"

    async def call(self, model: str, **extra: Any) -> Any:
        import litellm

        return await litellm.acompletion(
            model="openai/" + model,
            api_base=self.base,
            api_key=self.key,
            messages=[{"role": "user", "content": "Hello!"}],
            timeout=20,
            **extra,
        )

    async def text(self, model: str) -> str:
        return str((await self.call(model)).choices[0].message.content)

    async def stream(self, model: str) -> str:
        self.received = ""
        async for chunk in await self.call(model, stream=True):
            self.received += chunk.choices[0].delta.content or "" if chunk.choices else ""
        return self.received

    async def tool_calls(self, model: str, stream: bool) -> list[tuple[str, dict[str, Any]]]:
        import litellm

        if not stream:
            message = (await self.call(model, tools=[WEATHER_TOOL])).choices[0].message
            calls = message.tool_calls or []
            return [(c.function.name, json.loads(c.function.arguments)) for c in calls]
        chunks = [c async for c in await self.call(model, tools=[WEATHER_TOOL], stream=True)]
        built = litellm.stream_chunk_builder(chunks)
        calls = built.choices[0].message.tool_calls or []
        return [(c.function.name, json.loads(c.function.arguments)) for c in calls]


class PydanticAI(Client):
    name = "pydantic-ai"

    def model(self, model: str) -> Any:
        from pydantic_ai.models.openai import OpenAIChatModel
        from pydantic_ai.providers.openai import OpenAIProvider

        return OpenAIChatModel(model, provider=OpenAIProvider(openai_client=self.openai()))

    async def text(self, model: str) -> str:
        from pydantic_ai import Agent

        return str((await Agent(self.model(model)).run("Hello!")).output)

    async def stream(self, model: str) -> str:
        from pydantic_ai import Agent

        self.received = ""
        async with Agent(self.model(model)).run_stream("Hello!") as run:
            async for delta in run.stream_text(delta=True, debounce_by=None):
                self.received += delta
        return self.received

    async def tool_calls(self, model: str, stream: bool) -> list[tuple[str, dict[str, Any]]]:
        # One request, not an agent loop: the fakes call the tool whatever the history says.
        from pydantic_ai.direct import model_request, model_request_stream
        from pydantic_ai.messages import ModelRequest, ToolCallPart
        from pydantic_ai.models import ModelRequestParameters
        from pydantic_ai.tools import ToolDefinition

        messages = [ModelRequest.user_text_prompt("Weather in Paris and London?")]
        parameters = ModelRequestParameters(
            function_tools=[
                ToolDefinition(
                    name="get_weather",
                    description="Current weather in a city.",
                    parameters_json_schema=CITY_PROPERTIES,
                )
            ]
        )
        if stream:
            async with model_request_stream(
                self.model(model), messages, model_request_parameters=parameters
            ) as response_stream:
                async for _ in response_stream:
                    pass
                response = response_stream.get()
        else:
            response = await model_request(
                self.model(model), messages, model_request_parameters=parameters
            )
        return [
            (part.tool_name, part.args_as_dict())
            for part in response.parts
            if isinstance(part, ToolCallPart)
        ]


class OpenAIAgents(Client):
    name = "openai-agents"

    def agent(self, model: str, **extra: Any) -> Any:
        from agents import Agent, OpenAIChatCompletionsModel, set_tracing_disabled

        set_tracing_disabled(True)  # traces would go to OpenAI
        return Agent(
            name="assistant",
            model=OpenAIChatCompletionsModel(model=model, openai_client=self.openai()),
            **extra,
        )

    async def text(self, model: str) -> str:
        from agents import Runner

        return str((await Runner.run(self.agent(model), "Hello!")).final_output)

    async def stream(self, model: str) -> str:
        from agents import Runner
        from openai.types.responses import ResponseTextDeltaEvent

        self.received = ""
        run = Runner.run_streamed(self.agent(model), "Hello!")
        async for event in run.stream_events():
            if event.type == "raw_response_event" and isinstance(
                event.data, ResponseTextDeltaEvent
            ):
                self.received += event.data.delta
        return self.received

    async def tool_calls(self, model: str, stream: bool) -> list[tuple[str, dict[str, Any]]]:
        from agents import Runner, function_tool

        seen: list[tuple[str, dict[str, Any]]] = []

        @function_tool
        def get_weather(city: str, unit: str = "celsius") -> str:
            """Current weather in a city."""
            seen.append(("get_weather", {"city": city, "unit": unit}))
            return f"21 {unit} in {city}"

        # The tool's answer is the agent's: no second request (the fakes would call again).
        agent = self.agent(model, tools=[get_weather], tool_use_behavior="stop_on_first_tool")
        if stream:
            run = Runner.run_streamed(agent, "Weather in Paris and London?")
            async for _ in run.stream_events():
                pass
            output = run.final_output
        else:
            output = (await Runner.run(agent, "Weather in Paris and London?")).final_output
        assert output == f"21 celsius in {seen[0][1]['city']}"
        return seen


class LLM(Client):
    """Simon Willison's llm, with the gateway as an extra OpenAI model in its user dir."""

    name = "llm"

    def __init__(self, base: str, key: str, tmp: Path):
        super().__init__(base, key, tmp)
        self.models: list[str] = []

    async def aclose(self) -> None:
        # llm makes an AsyncOpenAI per prompt and never closes it: its sockets are collected
        # here, where their ResourceWarning says nothing about the gateway.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()

    def model(self, model: str) -> Any:
        import llm
        import yaml

        if model not in self.models:
            self.models.append(model)
            entries = [
                {
                    "model_id": "gw-" + name.removeprefix("woozlit/"),
                    "model_name": name,
                    "api_base": self.base,
                    "supports_tools": True,
                    "api_key_name": "woozlit",
                }
                for name in self.models
            ]
            (self.tmp / "extra-openai-models.yaml").write_text(yaml.safe_dump(entries))
        return llm.get_async_model("gw-" + model.removeprefix("woozlit/"))

    async def text(self, model: str) -> str:
        return str(await self.model(model).prompt("Hello!", stream=False, key=self.key).text())

    async def stream(self, model: str) -> str:
        self.received = ""
        async for piece in self.model(model).prompt("Hello!", key=self.key):
            self.received += piece
        return self.received

    async def tool_calls(self, model: str, stream: bool) -> list[tuple[str, dict[str, Any]]]:
        def get_weather(city: str, unit: str = "celsius") -> str:
            """Current weather in a city."""
            return f"21 {unit} in {city}"

        response = self.model(model).prompt(
            "Weather in Paris and London?", tools=[get_weather], stream=stream, key=self.key
        )
        await response.text()
        return [(call.name, call.arguments) for call in await response.tool_calls()]


CLIENTS = [LangChain, LiteLLM, PydanticAI, OpenAIAgents, LLM]


@pytest.fixture(params=CLIENTS, ids=[c.name for c in CLIENTS])
async def make(
    request: pytest.FixtureRequest, client_gateway: ClientGateway, tmp_path: Path
) -> AsyncIterator[Callable[..., Client]]:
    cls = request.param
    made: list[Client] = []

    def make(key: str | None = None) -> Client:
        made.append(cls(client_gateway.v1, key or client_gateway.key, tmp_path))
        return made[-1]

    yield make
    for client in made:
        await client.aclose()


@pytest.fixture(autouse=True)
def _llm_user_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LLM_USER_PATH", str(tmp_path))


async def test_text(make: Callable[..., Client]) -> None:
    assert await make().text(OPENAI_MODEL) == ANSWERS[OPENAI_MODEL]


async def test_stream(make: Callable[..., Client]) -> None:
    assert await make().stream(OPENAI_MODEL) == ANSWERS[OPENAI_MODEL]


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
async def test_tool_call(make: Callable[..., Client], stream: bool) -> None:
    calls = await make().tool_calls(TOOLS_MODEL, stream)
    assert [name for name, _ in calls] == ["get_weather"] * len(calls)
    # An agent runs the first call and stops there; the others show every call.
    assert [args["city"] for _, args in calls] == TOOL_CITIES[: len(calls)]
    assert calls


async def raised(call: Awaitable[Any]) -> BaseException:
    try:
        await call
    except Exception as exc:  # each client has its own exception types
        return exc
    raise AssertionError("no error")


def text_of(exc: BaseException) -> str:
    """Everything a user reading the error sees: its text and what it was raised from."""
    parts = []
    seen: BaseException | None = exc
    while seen is not None:
        parts.append(f"{type(seen).__name__}: {seen}")
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


async def test_bad_key(make: Callable[..., Client], client_gateway: ClientGateway) -> None:
    sentence = await client_gateway.sentence("401")
    exc = await raised(make(BAD_KEY).text(OPENAI_MODEL))
    assert sentence in str(exc), text_of(exc)


async def test_bad_request(make: Callable[..., Client], client_gateway: ClientGateway) -> None:
    sentence = await client_gateway.sentence("400")
    exc = await raised(make().text(UNKNOWN_MODEL))
    assert sentence in str(exc), text_of(exc)


async def test_quota_sent_once(make: Callable[..., Client], client_gateway: ClientGateway) -> None:
    sentence = await client_gateway.sentence("quota")
    before = client_gateway.quota_refusals()
    exc = await raised(make(client_gateway.quota_key).text(OPENAI_MODEL))
    assert sentence in str(exc), text_of(exc)
    assert client_gateway.quota_refusals() - before == 1


async def test_error_mid_stream(make: Callable[..., Client], client_gateway: ClientGateway) -> None:
    sentence = await client_gateway.sentence("midstream")
    client = make()
    exc = await raised(client.stream(CRASHING_MODEL))
    assert sentence in str(exc), text_of(exc)
    assert client.received == "Hello!"  # what came before the error reached the user
