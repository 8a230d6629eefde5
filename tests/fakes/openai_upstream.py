"""The fake OpenAI-compatible upstream: the real wire format, scenarios chosen per request,
behaviours chosen by options. The tests, the benchmarks, the chaos run and the deploy check
all use this one (`python -m tests.fakes` serves it on a port).

The scenario is chosen by the upstream model name the gateway sends (the part before any
`:`), so one fake serves many tests:

    gpt-4o-mini      a normal answer ("Hello! How can I help?", split into 5 chunks)
    deepseek-chat    DeepSeek's flavour: `: keep-alive` comments, usage on the finish chunk
    deepseek-reasoner  `reasoning_content` deltas (with `"content": null`) before the content
    tool-call-nulls  a streamed tool call whose later deltas carry `role`, `content`, `id`,
                     `type` and the function's `name` as null (vLLM, DeepSeek)
    no-usage         an answer with no usage at all (the gateway must estimate)
    slow             chunks `delay` seconds apart (default 0.02), with send times recorded
    endless          chunks forever, 0.01 s apart, until the client goes away
    thinking-<N>-<S>  DeepSeek thinking: the headers at once, `: keep-alive` every second
                     for N seconds, then S seconds of silence, then the normal answer
    chatty           the headers, then a comment every 0.3 s forever (with bytes a
                     terminal would act on), and never an event
    truncated        the stream stops without [DONE]
    midstream-error  an error event after two chunks
    early-error-<code>  an error event with that `code` (and its type) before any chunk
    error-400 / error-401 / error-429 / error-500   that status with OpenAI's error body
    error-<status>[-<code>]  that status with OpenAI's error body and `code`, e.g.
                     error-404-model_not_found, error-429-insufficient_quota; error-402 is
                     DeepSeek's Insufficient Balance; 429, 503 and 529 come with Retry-After
    hang             never answers
    gated            answers once the test sets `record.gate`
    o3, o4-mini, gpt-5...  a reasoning model: refuses `max_tokens` and a temperature but 1
    answer-N, greedy-N, lying-N  billed as the real provider bills: caps per choice, `n`,
                     a provider that bills past the cap or lies (tests/fakes/billing.py)
    ...-paced<MS>, ...-long[<N>]  the benchmarks' paced and endless streams (fast.py)

The options, on `Record`: `scenario` forces one scenario whatever the model (a provider that
fails while the deploy check says so); `chunks` makes the normal answer the benchmarks'
pre-encoded one of that many chunks, written straight to the transport (fast.py: the
benchmarks compare the gateway with a bare passthrough, and the fake must cost next to
nothing); `faults` makes every attempt a normal answer or a random fault (faults.py: the
chaos run); `keep` false records nothing (a benchmark's millions of requests); `models` None
serves any model name and lists none; `billing` holds the billing scenarios' settings and
what they billed.

Like OpenAI's API it refuses, with its error body and status: a model it does not serve
(`record.models`; 404 `model_not_found`, or DeepSeek's 400 "Model Not Exist" on the
unversioned path that DeepSeek's base URL gives), empty `messages`, a `tool` message that
answers no `tool_calls` id of the assistant message before it, an assistant's tool call that
no tool message answers, a tool call id over 40 characters, an unknown role,
`stream_options` without `stream`, and the wrong key when `record.api_key` is set.
`POST /v1/responses` is OpenAI's Responses API (tests/fakes/openai_responses.py, its own
scenarios). `GET /v1/models` lists `record.models` in OpenAI's shape;
`GET /models` (DeepSeek's base URL) in DeepSeek's.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.fakes import billing, fast, openai_responses
from tests.fakes import openai_wire as wire
from tests.fakes.billing import BillingRecord
from tests.fakes.faults import Faults
from tests.fakes.openai_wire import CODE_TYPES

TEXT = ["Hello", "!", " How", " can I", " help?"]
PROMPT_TOKENS = 11
COMPLETION_TOKENS = 7
SCENARIOS = (
    "gpt-4o-mini",
    "gpt-4o",
    "deepseek-chat",
    "deepseek-reasoner",
    "no-usage",
    "slow",
    "endless",
    "truncated",
    "midstream-error",
    "hang",
    "gated",
    "o3",
    "o4-mini",
    "gpt-5",
    "tool-call-nulls",
    "chatty",
)
# What the fake serves by default: every scenario; error-*, early-error-*, thinking-* and
# billing always.
DEFAULT_MODELS = SCENARIOS
# Scenarios that are more than a normal answer: `chunks` does not replace them.
SPECIAL = frozenset(SCENARIOS) - {"gpt-4o-mini", "gpt-4o"}
REASONING = re.compile(r"^(o\d|gpt-5)")
ERROR_SCENARIO = re.compile(r"^error-(\d{3})(?:-(\w+))?$")
THINKING = re.compile(r"^thinking-(\d+)-(\d+)$")
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
BOTH_CAPS = "Setting 'max_tokens' and 'max_completion_tokens' at the same time is not supported."
NOT_FOUND = b'{"error":{"message":"not found","type":"invalid_request_error"}}'


@dataclass
class Record:
    """What the fake saw, and its options (the module's docstring)."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    sent_at: list[float] = field(default_factory=list)  # perf_counter of each stream chunk
    disconnects: int = 0  # streams whose client went away before the end
    delay: float = 0.02
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    models: list[str] | None = field(default_factory=lambda: list(DEFAULT_MODELS))  # served
    api_key: str | None = None  # when set, requests without `Bearer <api_key>` get 401
    scenario: str | None = None  # when set, every request gets it, whatever its model
    keep: bool = True  # keep `requests` and `headers`
    chunks: int | None = None  # the normal answer: the benchmarks' pre-encoded, this many chunks
    chunk_delay_ms: float = 0.0  # with `chunks`: every stream paced (-paced<MS> overrides it)
    faults: Faults | None = None  # every attempt a normal answer or a random fault
    billing: BillingRecord = field(default_factory=BillingRecord)  # the billing scenarios'


Answer = Callable[[web.BaseRequest, dict[str, Any], str, str], Awaitable[web.StreamResponse]]


class FakeOpenAI:
    """The fake, as one low-level handler: `handle` serves `POST .../chat/completions` and
    `GET /v1/models`, `/models` under `web.Server` (`python -m tests.fakes`) or an app."""

    def __init__(self, record: Record | None = None) -> None:
        self.record = record if record is not None else Record()
        self._fast: fast.FastAnswers | None = None
        self._answers: dict[str, tuple[Answer, bool]] = {}  # by scenario (_answer_for)

    @property
    def fast(self) -> fast.FastAnswers:
        if self._fast is None:
            self._fast = fast.FastAnswers(self.record.chunks or 20, self.record.chunk_delay_ms)
        return self._fast

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.method == "POST" and request.path.endswith("/chat/completions"):
            return await self.completions(request)
        if request.method == "POST" and request.path == "/v1/responses":
            return await self.responses(request)
        if request.method == "GET" and request.path in ("/v1/models", "/models"):
            return self.list_models(request)
        return web.Response(status=404, body=NOT_FOUND, content_type="application/json")

    def key_refused(self, request: web.BaseRequest) -> web.Response | None:
        key = self.record.api_key
        if key is None or request.headers.get("Authorization") == f"Bearer {key}":
            return None
        return wire.error(401, "Incorrect API key provided.", "invalid_request_error", None,
                          "invalid_api_key")  # fmt: skip

    def serves(self, scenario: str) -> bool:
        models = self.record.models
        return (
            models is None
            or scenario in models
            or scenario.startswith(("error-", "early-error-"))
            or THINKING.match(scenario) is not None
            or billing.scenario(scenario) is not None
        )

    async def completions(self, request: web.BaseRequest) -> web.StreamResponse:
        record = self.record
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            return wire.invalid("We could not parse the JSON body of your request.", None)
        if record.keep:
            record.requests.append(body)
            record.headers.append(dict(request.headers))
        if record.api_key is not None and (refused := self.key_refused(request)) is not None:
            return refused
        if record.faults is not None:
            return await record.faults.answer(request, body)
        model = body.get("model", "")
        if not isinstance(model, str):
            return wire.invalid("Invalid type for 'model': expected a string.", "model")
        scenario = record.scenario or model.split(":")[0]
        if not self.serves(scenario):
            if not request.path.startswith("/v1/"):  # DeepSeek's base URL
                return wire.invalid("Model Not Exist", None)
            message = f"The model `{model}` does not exist or you do not have access to it."
            return wire.error(404, message, "invalid_request_error", None, "model_not_found")
        answer, checked = self._answers.get(scenario) or self._answer_for(scenario)
        if checked and (refused := refusal(body, scenario)) is not None:
            return refused
        return await answer(request, body, model, scenario)

    async def responses(self, request: web.BaseRequest) -> web.StreamResponse:
        """`POST /v1/responses`: OpenAI's Responses API (tests/fakes/openai_responses.py)."""
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            return wire.invalid("We could not parse the JSON body of your request.", None)
        if self.record.keep:
            self.record.requests.append(body)
            self.record.headers.append(dict(request.headers))
        if (refused := self.key_refused(request)) is not None:
            return refused
        if body.get("model") == "gated":
            await self.record.gate.wait()
        return await openai_responses.respond(request, body)

    def _answer_for(self, scenario: str) -> tuple[Answer, bool]:
        """What answers the scenario, and whether the body is checked first (not for the
        benchmarks' answers: they are sent fixed, valid requests, and must cost nothing)."""
        found: tuple[Answer, bool]
        if fast.is_fast(scenario):
            found = self._fast_answer, False
        elif billing.scenario(scenario) is not None:
            found = self._billed, True
        elif (
            self.record.chunks is None
            or scenario in SPECIAL
            or REASONING.match(scenario)
            or scenario.startswith(("error-", "early-error-", "deepseek", "thinking-"))
        ):
            found = self._scripted, True
        else:
            found = self._fast_answer, False
        if len(self._answers) < 1000:
            self._answers[scenario] = found
        return found

    async def _fast_answer(
        self, request: web.BaseRequest, body: dict[str, Any], model: str, scenario: str
    ) -> web.StreamResponse:
        return await self.fast.answer(request, body)

    def list_models(self, request: web.BaseRequest) -> web.Response:
        if (refused := self.key_refused(request)) is not None:
            return refused
        if self.record.models is None:
            return web.Response(status=404, body=NOT_FOUND, content_type="application/json")
        owner = "openai" if request.path.startswith("/v1/") else "deepseek"
        data: list[dict[str, Any]] = []
        for name in self.record.models:
            entry: dict[str, Any] = {"id": name, "object": "model", "owned_by": owner}
            if owner == "openai":
                entry["created"] = wire.CREATED
            data.append(entry)
        return web.json_response({"object": "list", "data": data})

    # -- scripted answers -------------------------------------------------------------------

    async def _scripted(
        self, request: web.BaseRequest, body: dict[str, Any], model: str, scenario: str
    ) -> web.StreamResponse:
        record = self.record
        if scenario == "hang":
            await asyncio.sleep(3600)
        if scenario == "gated":
            await record.gate.wait()
        if scenario == "error-400":
            return wire.error(400, "Invalid 'messages': too long.", "invalid_request_error")
        if scenario == "error-401":
            return wire.error(401, "Incorrect API key provided: sk-secret***",
                              "invalid_request_error")  # fmt: skip
        if scenario == "error-429":
            return wire.error(429, "Rate limit reached.", "rate_limit_error",
                              headers={"Retry-After": "7"})  # fmt: skip
        if scenario == "error-500":
            return wire.error(500, "The server had an error.", "server_error")
        if match := ERROR_SCENARIO.match(scenario):
            return _status_error(int(match[1]), match[2])
        if not body.get("stream"):
            usage = None if scenario == "no-usage" else wire.usage(PROMPT_TOKENS, COMPLETION_TOKENS)
            answer = wire.completion(model, ["".join(TEXT)], usage)
            return web.Response(body=orjson.dumps(answer), content_type="application/json")

        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        include_usage = (body.get("stream_options") or {}).get("include_usage")
        try:
            await self._stream(resp, scenario, model, include_usage)
        except (ConnectionResetError, asyncio.CancelledError):
            record.disconnects += 1
            raise
        return resp

    async def _stream(
        self, resp: web.StreamResponse, scenario: str, model: str, include_usage: bool
    ) -> None:
        record = self.record

        async def send(data: dict[str, Any]) -> None:
            record.sent_at.append(time.perf_counter())
            await resp.write(wire.event(data))

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict:
            return wire.chunk(model, delta, finish, **extra)

        usage = wire.usage(PROMPT_TOKENS, COMPLETION_TOKENS)
        deepseek = scenario.startswith("deepseek")
        if scenario.startswith("early-error-"):
            code = scenario.removeprefix("early-error-")
            kind, text = CODE_TYPES.get(code, "server_error"), f"Stream failed: {code}."
            error = {"message": text, "type": kind, "param": None, "code": code}
            await resp.write(wire.event({"error": error}))
            return
        if match := THINKING.match(scenario):
            for _ in range(int(match[1])):
                await asyncio.sleep(1.0)
                await resp.write(b": keep-alive\n\n")
            await asyncio.sleep(int(match[2]))
        while scenario == "chatty":
            await resp.write(b": ping \x1b[31m\x00\n\n")
            await asyncio.sleep(0.3)
        await send(chunk({"role": "assistant", "content": ""}))
        if scenario == "tool-call-nulls":
            first = {"index": 0, "id": "call_1", "type": "function",
                     "function": {"name": "weather", "arguments": ""}}  # fmt: skip
            await send(chunk({"role": None, "content": None, "tool_calls": [first]}))
            for piece in ('{"city": ', '"Paris"}'):
                call = {"index": 0, "id": None, "type": None,
                        "function": {"name": None, "arguments": piece}}  # fmt: skip
                await send(chunk({"role": None, "content": None, "tool_calls": [call]}))
            await send(chunk({"content": None}, "tool_calls", usage=usage))
            await resp.write(wire.DONE)
            return
        if scenario == "deepseek-reasoner":
            for piece in ("Let me", " think."):
                await send(chunk({"content": None, "reasoning_content": piece}))
        if scenario == "endless":
            while True:
                await asyncio.sleep(0.01)
                await send(chunk({"content": "la "}))
        for i, piece in enumerate(TEXT):
            if scenario == "slow":
                await asyncio.sleep(record.delay)
            if deepseek and i == 2:
                await resp.write(b": keep-alive\n\n")
            await send(chunk({"content": piece}))
            if scenario == "midstream-error" and i == 1:
                crash = {"error": {"message": "The model crashed.", "type": "server_error"}}
                await resp.write(wire.event(crash))
                return
            if scenario == "truncated" and i == 2:
                return
        if deepseek:
            await send(chunk({"content": ""}, "stop", usage=usage))
        else:
            await send(chunk({}, "stop"))
            if include_usage and scenario != "no-usage":
                await send(wire.usage_chunk(model, usage))
        await resp.write(wire.DONE)

    # -- billed answers (tests/fakes/billing.py) --------------------------------------------

    async def _billed(
        self, request: web.BaseRequest, body: dict[str, Any], model: str, scenario: str
    ) -> web.StreamResponse:
        record = self.record.billing
        billed = billing.start(record, "openai", body)
        if (refused := _caps_refusal(body)) is not None:
            message, param, code = refused
            error = {"message": message, "type": "invalid_request_error", "param": param,
                     "code": code}  # fmt: skip
            return billing.refused(billed, 400, {"error": error})
        cap = body.get("max_completion_tokens")
        cap = body.get("max_tokens") if cap is None else cap
        n = body.get("n") or 1
        messages = billing.dicts(body.get("messages"))
        chars = sum(billing.text_chars(m.get("content")) for m in messages)
        kind = billing.scenario(scenario)
        assert kind is not None
        billing.bill(record, billed, kind, cap, n, chars)
        if not billed.stream:
            return await billing.send(request, record, billed, [_billed_answer(billed)],
                                      "application/json")  # fmt: skip
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        events = _billed_events(billed, record.chunk_tokens, include_usage)
        return await billing.send(request, record, billed, events, "text/event-stream")


def create_fake_openai(record: Record | None = None) -> web.Application:
    """The fake as an app (for aiohttp's TestServer), recording into `record`."""
    fake = FakeOpenAI(record)
    app = web.Application(client_max_size=16 << 20)  # real APIs take bodies of many MiB
    app.router.add_route("*", "/{path:.*}", fake.handle)
    return app


def _status_error(status: int, code: str | None) -> web.Response:
    """`error-<status>[-<code>]`: OpenAI's body for that status and code (DeepSeek's 402)."""
    if status == 402:
        return wire.error(402, "Insufficient Balance", "unknown_error")
    messages = {
        404: "The model does not exist or you do not have access to it.",
        403: "Country, region, or territory not supported.",
        408: "Request timed out.",
        429: "You exceeded your current quota, please check your plan and billing details."
        if code == "insufficient_quota"
        else "Rate limit reached.",
        503: "The engine is currently overloaded, please try again later.",
        529: "Overloaded.",
    }
    message = messages.get(status, f"The server answered {status}.")
    kind = CODE_TYPES.get(code or "", "server_error" if status >= 500 else "invalid_request_error")
    headers = {"Retry-After": "3"} if status in (429, 503, 529) else None
    return wire.error(status, message, kind, None, code, headers)


def refusal(body: dict[str, Any], scenario: str) -> web.Response | None:
    """What OpenAI's chat completions API refuses in this body, as its answer; else None."""
    if REASONING.match(scenario):
        if "max_tokens" in body:
            return wire.invalid(
                "Unsupported parameter: 'max_tokens' is not supported with this model."
                " Use 'max_completion_tokens' instead.",
                "max_tokens",
                "unsupported_parameter",
            )
        if body.get("temperature") not in (None, 1, 1.0):
            return wire.invalid(
                f"Unsupported value: 'temperature' does not support {body['temperature']}"
                " with this model. Only the default (1) value is supported.",
                "temperature",
                "unsupported_value",
            )
    if body.get("stream_options") is not None and not body.get("stream"):
        return wire.invalid(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            "stream_options",
        )
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return wire.invalid(
            "Invalid 'messages': empty array. Expected an array with minimum length 1.",
            "messages",
            "empty_array",
        )
    pending: list[str] = []  # tool_call ids of the last assistant message not yet answered
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ROLES:
            return wire.invalid(f"Invalid value: '{role}'. Supported values are: {sorted(ROLES)}.",
                                f"messages[{i}].role", "invalid_value")  # fmt: skip
        if role == "tool":
            answered = message.get("tool_call_id")
            if answered not in pending:
                return wire.invalid(
                    "Invalid parameter: messages with role 'tool' must be a response to a"
                    " preceding message with 'tool_calls'.",
                    f"messages.[{i}].role",
                )
            pending.remove(answered)
            continue
        if pending:
            return _unanswered(i - 1, pending)
        if role == "assistant":
            calls = message.get("tool_calls") or ()
            pending = [c.get("id") for c in calls if isinstance(c, dict)]
            for j, call_id in enumerate(pending):
                if isinstance(call_id, str) and len(call_id) > 40:
                    return wire.invalid(
                        f"Invalid 'messages[{i}].tool_calls[{j}].id': string too long. Expected"
                        f" a string with maximum length 40, but got a string with length"
                        f" {len(call_id)} instead.",
                        f"messages[{i}].tool_calls[{j}].id",
                        "string_above_max_length",
                    )
    if pending:
        return _unanswered(len(messages) - 1, pending)
    return None


def _unanswered(i: int, ids: list[str]) -> web.Response:
    return wire.invalid(
        "An assistant message with 'tool_calls' must be followed by tool messages responding"
        " to each 'tool_call_id'. The following tool_call_ids did not have response messages: "
        + ", ".join(ids),
        f"messages.[{i}].role",
    )


def _caps_refusal(body: dict[str, Any]) -> tuple[str, str, str] | None:
    """The 400 the real service answers to these caps and `n`: message, param, code."""
    if body.get("max_completion_tokens") is not None and body.get("max_tokens") is not None:
        return BOTH_CAPS, "max_tokens", "invalid_parameter_combination"
    for param, high in (("max_completion_tokens", None), ("max_tokens", None), ("n", 128)):
        value = body.get(param)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            message = f"Invalid '{param}': expected an integer >= 1, but got {value!r} instead."
            return message, param, "invalid_value"
        if high is not None and value > high:
            message = f"Invalid '{param}': expected a value <= {high}, but got {value} instead."
            return message, param, "integer_above_max_value"
    return None


def _billed_usage(billed: billing.Billed) -> dict[str, Any]:
    return {
        **wire.usage(billed.prompt_tokens, billed.completion_tokens),
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }


BILLED = {"id": "chatcmpl-billing", "fingerprint": "fp_billing"}


def _billed_answer(billed: billing.Billed) -> billing.Event:
    text = billing.TOKEN * billed.produced
    answer = wire.completion(billed.body.get("model"), [text] * billed.n, _billed_usage(billed),
                             finish="length" if billed.cut else "stop", **BILLED)  # fmt: skip
    return orjson.dumps(answer), billed.produced * billed.n


def _billed_events(
    billed: billing.Billed, size: int, include_usage: bool
) -> Iterator[billing.Event]:
    model = billed.body.get("model")
    # With include_usage, every chunk carries `"usage": null`, as the real service's do.
    extra: dict[str, Any] = {"usage": None} if include_usage else {}

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return wire.event(wire.chunk(model, delta, finish, index=index, **BILLED, **extra))

    for i in range(billed.n):
        yield chunk(i, {"role": "assistant", "content": "", "refusal": None}), 0
    for tokens in billing.pieces(billed.produced, size):
        text = billing.TOKEN * tokens
        for i in range(billed.n):
            yield chunk(i, {"content": text}), tokens
    for i in range(billed.n):
        yield chunk(i, {}, "length" if billed.cut else "stop"), 0
    if include_usage:
        usage = wire.usage_chunk(model, _billed_usage(billed), id=BILLED["id"],
                                 fingerprint=BILLED["fingerprint"])  # fmt: skip
        yield wire.event(usage), 0
    yield wire.DONE, 0
