"""A fake Gemini API for tests, speaking Google's wire format on loopback.

`POST /v1beta/models/{model}:generateContent` answers one GenerateContentResponse;
`:streamGenerateContent?alt=sse` answers `data: {...}\\r\\n\\r\\n` events, each a whole
response with the candidates' new parts and the cumulative `usageMetadata`, and then just
ends, with no terminal event, as Google does. Without `alt=sse` it answers a JSON array, as
Google does, so a gateway that forgot the parameter fails loudly.

The key must come in `x-goog-api-key` (or `?key=`): a wrong one gets Google's 400
INVALID_ARGUMENT with reason API_KEY_INVALID, a missing one 403 PERMISSION_DENIED.

The request rules (`_invalid`) are Google's validation, each answered with Google's error
body `{"error": {"code": 400, "message", "status": "INVALID_ARGUMENT"}}`: unknown field
names; empty `contents`, a content with no parts, empty text; roles other than user/model; a
model turn first, or a function call turn not right after a user turn or a function response
turn; functionResponse parts that do not answer, one for one and by name, the functionCall
parts of the model turn before them; more than 5 or empty stopSequences; inline media of a
type Gemini does not read; function names outside Gemini's pattern. And Gemini 3's thought
signatures: every functionCall answer carries a `thoughtSignature` on its first call (as on
parallel calls, the others have none), and a request whose current turn (the model turns
after the last user turn with text) has a step whose first functionCall lacks a signature
the fake issued (or Google's documented dummy) is refused as Gemini 3 refuses it.

The scenario is chosen by the model name in the path (see SCENARIOS); the other models the
fake serves (`models`, configurable) answer "text", and any model it does not serve gets
Google's 404 NOT_FOUND. `GET /v1beta/models` lists the models served, in Google's shape, by
pages (`pageSize`, `pageToken`). Every request is kept in `fake.requests`, and every stream
chunk is stamped with the monotonic time just before it was written, so a test can tell
whether a delta reached its client before the next upstream chunk went out.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
import uuid
from collections import Counter
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
# Served besides the scenarios, unless the fake is given its own list.
MODELS = ("gemini-1.5-pro", "gemini-2.5-flash", "gemini-2.5-pro", "gemini-3-pro-preview")
DUMMY_SIGNATURE = "skip_thought_signature_validator"
SIGNATURE_MISSING = (
    "Function call is missing a thought_signature in functionCall parts. This is required "
    "for tools to work correctly, and missing thought_signature may lead to degraded model "
    "performance. Additional data, function call `default_api:{name}` , position {position}. "
    "Please refer to https://ai.google.dev/gemini-api/docs/thought-signatures for more details."
)
FUNCTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:\-]{0,63}")
INLINE_MIME_TYPES = frozenset(
    {
        *(f"image/{t}" for t in ("png", "jpeg", "webp", "heic", "heif")),
        *(f"audio/{t}" for t in ("wav", "mp3", "aiff", "aac", "ogg", "flac")),
        *(
            f"video/{t}"
            for t in ("mp4", "mpeg", "mov", "avi", "x-flv", "mpg", "webm", "wmv", "3gpp")
        ),
        "application/pdf",
        *(f"text/{t}" for t in ("plain", "html", "css", "csv", "xml", "rtf", "markdown")),
        "text/javascript",
        "text/x-python",
    }
)
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
    def __init__(self, api_key: str, chunk_delay: float, models: tuple[str, ...] | None = None):
        self.api_key = api_key
        self.chunk_delay = chunk_delay  # seconds between chunks of the "slow" scenario
        self.models = models if models is not None else (*MODELS, *SCENARIOS)
        self.requests: list[Received] = []
        self.signatures: set[str] = {DUMMY_SIGNATURE}  # every thoughtSignature issued

    def _key_error(self, request: web.Request) -> web.Response | None:
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
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
        return None

    async def list_models(self, request: web.Request) -> web.Response:
        """`GET /v1beta/models`: the models served, a page at a time, as Google lists them."""
        refused = self._key_error(request)
        if refused is not None:
            return refused
        try:
            size = int(request.query.get("pageSize") or 50)
            start = int(base64.urlsafe_b64decode(request.query.get("pageToken") or "MA==") or 0)
        except ValueError:
            return _error(400, "INVALID_ARGUMENT", "Invalid page token or page size.")
        size = min(max(size, 1), 1000)
        page = self.models[start : start + size]
        listing: dict[str, Any] = {
            "models": [
                {
                    "name": f"models/{model}",
                    "version": "001",
                    "displayName": model.replace("-", " ").title(),
                    "description": f"The fake's {model}.",
                    "inputTokenLimit": 1048576,
                    "outputTokenLimit": 65536,
                    "supportedGenerationMethods": [
                        "generateContent",
                        "countTokens",
                        "streamGenerateContent",
                    ],
                    "temperature": 1,
                    "topP": 0.95,
                    "topK": 64,
                    "maxTemperature": 2,
                }
                for model in page
            ]
        }
        if start + size < len(self.models):
            listing["nextPageToken"] = base64.urlsafe_b64encode(str(start + size).encode()).decode()
        return web.json_response(listing, dumps=_dumps)

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

        refused = self._key_error(request)
        if refused is not None:
            return refused
        name = model.removeprefix("models/")
        if name not in self.models:
            return _error(
                404,
                "NOT_FOUND",
                f"models/{name} is not found for API version v1beta, or is not supported for "
                "generateContent. Call ListModels to see the list of available models and "
                "their supported methods.",
            )
        if method not in ("generateContent", "streamGenerateContent"):
            return _error(404, "NOT_FOUND", f"Method {method!r} not found.")
        problem = _invalid(body, self.signatures)
        if problem:
            return _error(400, "INVALID_ARGUMENT", problem)
        scenario = name if name in SCENARIOS else "text"
        if scenario in HTTP_ERRORS:
            status, google, message = HTTP_ERRORS[scenario]
            details = (
                [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}]
                if status == 429
                else None
            )
            return _error(status, google, message, details)

        n = body.get("generationConfig", {}).get("candidateCount", 1)
        signature = base64.b64encode(uuid.uuid4().bytes * 3).decode()  # opaque, like Google's
        self.signatures.add(signature)
        chunks = _chunks(scenario, n, signature)
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


def create_fake_gemini(
    api_key: str = "test-key", chunk_delay: float = 0.1, models: tuple[str, ...] | None = None
) -> web.Application:
    """The fake as an app; the FakeGemini itself is `app[FAKE_GEMINI]`."""
    app = web.Application(client_max_size=16 << 20)  # real APIs take bodies of many MiB
    fake = FakeGemini(api_key, chunk_delay, models)
    app[FAKE_GEMINI] = fake
    app.router.add_get("/v1beta/models", fake.list_models)
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


def _invalid(body: Any, signatures: set[str]) -> str | None:
    """What Google's own validation would refuse in this request, if anything."""
    if not isinstance(body, dict):
        return "Invalid JSON payload received. Expected an object."
    for name in body.keys() - REQUEST_FIELDS:
        return f'Invalid JSON payload received. Unknown name "{name}": Cannot find field.'
    config = body.get("generationConfig") or {}
    for name in config.keys() - GENERATION_FIELDS:
        return (
            f'Invalid JSON payload received. Unknown name "{name}" at '
            "'generation_config': Cannot find field."
        )
    stops = config.get("stopSequences") or []
    if len(stops) > 5:
        return "* GenerateContentRequest.generation_config.stop_sequences: at most 5 allowed."
    if any(not stop for stop in stops):
        return "* GenerateContentRequest.generation_config.stop_sequences: must not be empty."
    for tool in body.get("tools") or ():
        for declaration in tool.get("functionDeclarations") or ():
            if not FUNCTION_NAME.fullmatch(declaration.get("name") or ""):
                return (
                    "* GenerateContentRequest.tools[0].function_declarations[0].name: Invalid "
                    "function name. Must start with a letter or an underscore. Must be a-z, A-Z, "
                    "0-9, or contain underscores, dots, colons and dashes, with a maximum "
                    "length of 64."
                )
            parameters = declaration.get("parameters")
            if parameters is not None and parameters.get("type") == "object":
                if not parameters.get("properties"):
                    return (
                        "* GenerateContentRequest.tools[0].function_declarations[0].parameters"
                        ".properties: should be non-empty for OBJECT type"
                    )
    return _invalid_contents(body.get("contents"), signatures)


def _invalid_contents(contents: Any, signatures: set[str]) -> str | None:
    if not contents:
        return "* GenerateContentRequest.contents: contents is not specified"
    for i, content in enumerate(contents):
        if content.get("role") not in ("user", "model"):
            return f"Please use a valid role: user, model. (contents[{i}])"
        if not content.get("parts"):
            return f"* GenerateContentRequest.contents[{i}].parts: must not be empty."
        for part in content["parts"]:
            if part.get("text") == "":
                return "Unable to submit request because it has an empty text parameter."
            inline = part.get("inlineData")
            if inline is not None and inline.get("mimeType") not in INLINE_MIME_TYPES:
                return f"Unsupported MIME type: {inline.get('mimeType')}"
            call = part.get("functionCall")
            if call is not None and not FUNCTION_NAME.fullmatch(call.get("name") or ""):
                return f"* GenerateContentRequest.contents[{i}].parts: Invalid function name."
    if contents[0]["role"] != "user":
        return "Please ensure that the first content is from the user."
    previous: dict[str, Any] = {}
    for content in contents:
        calls = [p["functionCall"]["name"] for p in content["parts"] if "functionCall" in p]
        answers = [
            p["functionResponse"].get("name") for p in content["parts"] if "functionResponse" in p
        ]
        before = [
            p["functionCall"]["name"] for p in previous.get("parts", ()) if "functionCall" in p
        ]
        if calls and not (previous.get("role") == "user"):
            return (
                "Please ensure that function call turn comes immediately after a user turn or "
                "after a function response turn."
            )
        if answers and Counter(answers) != Counter(before):
            return (
                "Please ensure that function response turn comes immediately after a function "
                "call turn. And the number of function response parts should be equal to number "
                "of function call parts of the function call turn."
            )
        for part in content["parts"]:
            response = part.get("functionResponse")
            if response is not None and not isinstance(response.get("response"), dict):
                return "functionResponse.response must be an object."
        previous = content
    return _unsigned_call(contents, signatures)


def _unsigned_call(contents: list[dict[str, Any]], signatures: set[str]) -> str | None:
    """Gemini 3's check: in the current turn (after the last user content with more than
    function responses), the first functionCall of every step carries a valid signature."""
    start = 0
    for i, content in enumerate(contents):
        if content["role"] == "user" and any("functionResponse" not in p for p in content["parts"]):
            start = i
    for i, content in enumerate(contents[start:], start):
        parts = content["parts"]
        first = next((j for j, p in enumerate(parts) if "functionCall" in p), None)
        if content["role"] != "model" or first is None:
            continue
        signature = parts[first].get("thoughtSignature")
        if signature is None:
            name = parts[first]["functionCall"]["name"]
            return SIGNATURE_MISSING.format(name=name, position=i + 1)
        if signature not in signatures:
            return "Corrupted thought signature."
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


def _chunks(scenario: str, n: int, signature: str) -> list[dict[str, Any]]:
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
            # Parallel calls: only the first carries the step's signature, as on Gemini 3.
            _response(
                [_candidate([{"functionCall": TOOL_CALLS[0], "thoughtSignature": signature}])],
                _usage(9),
            ),
            _response([_candidate([{"functionCall": TOOL_CALLS[1]}], "STOP")], _usage(18)),
        ]
    if scenario == "thinking":
        return [
            _response(
                [_candidate([{"text": "Let me think about it...", "thought": True}])], _usage(0, 5)
            ),
            _response([_candidate([{"text": "42"}])], _usage(1, 5)),
            # Gemini 3 signs the last part of an answer without calls, at times alone in a
            # last chunk with empty text.
            _response(
                [_candidate([{"text": "", "thoughtSignature": signature}], "STOP")], _usage(1, 5)
            ),
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
