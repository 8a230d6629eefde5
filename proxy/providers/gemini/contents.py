"""OpenAI messages -> Gemini `contents` and `systemInstruction`.

OpenAI messages become `contents` with roles `user` and `model`; system and developer text is
hoisted into `systemInstruction`; consecutive turns of one role are merged into one content,
because Gemini wants the roles to alternate. Assistant tool calls become `functionCall` parts
and the tool messages answering them one user turn of `functionResponse` parts, in the calls'
order (Gemini names the function in a result where OpenAI gives only the `tool_call_id`, and
wants one result per call of the turn before). Function names and thought signatures: see
calls.py.

What Google refuses and a valid OpenAI request may hold, and what is sent instead:
- no contents (system text only): the system text becomes the user turn; nothing at all, or
  an empty user message: a user turn of PLACEHOLDER text (Gemini refuses empty text and a
  content without parts); an empty assistant message is left out;
- a conversation that opens with the assistant: a PLACEHOLDER user turn before it;
- a tool call left unanswered, or a tool message answering no call of the assistant message
  right before it: OpenAI refuses both, and so do we (400, param `messages`/`tool_call_id`);
- a tool result that is not a JSON object: `{"result": <it>}` (`response` is a Struct);
- inline media: `image/jpg`, `audio/mpeg` are renamed to Google's names; a type Gemini does
  not read (GIF, say) is a 400 naming the part rather than Google's 400. http(s) URLs go as
  `fileData`, their type guessed from the path.

Sources: Gemini API reference, generateContent (ai.google.dev/api/generate-content: `contents`,
`systemInstruction`) and Content (ai.google.dev/api/caching#Content: roles `user` and
`model`, parts, `inlineData`, `fileData`, `functionResponse.response` a Struct); function
calling (ai.google.dev/gemini-api/docs/function-calling: one functionResponse per
functionCall, in the next turn); the "supported MIME types" of the image, audio, video and
document understanding guides (ai.google.dev/gemini-api/docs).
"""

from __future__ import annotations

import mimetypes
from typing import Any
from urllib.parse import urlsplit

import orjson

from proxy.errors import BadRequest
from proxy.providers.gemini.calls import DUMMY_SIGNATURE, ToolNames, signature_in

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


# What the translation sends for a turn the client left empty (an empty user message, or the
# user turn Gemini wants before a conversation that opens with the assistant): Gemini refuses
# empty text and a content without parts.
PLACEHOLDER = "."


def contents_of(
    messages: list[Any], names: ToolNames
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The `systemInstruction` parts and the `contents` of OpenAI messages; raises BadRequest
    naming the message Gemini could not take."""
    conversation = _Conversation(names)
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise BadRequest(f"{where} must be an object.", param=where)
        conversation.add(message, where)
    conversation.close_step()
    return _complete(conversation.system, conversation.contents)


class _Conversation:
    """The contents made so far, and the tool calls of the last assistant message awaiting
    their tool messages: Gemini wants one functionResponse per functionCall, in the next turn,
    all of them."""

    __slots__ = ("answers", "contents", "names", "pending", "pending_at", "system")

    def __init__(self, names: ToolNames) -> None:
        self.names = names
        self.system: list[dict[str, Any]] = []
        self.contents: list[dict[str, Any]] = []
        self.pending: dict[str, str] = {}  # tool_call id -> Gemini function name, in call order
        self.pending_at = ""  # the assistant message that made them
        self.answers: dict[str, dict[str, Any]] = {}  # tool_call id -> its functionResponse

    def add(self, message: dict[str, Any], where: str) -> None:
        role = message.get("role")
        if role == "tool":
            self._answer(message, where)
            return
        self.close_step()
        if role in ("system", "developer"):
            self.system.extend(_text_parts(message.get("content"), where))
        elif role == "user":
            parts = _user_parts(message.get("content"), where)
            if not parts and (not self.contents or self.contents[-1]["role"] != "user"):
                parts = [{"text": PLACEHOLDER}]  # the client's turn, said with nothing
            _append(self.contents, "user", parts)
        elif role == "assistant":
            parts, calls = _assistant_parts(message, where, self.names)
            _append(self.contents, "model", parts)
            self.pending.update(calls)
            self.pending_at = where
        elif role == "function":
            raise BadRequest(
                f"{where}: legacy function messages are not supported; use tools.", param=where
            )
        else:
            raise BadRequest(
                f"{where}.role {role!r} is not supported for this model.", param=f"{where}.role"
            )

    def _answer(self, message: dict[str, Any], where: str) -> None:
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str) or call_id not in self.pending or call_id in self.answers:
            raise BadRequest(
                f"{where}.tool_call_id {call_id!r} answers no tool call of the assistant "
                "message before it (or answers one twice).",
                param=f"{where}.tool_call_id",
            )
        self.answers[call_id] = _function_response(message, where, self.pending[call_id])

    def close_step(self) -> None:
        """The answers to the last assistant message's calls, as one user turn; a 400 when
        one is missing."""
        missing = [call_id for call_id in self.pending if call_id not in self.answers]
        if missing:
            raise BadRequest(
                f"{self.pending_at}.tool_calls: no tool message answers {', '.join(missing)}; "
                "every tool call needs a tool message right after the assistant message.",
                param="messages",
            )
        if self.pending:
            _append(self.contents, "user", [self.answers[call_id] for call_id in self.pending])
        self.pending.clear()
        self.answers.clear()


def _complete(
    system: list[dict[str, Any]], contents: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """What Gemini wants of the whole conversation: a user turn, first; a signature on the
    first functionCall of each step."""
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
        signature = signature_in(call_id)
        if signature is not None:
            part["thoughtSignature"] = signature
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
