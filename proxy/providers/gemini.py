"""Google's Gemini API (`generateContent`, `streamGenerateContent?alt=sse`), translated natively.

Request: OpenAI messages become `contents` with roles `user` and `model`; system and
developer text is hoisted into `systemInstruction`; consecutive turns of one role are merged
into one content, because Gemini wants the roles to alternate. Assistant tool calls become
`functionCall` parts and the tool messages answering them one user turn of `functionResponse`
parts, in the calls' order (Gemini names the function in a result where OpenAI gives only
the `tool_call_id`, and wants one result per call of the turn before). JSON schemas (tool
parameters, `response_format`) are narrowed to the OpenAPI subset that `parameters` and
`responseSchema` accept on every Gemini model, 1.5 included (`responseJsonSchema` would take
them whole, but only on newer models).

What Google refuses and a valid OpenAI request may hold, and what is sent instead:
- no contents (system text only): the system text becomes the user turn; nothing at all, or
  an empty user message: a user turn of PLACEHOLDER text (Gemini refuses empty text and a
  content without parts); an empty assistant message is left out;
- a conversation that opens with the assistant: a PLACEHOLDER user turn before it;
- a tool call left unanswered, or a tool message answering no call of the assistant message
  right before it: OpenAI refuses both, and so do we (400, param `messages`/`tool_call_id`);
- a function name starting with a digit or a dash (OpenAI's pattern allows it, Gemini's
  wants a letter or `_` first): sent with a `_` in front and mapped back in the answer;
- empty or repeated stop sequences are left out (whitespace ones are real); more than 5: 400;
- inline media: `image/jpg`, `audio/mpeg` are renamed to Google's names; a type Gemini does
  not read (GIF, say) is a 400 naming the part rather than Google's 400.

Thought signatures (Gemini 2.5 and 3): a functionCall part may carry a `thoughtSignature`
that Gemini 3 wants back on the first functionCall of every step of the current turn
(parallel calls: only the first has one). OpenAI has no field for it, but clients echo a tool
call's `id` back (assistant `tool_calls`, tool `tool_call_id`), so the signature rides in the
id: `call_<hex>~<signature>`, read back only from ids of exactly that shape. The first call
of a step that has none (history from another model, ids the client made) gets Google's
documented dummy, DUMMY_SIGNATURE. Signatures on text parts (the last part of an answer
without calls) are not enforced and have no OpenAI carrier: they are dropped.

OpenAI fields: mapped: messages, tools, tool_choice, temperature, top_p, max_tokens /
max_completion_tokens (the admitted cap), stop, n (candidateCount), seed, presence and
frequency penalties (only when non-zero: models without penalty support refuse the field
even at zero), response_format. Refused with a 400 naming the field, because the answer
would lack what they ask for: logprobs / top_logprobs, modalities other than text, audio,
web_search_options, functions / function_call. Ignored, because they do not change the
answer's shape: logit_bias, user, safety_identifier, prompt_cache_key, parallel_tool_calls
(Gemini has no switch: an answer may hold several calls), service_tier, store, metadata,
prediction, reasoning_effort and verbosity (Gemini's thinking budget differs per model, and
models without thinking refuse thinkingConfig).

Stream: each SSE event is a whole GenerateContentResponse carrying the new parts of each
candidate and the usage *so far*: `usageMetadata` is cumulative and repeated in every chunk,
so the last one wins and nothing is summed. Google sends no terminal event; a candidate is
over when it carries `finishReason`, and the body then just ends. So the finish chunk goes
out with the finishReason and the usage chunk from `finish()` at EOF. Function calls arrive
whole, each as one `tool_calls` delta with its id and the complete arguments.

Errors (`map_error`, also for an error event mid-stream): the client's request is a 400 with
Google's message; the rest is this deployment's fault and retryable, so the next deployment
is tried: our key rejected (400 API_KEY_INVALID, 401, 403) a 502 that says nothing of any
key; an unknown or retired model (404) and region or billing (FAILED_PRECONDITION) a 503
ModelUnavailable; 429 and 503 a 503 with Retry-After; 408 and 504 a 504; CANCELLED, ABORTED
and other 5xx a 502.
"""

from __future__ import annotations

import math
import mimetypes
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import orjson

from proxy.config import Deployment, ProviderConfig
from proxy.core import ChatRequest, Usage
from proxy.errors import (
    BadRequest,
    GatewayError,
    ModelUnavailable,
    ServiceUnavailable,
    UpstreamError,
    UpstreamTimeout,
)
from proxy.estimates import text_weight
from proxy.providers.base import (
    Provider,
    StreamTranslator,
    UpstreamRequest,
    load_json,
)
from proxy.providers.gemini_schema import gemini_schema
from proxy.sse import SSEEvent

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

# The inline media Gemini reads (the API reference's "supported MIME types" of images,
# audio, video and documents); anything else is refused by Google with a 400.
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
_MIME_ALIASES = {
    "image/jpg": "image/jpeg",
    "audio/mpeg": "audio/mp3",
    "audio/x-wav": "audio/wav",
    "audio/wave": "audio/wav",
}

_TOOL_CHOICE_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}
_PENALTIES = {"presence_penalty": "presencePenalty", "frequency_penalty": "frequencyPenalty"}


# -- request -------------------------------------------------------------------------------

# What the translation sends for a turn the client left empty (an empty user message, or the
# user turn Gemini wants before a conversation that opens with the assistant): Gemini refuses
# empty text and a content without parts.
PLACEHOLDER = "."
# Google's documented stand-in for a function call whose signature was never seen (history
# written by another model, or by the client): Gemini 3 then skips the signature check.
DUMMY_SIGNATURE = "skip_thought_signature_validator"
# A tool call id we minted around a thoughtSignature: `call_<32 hex>~<signature>`. `~` is in
# neither alphabet of base64, so only ids of this exact shape are read back as signatures.
_SIGNED_ID = re.compile(r"call_[0-9a-f]{32}~([A-Za-z0-9+/=_-]+)")
_GEMINI_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,63}")
_OPENAI_NAME = re.compile(r"[A-Za-z0-9_\-]{1,64}")


class ToolNames:
    """OpenAI function names <-> Gemini's. OpenAI takes names that start with a digit or a
    dash; Gemini wants a letter or an underscore first, so those get a `_` in front (cut to
    64) and get their own name back in the answer."""

    def __init__(self) -> None:
        self.to_gemini: dict[str, str] = {}
        self.to_openai: dict[str, str] = {}

    def gemini(self, name: str, where: str) -> str:
        known = self.to_gemini.get(name)
        if known is not None:
            return known
        if _GEMINI_NAME.fullmatch(name):
            mapped = name
        elif _OPENAI_NAME.fullmatch(name):
            mapped = ("_" + name)[:64]
        else:
            raise BadRequest(
                f"{where} {_short(name)!r} must be 1 to 64 letters, digits, underscores or dashes.",
                param=where,
            )
        other = self.to_openai.setdefault(mapped, name)
        if other != name:
            raise BadRequest(
                f"{where}: functions {_short(other)!r} and {_short(name)!r} have the same "
                "name for this model.",
                param=where,
            )
        self.to_gemini[name] = mapped
        return mapped

    def openai(self, name: str) -> str:
        return self.to_openai.get(name, name)


def tool_names(body: Mapping[str, Any]) -> ToolNames:
    """The names of the request's tools (already checked by `build_body`), for its answer."""
    names = ToolNames()
    for tool in body.get("tools") or ():
        function = tool.get("function") if isinstance(tool, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if isinstance(name, str):
            try:
                names.gemini(name, "tools")
            except BadRequest:
                pass
    return names


def _short(text: str) -> str:
    return text if len(text) <= 80 else text[:80] + "..."


def build_body(chat: ChatRequest, cap: int) -> dict[str, Any]:
    """The Gemini GenerateContentRequest for an OpenAI chat request; `cap` is the output
    cap of each candidate (maxOutputTokens)."""
    body = chat.body
    for name in ("functions", "function_call"):
        if body.get(name):
            raise BadRequest(
                "functions and function_call are deprecated; use tools and tool_choice.",
                param=name,
            )
    _refuse_unsupported(body)
    names = ToolNames()
    declarations = []
    tools = body.get("tools")
    if tools:
        if not isinstance(tools, list):
            raise BadRequest("tools must be an array of function tools.", param="tools")
        declarations = [_declaration(tool, f"tools[{i}]", names) for i, tool in enumerate(tools)]
    system, contents = _contents(body.get("messages") or [], names)
    request: dict[str, Any] = {"contents": contents}
    if system:
        request["systemInstruction"] = {"parts": system}
    request["generationConfig"] = _generation_config(chat, cap)
    if declarations:
        request["tools"] = [{"functionDeclarations": declarations}]
        choice = body.get("tool_choice")
        if choice is not None:
            request["toolConfig"] = {"functionCallingConfig": _calling_config(choice, names)}
    return request


def _refuse_unsupported(body: Mapping[str, Any]) -> None:
    """Refuse, naming it, a field that would change the answer's shape and that Gemini's
    generateContent cannot honour."""
    if body.get("logprobs") or body.get("top_logprobs"):
        name = "logprobs" if body.get("logprobs") else "top_logprobs"
        raise BadRequest(f"{name} is not supported for this model.", param=name)
    modalities = body.get("modalities")
    if isinstance(modalities, list) and any(m != "text" for m in modalities):
        raise BadRequest("modalities: this model answers text only.", param="modalities")
    for name in ("audio", "web_search_options"):
        if body.get(name) is not None:
            raise BadRequest(f"{name} is not supported for this model.", param=name)


def _contents(
    messages: list[Any], names: ToolNames
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    # The tool calls of the last assistant message, awaiting their tool messages: Gemini wants
    # one functionResponse per functionCall, in the next turn, all of them.
    pending: dict[str, str] = {}  # tool_call id -> Gemini function name, in call order
    pending_at = ""
    answers: dict[str, dict[str, Any]] = {}

    def close() -> None:
        missing = [call_id for call_id in pending if call_id not in answers]
        if missing:
            raise BadRequest(
                f"{pending_at}.tool_calls: no tool message answers {', '.join(missing)}; "
                "every tool call needs a tool message right after the assistant message.",
                param="messages",
            )
        if pending:
            _append(contents, "user", [answers[call_id] for call_id in pending])
        pending.clear()
        answers.clear()

    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise BadRequest(f"{where} must be an object.", param=where)
        role = message.get("role")
        if role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or call_id not in pending or call_id in answers:
                raise BadRequest(
                    f"{where}.tool_call_id {call_id!r} answers no tool call of the assistant "
                    "message before it (or answers one twice).",
                    param=f"{where}.tool_call_id",
                )
            answers[call_id] = _function_response(message, where, pending[call_id])
            continue
        close()
        if role in ("system", "developer"):
            system.extend(_text_parts(message.get("content"), where))
            continue
        if role == "user":
            parts = _user_parts(message.get("content"), where)
            if not parts and (not contents or contents[-1]["role"] != "user"):
                parts = [{"text": PLACEHOLDER}]  # the client's turn, said with nothing
            _append(contents, "user", parts)
        elif role == "assistant":
            parts, calls = _assistant_parts(message, where, names)
            _append(contents, "model", parts)
            pending.update(calls)
            pending_at = where
        elif role == "function":
            raise BadRequest(
                f"{where}: legacy function messages are not supported; use tools.", param=where
            )
        else:
            raise BadRequest(
                f"{where}.role {role!r} is not supported for this model.", param=f"{where}.role"
            )
    close()
    if not contents:
        # OpenAI answers a conversation of system text alone; Gemini needs a user turn.
        contents, system = [{"role": "user", "parts": system or [{"text": PLACEHOLDER}]}], []
    if contents[0]["role"] == "model":
        contents.insert(0, {"role": "user", "parts": [{"text": PLACEHOLDER}]})
    for content in contents:
        # The first functionCall of each step must carry a signature on Gemini 3.
        first = next((p for p in content["parts"] if "functionCall" in p), None)
        if content["role"] == "model" and first is not None:
            first.setdefault("thoughtSignature", DUMMY_SIGNATURE)
    return system, contents


def _append(contents: list[dict[str, Any]], role: str, parts: list[dict[str, Any]]) -> None:
    if not parts:
        return  # Gemini refuses a content with no parts (or an empty text part)
    if contents and contents[-1]["role"] == role:
        contents[-1]["parts"].extend(parts)
    else:
        contents.append({"role": role, "parts": parts})


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
            audio_format = audio.get("format") or "wav"
            parts.append(
                _media_part(
                    f"data:audio/{audio_format};base64,{audio['data']}",
                    f"{pwhere}.input_audio",
                )
            )
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
        mime = header.split(";", 1)[0].strip().lower()
        mime = _MIME_ALIASES.get(mime, mime)
        if mime not in INLINE_MIME_TYPES:
            raise BadRequest(
                f"{where}: media type {mime or 'none'!r} is not supported by this model.",
                param=where,
            )
        if not data:
            raise BadRequest(f"{where} holds no data.", param=where)
        return {"inlineData": {"mimeType": mime, "data": data}}
    if urlsplit(url).scheme in ("http", "https"):
        file_data: dict[str, str] = {"fileUri": url}
        guessed, _ = mimetypes.guess_type(urlsplit(url).path)
        if guessed:
            file_data["mimeType"] = guessed
        return {"fileData": file_data}
    raise BadRequest(f"{where} must be an http(s) or data: URL.")


def _assistant_parts(
    message: dict[str, Any], where: str, names: ToolNames
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The model parts of an assistant message, and its calls (tool_call id -> name)."""
    parts = _text_parts(message.get("content"), where)
    calls: dict[str, str] = {}
    for j, call in enumerate(message.get("tool_calls") or ()):
        cwhere = f"{where}.tool_calls[{j}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise BadRequest(f"{cwhere}.function.name is required.", param=f"{cwhere}.function")
        call_id = call.get("id")
        if not isinstance(call_id, str) or not call_id or call_id in calls:
            raise BadRequest(f"{cwhere}.id must be a unique string.", param=f"{cwhere}.id")
        raw = function.get("arguments") or "{}"
        try:
            args = orjson.loads(raw)
        except (orjson.JSONDecodeError, TypeError) as exc:
            raise BadRequest(
                f"{cwhere}.function.arguments must be a JSON object.",
                param=f"{cwhere}.function.arguments",
            ) from exc
        if not isinstance(args, dict):
            raise BadRequest(
                f"{cwhere}.function.arguments must be a JSON object.",
                param=f"{cwhere}.function.arguments",
            )
        name = names.gemini(function["name"], f"{cwhere}.function.name")
        calls[call_id] = name
        part: dict[str, Any] = {"functionCall": {"name": name, "args": args}}
        signed = _SIGNED_ID.fullmatch(call_id)
        if signed:
            part["thoughtSignature"] = signed.group(1)
        parts.append(part)
    return parts, calls


def _function_response(message: dict[str, Any], where: str, name: str) -> dict[str, Any]:
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
    given = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if not isinstance(given, list) or not all(isinstance(s, str) for s in given):
        raise BadRequest("stop must be a string or an array of strings.", param="stop")
    # Gemini refuses an empty stop sequence; whitespace ones ("\n") are real and kept.
    stops = list(dict.fromkeys(s for s in given if s))
    if len(stops) > MAX_STOP_SEQUENCES:
        raise BadRequest(
            f"stop: this model takes at most {MAX_STOP_SEQUENCES} sequences.", param="stop"
        )
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
    if spec is None:
        return {}
    if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
        raise BadRequest(
            "'response_format' must be an object with a 'type': text, json_object or json_schema.",
            param="response_format",
        )
    kind = spec["type"]
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"responseMimeType": "application/json"}
    if kind == "json_schema":
        json_schema = spec.get("json_schema")
        if not isinstance(json_schema, dict):
            raise BadRequest(
                "'response_format.json_schema' must be an object.",
                param="response_format.json_schema",
            )
        schema = json_schema.get("schema")
        out: dict[str, Any] = {"responseMimeType": "application/json"}
        if isinstance(schema, dict):
            out["responseSchema"] = gemini_schema(schema, "response_format.json_schema.schema")
        return out
    raise BadRequest(
        f"'response_format.type' {kind!r} is not supported: text, json_object or json_schema.",
        param="response_format.type",
    )


def _candidate_count(body: Mapping[str, Any]) -> int:
    n = body.get("n")
    return n if isinstance(n, int) and n > 0 else 1


def _declaration(tool: Any, where: str, names: ToolNames) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type") != "function":
        raise BadRequest(f"{where}: only function tools are supported for this model.", param=where)
    function = tool.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise BadRequest(f"{where}.function.name is required.", param=f"{where}.function.name")
    if function["name"] in names.to_gemini:
        raise BadRequest(
            f"{where}.function.name {_short(function['name'])!r} is declared twice.",
            param=f"{where}.function.name",
        )
    declaration: dict[str, Any] = {"name": names.gemini(function["name"], f"{where}.function.name")}
    if isinstance(function.get("description"), str) and function["description"]:
        declaration["description"] = function["description"]
    parameters = function.get("parameters")
    if isinstance(parameters, dict):
        schema = gemini_schema(parameters, f"{where}.function.parameters")
        # Gemini refuses an OBJECT with no properties; a function without arguments has none.
        if schema.get("type") != "object" or schema.get("properties"):
            declaration["parameters"] = schema
    return declaration


def _calling_config(choice: Any, names: ToolNames) -> dict[str, Any]:
    if isinstance(choice, str) and choice in _TOOL_CHOICE_MODES:
        return {"mode": _TOOL_CHOICE_MODES[choice]}
    function = choice.get("function") if isinstance(choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str):
        raise BadRequest(
            "tool_choice must be auto, none, required or a named function.", param="tool_choice"
        )
    if name not in names.to_gemini:
        raise BadRequest(
            f"tool_choice names function {_short(name)!r}, which is not in tools.",
            param="tool_choice",
        )
    return {"mode": "ANY", "allowedFunctionNames": [names.to_gemini[name]]}


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


def _call_id(signature: Any) -> str:
    """A fresh tool call id, carrying the call's thoughtSignature when it has one: clients
    echo the id back (assistant tool_calls, tool_call_id), which brings the signature back
    to the functionCall part it came on."""
    call_id = f"call_{uuid.uuid4().hex}"
    if isinstance(signature, str) and _SIGNED_ID.fullmatch(f"{call_id}~{signature}"):
        return f"{call_id}~{signature}"
    return call_id


def _candidate_output(
    candidate: dict[str, Any], names: ToolNames
) -> tuple[str, list[dict[str, Any]]]:
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
                    "id": _call_id(part.get("thoughtSignature")),
                    "type": "function",
                    "function": {
                        "name": names.openai(str(call.get("name") or "")),
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
    # Google answers a bad or expired key with 400 INVALID_ARGUMENT; only the reason (or
    # the message) tells it apart from a bad request.
    message = str(error.get("message") or "")
    if any(s in message for s in ("API_KEY_INVALID", "API key not valid", "API key expired")):
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
        self.seen: set[int] = set()  # candidate indexes that came
        self.calls_sent: dict[int, int] = {}  # candidate index -> tool calls streamed
        self.names = tool_names(chat.body)

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
        # Complete when every candidate that came has finished: Google may send fewer than
        # candidateCount (one stream of n > 1 comes with one candidate at times).
        self.done = bool(self.finished) and self.seen <= self.finished
        return chunks

    def _candidate(self, candidate: dict[str, Any]) -> list[dict[str, Any]]:
        index = candidate.get("index", 0)  # proto3 JSON leaves out a zero index
        if not isinstance(index, int) or index in self.finished:
            return []
        self.seen.add(index)
        chunks = []
        text, calls = _candidate_output(candidate, self.names)
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
        if not self.done:
            return []
        # A candidate that never came (its role went out first) is finished empty.
        chunks = [_chunk(i, {}, "stop") for i in range(self.n) if i not in self.finished]
        if self.chat.include_usage:
            chunks.append({"choices": [], "usage": self.final_usage().as_dict()})
        return chunks


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
        names = tool_names(chat.body)
        candidates = [c for c in payload.get("candidates") or () if isinstance(c, dict)]
        choices = []
        for candidate in candidates:
            text, calls = _candidate_output(candidate, names)
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
        # `created` is the gateway's to stamp (base.py), but completion_body does not yet.
        completion: dict[str, Any] = {
            "object": "chat.completion",
            "created": int(time.time()),
            "choices": choices,
        }
        if usage is not None:
            completion["usage"] = usage.as_dict()
        return completion, usage

    def stream_translator(self, chat: ChatRequest) -> StreamTranslator:
        return GeminiStream(chat, self)

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
        """A Google `{"code", "message", "status"}` error as ours: the client's request (400),
        or this deployment's fault, retryable so the next deployment is tried."""
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
        if status in (408, 504) or google == "DEADLINE_EXCEEDED":
            return UpstreamTimeout(f"Provider '{name}' timed out.")
        if status == 404 or google == "NOT_FOUND":
            # The configured upstream model is unknown or retired: not the client's request.
            return ModelUnavailable(
                f"Provider '{name}' does not serve the configured model (unknown or retired)."
            )
        if google == "FAILED_PRECONDITION":
            # The provider account's region or billing ("User location is not supported").
            return ModelUnavailable(
                f"Provider '{name}' refused this deployment: {message or 'failed precondition'}"
            )
        if status in (409, 499) or google in ("ABORTED", "CANCELLED"):
            return UpstreamError(f"Provider '{name}' dropped the request ({status}).")
        if 400 <= status < 500:
            return BadRequest(
                message or f"Provider '{name}' rejected the request ({status}).",
                param=_param_of(message or ""),
            )
        return UpstreamError(f"Provider '{name}' failed ({status}).")


# Where a Google validation message points, as the OpenAI request field it came from.
_PARAMS = (
    ("function_response", "messages"),
    ("functionresponse", "messages"),
    ("function call", "messages"),
    ("thought_signature", "messages"),
    ("thought signature", "messages"),
    ("contents", "messages"),
    ("system_instruction", "messages"),
    ("function_declarations", "tools"),
    ("tool_config", "tool_choice"),
    ("response_schema", "response_format"),
    ("stop_sequences", "stop"),
    ("max_output_tokens", "max_completion_tokens"),
    ("candidate_count", "n"),
)


def _param_of(message: str) -> str | None:
    text = message.lower()
    return next((param for key, param in _PARAMS if key in text), None)
