"""Google's Gemini API (`generateContent`, `streamGenerateContent?alt=sse`), translated natively.

Request: OpenAI messages become `contents` with roles `user` and `model`; system and
developer text is hoisted into `systemInstruction`; consecutive turns of one role are merged
into one content, because Gemini wants the roles to alternate. Assistant tool calls become
`functionCall` parts and tool results `functionResponse` parts in a user turn; Gemini names
the function in a result where OpenAI gives only the `tool_call_id`, so the name is looked up
from the earlier call. JSON schemas (tool parameters, `response_format`) are narrowed to the
OpenAPI subset that `parameters` and `responseSchema` accept on every Gemini model, 1.5
included (`responseJsonSchema` would take them whole, but only on newer models).

Stream: each SSE event is a whole GenerateContentResponse carrying the new parts of each
candidate and the usage *so far*: `usageMetadata` is cumulative and repeated in every chunk,
so the last one wins and nothing is summed. Google sends no terminal event; a candidate is
over when it carries `finishReason`, and the body then just ends. So the finish chunk goes
out with the finishReason and the usage chunk from `finish()` at EOF. Function calls arrive
whole, each as one `tool_calls` delta with a synthesized id and the complete arguments.

Dropped for want of an equivalent: `logprobs`/`top_logprobs` (the 1.5 models have none),
`logit_bias`, `user`, `parallel_tool_calls`, `service_tier`, `store`, `metadata`,
`reasoning_effort`. Penalties are sent only when non-zero: models without penalty support
refuse the field even at zero.
"""

from __future__ import annotations

import math
import mimetypes
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import orjson

from proxy.config import Deployment, ProviderConfig
from proxy.errors import (
    BadRequest,
    GatewayError,
    ServiceUnavailable,
    UpstreamError,
    UpstreamTimeout,
)
from proxy.providers.base import (
    ChatRequest,
    Provider,
    StreamTranslator,
    UpstreamRequest,
    Usage,
    load_json,
)
from proxy.providers.gemini_schema import gemini_schema
from proxy.sse import SSEEvent
from proxy.tokens import text_weight

MAX_STOP_SEQUENCES = 5

_FILTERED = (
    "SAFETY",
    "RECITATION",
    "BLOCKLIST",
    "PROHIBITED_CONTENT",
    "SPII",
    "IMAGE_SAFETY",
    "IMAGE_PROHIBITED_CONTENT",
    "IMAGE_RECITATION",
)
FINISH_REASONS: dict[str, str] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    **dict.fromkeys(_FILTERED, "content_filter"),
}

_TOOL_CHOICE_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}
_PENALTIES = {"presence_penalty": "presencePenalty", "frequency_penalty": "frequencyPenalty"}


# -- request -------------------------------------------------------------------------------


def build_body(chat: ChatRequest, cap: int) -> dict[str, Any]:
    """The Gemini GenerateContentRequest for an OpenAI chat request; `cap` is the output
    cap of each candidate (maxOutputTokens)."""
    body = chat.body
    if body.get("functions") or body.get("function_call"):
        raise BadRequest("functions and function_call are deprecated; use tools and tool_choice.")
    system, contents = _contents(body.get("messages") or [])
    if not contents:
        if not system:
            raise BadRequest("messages must contain at least one message with content.")
        # OpenAI answers a conversation of system text alone; Gemini needs a user turn.
        contents, system = [{"role": "user", "parts": system}], []
    request: dict[str, Any] = {"contents": contents}
    if system:
        request["systemInstruction"] = {"parts": system}
    request["generationConfig"] = _generation_config(chat, cap)
    tools = body.get("tools")
    if tools:
        if not isinstance(tools, list):
            raise BadRequest("tools must be an array of function tools.")
        declarations = [_declaration(tool, f"tools[{i}]") for i, tool in enumerate(tools)]
        request["tools"] = [{"functionDeclarations": declarations}]
        choice = body.get("tool_choice")
        if choice is not None:
            request["toolConfig"] = {
                "functionCallingConfig": _calling_config(choice, {d["name"] for d in declarations})
            }
    return request


def _contents(messages: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}  # tool_call id -> function name, for functionResponse
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise BadRequest(f"{where} must be an object.")
        role = message.get("role")
        if role in ("system", "developer"):
            system.extend(_text_parts(message.get("content"), where))
            continue
        if role == "user":
            role, parts = "user", _user_parts(message.get("content"), where)
        elif role == "assistant":
            role, parts = "model", _assistant_parts(message, where, call_names)
        elif role == "tool":
            role, parts = "user", [_function_response(message, where, call_names)]
        elif role == "function":
            raise BadRequest(f"{where}: legacy function messages are not supported; use tools.")
        else:
            raise BadRequest(f"{where}.role {role!r} is not supported for this model.")
        if not parts:
            continue  # Gemini refuses a content with no parts (or an empty text part)
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    return system, contents


def _text_parts(content: Any, where: str) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise BadRequest(f"{where}.content must be a string or a list of parts.")
    parts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in ("text", "refusal"):
            raise BadRequest(f"{where}.content[{j}] must be a text part.")
        text = part.get("text") if part["type"] == "text" else part.get("refusal")
        if isinstance(text, str) and text:
            parts.append({"text": text})
    return parts


def _user_parts(content: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(content, list):
        return _text_parts(content, where)
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        pwhere = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            parts.extend(_text_parts([part], where))
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            parts.append(_media_part(url, f"{pwhere}.image_url.url"))
        elif kind == "input_audio":
            audio = part.get("input_audio") or {}
            if not isinstance(audio, dict) or not isinstance(audio.get("data"), str):
                raise BadRequest(f"{pwhere}.input_audio.data must be base64 audio.")
            mime = f"audio/{audio.get('format') or 'wav'}"
            parts.append({"inlineData": {"mimeType": mime, "data": audio["data"]}})
        elif kind == "file":
            file = part.get("file") or {}
            data = file.get("file_data") if isinstance(file, dict) else None
            if not isinstance(data, str):
                raise BadRequest(f"{pwhere}.file: only inline file_data is supported here.")
            if not data.startswith("data:"):
                data = f"data:application/pdf;base64,{data}"
            parts.append(_media_part(data, f"{pwhere}.file.file_data"))
        else:
            raise BadRequest(f"{pwhere}.type {kind!r} is not supported for this model.")
    return parts


def _media_part(url: Any, where: str) -> dict[str, Any]:
    if not isinstance(url, str) or not url:
        raise BadRequest(f"{where} must be a URL.")
    if url.startswith("data:"):
        header, comma, data = url[5:].partition(",")
        if not comma or not header.endswith(";base64"):
            raise BadRequest(f"{where} must be a base64 data: URL.")
        mime = header.split(";", 1)[0] or "application/octet-stream"
        return {"inlineData": {"mimeType": mime, "data": data}}
    if urlsplit(url).scheme in ("http", "https"):
        file_data: dict[str, str] = {"fileUri": url}
        guessed, _ = mimetypes.guess_type(urlsplit(url).path)
        if guessed:
            file_data["mimeType"] = guessed
        return {"fileData": file_data}
    raise BadRequest(f"{where} must be an http(s) or data: URL.")


def _assistant_parts(
    message: dict[str, Any], where: str, call_names: dict[str, str]
) -> list[dict[str, Any]]:
    parts = _text_parts(message.get("content"), where)
    for j, call in enumerate(message.get("tool_calls") or ()):
        cwhere = f"{where}.tool_calls[{j}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise BadRequest(f"{cwhere}.function.name is required.")
        raw = function.get("arguments") or "{}"
        try:
            args = orjson.loads(raw)
        except (orjson.JSONDecodeError, TypeError) as exc:
            raise BadRequest(f"{cwhere}.function.arguments must be a JSON object.") from exc
        if not isinstance(args, dict):
            raise BadRequest(f"{cwhere}.function.arguments must be a JSON object.")
        if isinstance(call.get("id"), str):
            call_names[call["id"]] = function["name"]
        parts.append({"functionCall": {"name": function["name"], "args": args}})
    return parts


def _function_response(
    message: dict[str, Any], where: str, call_names: Mapping[str, str]
) -> dict[str, Any]:
    call_id = message.get("tool_call_id")
    name = call_names.get(call_id) if isinstance(call_id, str) else None
    if name is None:
        raise BadRequest(f"{where}.tool_call_id {call_id!r} matches no earlier tool call.")
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(p["text"] for p in _text_parts(content, where))
    text = content if isinstance(content, str) else ""
    try:
        value: Any = orjson.loads(text)
    except orjson.JSONDecodeError:
        value = text
    # Gemini's `response` is a protobuf Struct: it must be an object.
    response = value if isinstance(value, dict) else {"result": value}
    return {"functionResponse": {"name": name, "response": response}}


def _generation_config(chat: ChatRequest, cap: int) -> dict[str, Any]:
    body = chat.body
    config: dict[str, Any] = {"maxOutputTokens": cap}
    if body.get("temperature") is not None:
        config["temperature"] = body["temperature"]
    if body.get("top_p") is not None:
        config["topP"] = body["top_p"]
    stop = body.get("stop")
    if stop is not None and not isinstance(stop, (str, list)):
        raise BadRequest("stop must be a string or an array of strings.")
    stops = [stop] if isinstance(stop, str) else [s for s in stop or () if s]
    if len(stops) > MAX_STOP_SEQUENCES:
        raise BadRequest(f"stop: this model takes at most {MAX_STOP_SEQUENCES} sequences.")
    if stops:
        config["stopSequences"] = stops
    for name, field in _PENALTIES.items():
        if body.get(name):
            config[field] = body[name]
    if body.get("seed") is not None:
        config["seed"] = body["seed"]
    n = _candidate_count(body)
    if n != 1:
        config["candidateCount"] = n
    config.update(_response_format(body.get("response_format")))
    return config


def _response_format(spec: Any) -> dict[str, Any]:
    kind = spec.get("type") if isinstance(spec, dict) else None
    if spec is None or kind == "text":
        return {}
    if kind == "json_object":
        return {"responseMimeType": "application/json"}
    if kind == "json_schema":
        json_schema = spec.get("json_schema")
        if not isinstance(json_schema, dict):
            raise BadRequest("response_format.json_schema must be an object.")
        schema = json_schema.get("schema")
        out: dict[str, Any] = {"responseMimeType": "application/json"}
        if isinstance(schema, dict):
            out["responseSchema"] = gemini_schema(schema, "response_format.json_schema.schema")
        return out
    raise BadRequest(f"response_format.type {kind!r} is not supported.")


def _candidate_count(body: Mapping[str, Any]) -> int:
    n = body.get("n")
    return n if isinstance(n, int) and n > 0 else 1


def _declaration(tool: Any, where: str) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type") != "function":
        raise BadRequest(f"{where}: only function tools are supported for this model.")
    function = tool.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise BadRequest(f"{where}.function.name is required.")
    declaration: dict[str, Any] = {"name": function["name"]}
    if isinstance(function.get("description"), str):
        declaration["description"] = function["description"]
    parameters = function.get("parameters")
    if isinstance(parameters, dict):
        schema = gemini_schema(parameters, f"{where}.function.parameters")
        # Gemini refuses an OBJECT with no properties; a function without arguments has none.
        if schema.get("type") != "object" or schema.get("properties"):
            declaration["parameters"] = schema
    return declaration


def _calling_config(choice: Any, names: set[str]) -> dict[str, Any]:
    if isinstance(choice, str) and choice in _TOOL_CHOICE_MODES:
        return {"mode": _TOOL_CHOICE_MODES[choice]}
    function = choice.get("function") if isinstance(choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str):
        raise BadRequest("tool_choice must be auto, none, required or a named function.")
    if name not in names:
        raise BadRequest(f"tool_choice names function {name!r}, which is not in tools.")
    return {"mode": "ANY", "allowedFunctionNames": [name]}


# -- response --------------------------------------------------------------------------------


def usage_from(metadata: Any) -> Usage | None:
    """Usage from `usageMetadata`; thinking tokens are billed as completion tokens."""
    if not isinstance(metadata, dict) or not isinstance(metadata.get("promptTokenCount"), int):
        return None

    def count(name: str) -> int:
        value = metadata.get(name)
        return value if isinstance(value, int) else 0

    return Usage(
        count("promptTokenCount") + count("toolUsePromptTokenCount"),
        count("candidatesTokenCount") + count("thoughtsTokenCount"),
    )


def finish_reason(reason: Any, called_tools: bool) -> str:
    mapped = FINISH_REASONS.get(reason, "stop") if isinstance(reason, str) else "stop"
    return "tool_calls" if called_tools and mapped == "stop" else mapped


def _candidate_output(candidate: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """The text (thoughts left out) and the function calls of one candidate's parts."""
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in parts if isinstance(parts, list) else ():
        if not isinstance(part, dict) or part.get("thought") is True:
            continue
        if isinstance(part.get("text"), str):
            texts.append(part["text"])
        call = part.get("functionCall")
        if isinstance(call, dict):
            calls.append(
                {
                    "id": f"call_{uuid.uuid4().hex}",
                    "type": "function",
                    "function": {
                        "name": str(call.get("name") or ""),
                        "arguments": orjson.dumps(call.get("args") or {}).decode(),
                    },
                }
            )
    return "".join(texts), calls


def _blocked(payload: dict[str, Any]) -> bool:
    feedback = payload.get("promptFeedback")
    return isinstance(feedback, dict) and bool(feedback.get("blockReason"))


def _error_object(payload: Any) -> dict[str, Any] | None:
    """The `error` object of a Google error body (sometimes wrapped in a one-item list)."""
    if isinstance(payload, list) and payload:
        payload = payload[0]
    error = payload.get("error") if isinstance(payload, dict) else None
    return error if isinstance(error, dict) else None


def _key_rejected(error: dict[str, Any]) -> bool:
    # Google answers a bad key with 400 INVALID_ARGUMENT; only the reason tells it apart.
    if "API_KEY_INVALID" in str(error.get("message") or ""):
        return True
    details = error.get("details")
    return isinstance(details, list) and any(
        isinstance(d, dict) and d.get("reason") == "API_KEY_INVALID" for d in details
    )


def _retry_after(error: dict[str, Any], headers: Mapping[str, str]) -> str:
    header = headers.get("retry-after") or headers.get("Retry-After")
    if header:
        return header
    for detail in error.get("details") or ():
        delay = detail.get("retryDelay") if isinstance(detail, dict) else None
        if isinstance(delay, str) and delay.endswith("s"):
            try:
                return str(max(1, math.ceil(float(delay[:-1]))))
            except ValueError:
                pass
    return "1"


class GeminiStream(StreamTranslator):
    """One streamGenerateContent?alt=sse answer, chunk by chunk, `n` candidates by index."""

    def __init__(self, chat: ChatRequest, provider: GeminiProvider):
        super().__init__(chat)
        self.provider = provider
        self.n = _candidate_count(chat.body)
        self.started = False
        self.finished: set[int] = set()
        self.calls_sent: dict[int, int] = {}  # candidate index -> tool calls streamed

    def feed(self, event: SSEEvent) -> list[dict[str, Any]]:
        if event.comment or not event.data:
            return []
        payload = load_json(event.data, "stream event")
        error = _error_object(payload)
        if error is not None:
            code = error.get("code")
            raise self.provider.map_error(code if isinstance(code, int) else 500, error, {})
        chunks: list[dict[str, Any]] = []
        if not self.started:
            self.started = True
            chunks.extend(_chunk(i, {"role": "assistant", "content": ""}) for i in range(self.n))
        self.usage = usage_from(payload.get("usageMetadata")) or self.usage
        candidates = payload.get("candidates")
        if not candidates and _blocked(payload):
            for index in range(self.n):
                if index not in self.finished:
                    chunks.append(_chunk(index, {}, "content_filter"))
                    self.finished.add(index)
        for candidate in candidates if isinstance(candidates, list) else ():
            if isinstance(candidate, dict):
                chunks.extend(self._candidate(candidate))
        self.done = all(i in self.finished for i in range(self.n))
        return chunks

    def _candidate(self, candidate: dict[str, Any]) -> list[dict[str, Any]]:
        index = candidate.get("index", 0)  # proto3 JSON leaves out a zero index
        if not isinstance(index, int) or index in self.finished:
            return []
        chunks = []
        text, calls = _candidate_output(candidate)
        if text:
            self.produced_chars += text_weight(text)
            chunks.append(_chunk(index, {"content": text}))
        if calls:
            first = self.calls_sent.get(index, 0)
            self.calls_sent[index] = first + len(calls)
            for k, call in enumerate(calls):
                function = call["function"]
                self.produced_chars += text_weight(function["name"]) + text_weight(
                    function["arguments"]
                )
                chunks.append(_chunk(index, {"tool_calls": [{"index": first + k, **call}]}))
        reason = candidate.get("finishReason")
        if reason:
            chunks.append(_chunk(index, {}, finish_reason(reason, index in self.calls_sent)))
            self.finished.add(index)
        return chunks

    def finish(self) -> list[dict[str, Any]]:
        if not self.done or not self.chat.include_usage:
            return []
        return [{"choices": [], "usage": self.final_usage().as_dict()}]


def _chunk(index: int, delta: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": index, "delta": delta, "finish_reason": reason}]}


# -- provider --------------------------------------------------------------------------------


class GeminiProvider(Provider):
    kind = "gemini"

    def __init__(self, config: ProviderConfig):
        super().__init__(config)
        base = config.base_url.rstrip("/")
        # The documented base has no version; accept one given with it all the same.
        self.base = base if base.endswith(("/v1beta", "/v1")) else f"{base}/v1beta"
        self.headers = {"Content-Type": "application/json", **config.headers}
        if config.api_key:
            self.headers["x-goog-api-key"] = config.api_key  # never `?key=`: URLs get logged

    def build_request(self, chat: ChatRequest, deployment: Deployment) -> UpstreamRequest:
        self.require_key()
        model = deployment.model if "/" in deployment.model else f"models/{deployment.model}"
        method = "streamGenerateContent?alt=sse" if chat.stream else "generateContent"
        url = f"{self.base}/{quote(model, safe='/')}:{method}"
        try:
            data = orjson.dumps(build_body(chat, chat.cap_for(deployment)))
        except orjson.JSONEncodeError as exc:
            # Tool arguments and results arrive as JSON text, parsed here, and may nest past
            # the 254 levels orjson writes.
            raise BadRequest("The request is nested too deeply for this model.") from exc
        return UpstreamRequest(url, self.headers, data)

    def parse_response(self, body: bytes, chat: ChatRequest) -> tuple[dict[str, Any], Usage | None]:
        payload = load_json(body, "answer")
        error = _error_object(payload)
        if error is not None:
            code = error.get("code")
            raise self.map_error(code if isinstance(code, int) else 500, error, {})
        usage = usage_from(payload.get("usageMetadata"))
        candidates = [c for c in payload.get("candidates") or () if isinstance(c, dict)]
        choices = []
        for candidate in candidates:
            text, calls = _candidate_output(candidate)
            content = text or (None if calls else "")
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if calls:
                message["tool_calls"] = calls
            choices.append(
                {
                    "index": candidate.get("index", 0),  # proto3 JSON leaves out a zero index
                    "message": message,
                    "finish_reason": finish_reason(candidate.get("finishReason"), bool(calls)),
                    "logprobs": None,
                }
            )
        if not choices:
            if not _blocked(payload):
                raise UpstreamError("The upstream provider sent an answer with no candidates.")
            choices = [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": ""},
                    "finish_reason": "content_filter",
                    "logprobs": None,
                }
                for i in range(_candidate_count(chat.body))
            ]
        choices.sort(key=lambda choice: choice["index"])
        completion: dict[str, Any] = {"object": "chat.completion", "choices": choices}
        if usage is not None:
            completion["usage"] = usage.as_dict()
        return completion, usage

    def stream_translator(self, chat: ChatRequest) -> StreamTranslator:
        return GeminiStream(chat, self)

    def error_message(self, payload: Any) -> str | None:
        error = _error_object(payload)
        if error is not None and isinstance(error.get("message"), str):
            return error["message"]
        return super().error_message(payload)

    def error_from_response(
        self, status: int, body: bytes, headers: dict[str, str]
    ) -> GatewayError:
        try:
            error = _error_object(orjson.loads(body)) if body else None
        except orjson.JSONDecodeError:
            error = None
        return self.map_error(status, error or {}, headers)

    def map_error(
        self, status: int, error: dict[str, Any], headers: Mapping[str, str]
    ) -> GatewayError:
        """A Google `{"code", "message", "status"}` error as ours; a key problem is our 502."""
        name = self.config.name
        google = error.get("status")
        message = error.get("message") if isinstance(error.get("message"), str) else None
        if (
            _key_rejected(error)
            or status in (401, 403)
            or google in ("UNAUTHENTICATED", "PERMISSION_DENIED")
        ):
            return UpstreamError(f"The gateway's credentials for provider '{name}' were rejected.")
        if status == 429 or google == "RESOURCE_EXHAUSTED":
            return ServiceUnavailable(
                f"Provider '{name}' is rate-limited; retry later.",
                headers={"Retry-After": _retry_after(error, headers)},
            )
        if status == 503 or google == "UNAVAILABLE":
            return ServiceUnavailable(
                f"Provider '{name}' is overloaded; retry later.",
                headers={"Retry-After": _retry_after(error, headers)},
            )
        if status == 504 or google == "DEADLINE_EXCEEDED":
            return UpstreamTimeout(f"Provider '{name}' timed out.")
        if 400 <= status < 500:
            return BadRequest(message or f"Provider '{name}' rejected the request ({status}).")
        return UpstreamError(f"Provider '{name}' failed ({status}).")
