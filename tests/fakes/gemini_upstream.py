"""A fake Gemini API for tests, speaking Google's wire format on loopback.

`POST /v1beta/models/{model}:generateContent` answers one GenerateContentResponse;
`:streamGenerateContent?alt=sse` answers `data: {...}\\r\\n\\r\\n` events, each a whole
response with the candidates' new parts and the cumulative `usageMetadata`, and then just
ends, with no terminal event, as Google does. Without `alt=sse` it answers a JSON array, as
Google does, so a gateway that forgot the parameter fails loudly.

The key must come in `x-goog-api-key`: a wrong one gets Google's 400 INVALID_ARGUMENT with
reason API_KEY_INVALID, a missing one 403 PERMISSION_DENIED. A few request rules catch
translation mistakes the way Google's validation does (unknown field names, empty parts,
a functionResponse naming no called function).

The scenario is chosen by the model name in the path (see SCENARIOS; any other model is
"text"). Every request is kept in `fake.requests`, and every stream chunk is stamped with the
monotonic time just before it was written, so a test can tell whether a delta reached its
client before the next upstream chunk went out.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

MODEL_VERSION = "gemini-1.5-pro-002"
PROMPT_TOKENS = 11
KEY_INVALID_MESSAGE = "API key not valid. Please pass a valid API key."

# Scenarios answered with an HTTP error before any stream: status, Google status, message.
HTTP_ERRORS: dict[str, tuple[int, str, str]] = {
    "bad-request": (
        400,
        "INVALID_ARGUMENT",
        "* GenerateContentRequest.generation_config.max_output_tokens: must be positive",
    ),
    "precondition": (400, "FAILED_PRECONDITION", "User location is not supported for the API use."),
    "not-found": (
        404,
        "NOT_FOUND",
        "models/gemini-0 is not found for API version v1beta, or is not supported "
        "for generateContent.",
    ),
    "rate-limited": (
        429,
        "RESOURCE_EXHAUSTED",
        "You exceeded your current quota, please check your plan and billing details.",
    ),
    "server-error": (500, "INTERNAL", "An internal error has occurred."),
    "unavailable": (503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
}
SCENARIOS = (
    "text",
    "slow",
    "tools",
    "thinking",
    "blocked",
    "safety",
    "max-tokens",
    "multi",
    "midstream-error",
    "truncated",
    *HTTP_ERRORS,
)

REQUEST_FIELDS = {
    "contents",
    "systemInstruction",
    "generationConfig",
    "tools",
    "toolConfig",
    "safetySettings",
    "cachedContent",
}
GENERATION_FIELDS = {
    "temperature",
    "topP",
    "topK",
    "maxOutputTokens",
    "stopSequences",
    "presencePenalty",
    "frequencyPenalty",
    "seed",
    "candidateCount",
    "responseMimeType",
    "responseSchema",
    "responseJsonSchema",
    "responseLogprobs",
    "logprobs",
    "thinkingConfig",
    "responseModalities",
}
TEXT = ["Hello", " from", " Gemini", "!"]
TOOL_CALLS = [
    {"name": "get_weather", "args": {"city": "Paris", "unit": "celsius"}},
    {"name": "get_weather", "args": {"city": "London", "unit": "celsius"}},
]


@dataclass
class Received:
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: dict[str, Any]
    sent_at: list[float] = field(default_factory=list)  # monotonic time of each stream chunk


class FakeGemini:
    def __init__(self, api_key: str, chunk_delay: float):
        self.api_key = api_key
        self.chunk_delay = chunk_delay  # seconds between chunks of the "slow" scenario
        self.requests: list[Received] = []

    @property
    def last(self) -> Received:
        return self.requests[-1]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        model, _, method = request.match_info["target"].rpartition(":")
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        received = Received(request.path, dict(request.query), dict(request.headers), body)
        self.requests.append(received)

        key = request.headers.get("x-goog-api-key")
        if key is None:
            return _error(
                403,
                "PERMISSION_DENIED",
                "Method doesn't allow unregistered callers (callers without "
                "established identity). Please use API Key or other form of API "
                "consumer identity to call this API.",
            )
        if key != self.api_key:
            return _error(
                400,
                "INVALID_ARGUMENT",
                KEY_INVALID_MESSAGE,
                [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "API_KEY_INVALID",
                        "domain": "googleapis.com",
                        "metadata": {"service": "generativelanguage.googleapis.com"},
                    }
                ],
            )
        if method not in ("generateContent", "streamGenerateContent"):
            return _error(404, "NOT_FOUND", f"Method {method!r} not found.")
        problem = _invalid(body)
        if problem:
            return _error(400, "INVALID_ARGUMENT", problem)
        scenario = model if model in SCENARIOS else "text"
        if scenario in HTTP_ERRORS:
            status, google, message = HTTP_ERRORS[scenario]
            details = (
                [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}]
                if status == 429
                else None
            )
            return _error(status, google, message, details)

        n = body.get("generationConfig", {}).get("candidateCount", 1)
        chunks = _chunks(scenario, n)
        if method == "generateContent":
            return web.json_response(_merge(chunks), dumps=_dumps)
        if request.query.get("alt") != "sse":
            return web.json_response(chunks, dumps=_dumps)
        return await self._stream(request, received, scenario, chunks)

    async def _stream(
        self, request: web.Request, received: Received, scenario: str, chunks: list[dict[str, Any]]
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i, chunk in enumerate(chunks):
            if i and scenario == "slow":
                await asyncio.sleep(self.chunk_delay)
            received.sent_at.append(time.monotonic())
            await response.write(b"data: " + orjson.dumps(chunk) + b"\r\n\r\n")
        if scenario == "midstream-error":
            error = {
                "error": {
                    "code": 503,
                    "message": "The model is overloaded.",
                    "status": "UNAVAILABLE",
                }
            }
            await response.write(b"data: " + orjson.dumps(error) + b"\r\n\r\n")
        await response.write_eof()
        return response


FAKE_GEMINI = web.AppKey("fake_gemini", FakeGemini)


def create_fake_gemini(api_key: str = "test-key", chunk_delay: float = 0.1) -> web.Application:
    """The fake as an app; the FakeGemini itself is `app[FAKE_GEMINI]`."""
    app = web.Application(client_max_size=16 << 20)  # real APIs take bodies of many MiB
    fake = FakeGemini(api_key, chunk_delay)
    app[FAKE_GEMINI] = fake
    app.router.add_post("/v1beta/models/{target}", fake.handle)
    return app


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _error(
    status: int, google: str, message: str, details: list[dict[str, Any]] | None = None
) -> web.Response:
    error: dict[str, Any] = {"code": status, "message": message, "status": google}
    if details:
        error["details"] = details
    return web.json_response({"error": error}, status=status, dumps=_dumps)


def _invalid(body: Any) -> str | None:
    """What Google's own validation would refuse in this request, if anything."""
    if not isinstance(body, dict):
        return "Invalid JSON payload received. Expected an object."
    for name in body.keys() - REQUEST_FIELDS:
        return f'Invalid JSON payload received. Unknown name "{name}": Cannot find field.'
    for name in (body.get("generationConfig") or {}).keys() - GENERATION_FIELDS:
        return (
            f'Invalid JSON payload received. Unknown name "{name}" at '
            "'generation_config': Cannot find field."
        )
    contents = body.get("contents")
    if not contents:
        return "* GenerateContentRequest.contents: contents is not specified"
    called: set[str] = set()
    for i, content in enumerate(contents):
        if content.get("role") not in ("user", "model"):
            return f"Please use a valid role: user, model. (contents[{i}])"
        if not content.get("parts"):
            return f"* GenerateContentRequest.contents[{i}].parts: must not be empty."
        for part in content["parts"]:
            if part.get("text") == "":
                return "Unable to submit request because it has an empty text parameter."
            if "functionCall" in part:
                called.add(part["functionCall"]["name"])
            response = part.get("functionResponse")
            if response is not None:
                if response.get("name") not in called:
                    return "function response name does not match any function call."
                if not isinstance(response.get("response"), dict):
                    return "functionResponse.response must be an object."
    return None


def _usage(candidates: int, thoughts: int = 0) -> dict[str, Any]:
    usage = {
        "promptTokenCount": PROMPT_TOKENS,
        "candidatesTokenCount": candidates,
        "totalTokenCount": PROMPT_TOKENS + candidates + thoughts,
    }
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    return usage


def _response(
    candidates: list[dict[str, Any]], usage: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    return {
        "candidates": candidates,
        "usageMetadata": usage,
        "modelVersion": MODEL_VERSION,
        "responseId": "fake-response-id",
        **extra,
    }


def _candidate(parts: list[dict[str, Any]], finish: str | None = None, index: int = 0) -> dict:
    candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}}
    if index:
        candidate["index"] = index  # proto3 JSON leaves out a zero index, as Google does
    if finish:
        candidate["finishReason"] = finish
    return candidate


def _chunks(scenario: str, n: int) -> list[dict[str, Any]]:
    """The stream of a scenario: one GenerateContentResponse per chunk, usage cumulative."""
    if scenario == "blocked":
        return [
            {
                "promptFeedback": {"blockReason": "SAFETY"},
                "usageMetadata": {"promptTokenCount": 7, "totalTokenCount": 7},
                "modelVersion": MODEL_VERSION,
            }
        ]
    if scenario == "tools":
        return [
            _response([_candidate([{"functionCall": TOOL_CALLS[0]}])], _usage(9)),
            _response([_candidate([{"functionCall": TOOL_CALLS[1]}], "STOP")], _usage(18)),
        ]
    if scenario == "thinking":
        return [
            _response(
                [_candidate([{"text": "Let me think about it...", "thought": True}])], _usage(0, 5)
            ),
            _response([_candidate([{"text": "42"}], "STOP")], _usage(1, 5)),
        ]
    if scenario == "multi":
        return [
            _response(
                [_candidate([{"text": f"Answer {i}"}], "STOP", i) for i in range(n)], _usage(2 * n)
            ),
        ]
    finish = {
        "safety": "SAFETY",
        "max-tokens": "MAX_TOKENS",
        "midstream-error": None,
        "truncated": None,
    }.get(scenario, "STOP")
    words = TEXT[:1] if scenario in ("midstream-error", "truncated") else TEXT
    return [
        _response(
            [_candidate([{"text": word}], finish if i == len(words) - 1 else None)], _usage(i + 1)
        )
        for i, word in enumerate(words)
    ]


def _merge(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """The generateContent answer: the stream's parts joined, the last chunk's usage."""
    merged: dict[str, Any] = {k: v for k, v in chunks[-1].items() if k != "candidates"}
    candidates: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for candidate in chunk.get("candidates", ()):
            index = candidate.get("index", 0)
            into = candidates.setdefault(index, _candidate([], index=index))
            parts = into["content"]["parts"]
            for part in candidate["content"]["parts"]:
                if (
                    "text" in part
                    and parts
                    and "text" in parts[-1]
                    and (part.get("thought") == parts[-1].get("thought"))
                ):
                    parts[-1] = {**parts[-1], "text": parts[-1]["text"] + part["text"]}
                else:
                    parts.append(part)
            if "finishReason" in candidate:
                into["finishReason"] = candidate["finishReason"]
    if candidates:
        merged["candidates"] = [candidates[i] for i in sorted(candidates)]
    return merged
