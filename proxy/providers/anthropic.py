"""Anthropic's Messages API (`POST {base}/v1/messages`), translated natively.

Request: every OpenAI request the gateway accepts becomes one Anthropic accepts, or a 400 that
names the client's own field, never one naming a field it did not send.
- `system`/`developer` messages go to `system`; when nothing else is left, the system prompt
  is the user turn. `tool` messages become `tool_result` blocks and assistant `tool_calls`
  `tool_use` blocks. Consecutive turns of one role merge; tool results come first in their user
  turn. A conversation that opens with the assistant gets a user turn before it.
- Empty and blank text parts are dropped (Anthropic refuses them); an empty assistant message
  is dropped (its neighbours merge); a user turn left empty says PLACEHOLDER ("..."), so that
  an empty last message does not leave the assistant's turn last. A final assistant turn is a
  prefill: its trailing whitespace is cut.
- Tool ids: characters Anthropic refuses become "_", and an id already used in an earlier turn
  gets a suffix (providers that number calls per turn repeat them); a result answers the
  assistant turn just before it. A result that answers no call there, a call left without a
  result, a repeated id in one turn, or a missing id is a 400 naming it (as OpenAI does).
- Function names outside [a-zA-Z0-9_-]{1,64}, repeated tool names, parameters that are not an
  object's schema: 400. Images must be JPEG, PNG, GIF or WebP, told by their bytes whatever the
  data: URL says (image/jpg is JPEG); files PDF (base64) or plain text; else 400.
- `max_tokens` is required there; it is always the reserved cap (`ChatRequest.cap_for`).
  `temperature` is clamped to Anthropic's 0..1 (OpenAI allows up to 2). `top_p` is sent only
  without a temperature: Claude models since Sonnet 4.5 refuse the two together. The gateway's
  default temperature is not added to a request that sets `top_p` (validation.py), so the
  client's `top_p` is sent unless it set both, and then its temperature wins. Blank stop
  sequences are dropped (Anthropic refuses them). `user` is `metadata.user_id`, hashed when
  longer than 256 characters or not printable.
- `response_format` json_object / json_schema: the answer comes as the input of a tool the
  model must call (named after the schema, or `json_answer`), and goes back as the message's
  content (finish reason "stop"), streamed as content deltas. This works on every Claude model,
  unlike the native `output_config.format` (GA on the 4.5 and later models only). The schema
  is not enforced by constrained decoding (`strict` is ignored). Beside the client's tools,
  `tool_choice` becomes "any" (a client tool or the answer); with 'required' or a named
  function, no answer tool is offered.
- Refused with a 400 naming the field, since the answer would not have the shape asked:
  `n` > 1, `logprobs: true`, `top_logprobs`, `modalities` other than text, `audio`, the legacy
  `functions`/`function_call`, `web_search_options`.
- Ignored, since they do not change the answer's shape: `seed`, `frequency_penalty`,
  `presence_penalty`, `logit_bias`, `prediction`, `store`, `metadata`, `service_tier`,
  `reasoning_effort`, `verbosity`, `prompt_cache_key`, `safety_identifier`, and `strict` on
  tools.

Errors (`error_from_type`): the client's fault is a 400 with Anthropic's sentence; the
deployment's is retryable, so the next deployment is tried: 404 / not_found_error (model
retired or unknown), 402 / billing_error and the 400 "credit balance is too low" or usage
limits are ModelUnavailable (503); 401/403 (our key) a 502 that says nothing of keys;
429/503/529 a 503 with Retry-After; 408/504 / timeout_error a 504; other 5xx a 502. Mid-stream
`error` events are sorted by their type the same way.

Stream: each upstream event is translated on its own, so every text or tool-argument delta
goes out as soon as it comes in. OpenAI numbers tool calls 0, 1, 2... while Anthropic numbers
all content blocks, text and thinking included, so tool blocks are renumbered. A tool without
parameters streams only an empty fragment: at its block's end it gets "{}", as the non-stream
answer does. Usage comes from `message_start` (input, plus cache reads and writes, which
Anthropic counts apart) and the last `message_delta` (cumulative output; newer API versions
repeat the input counts there).
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from typing import Any

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
from proxy.estimates import estimate_text_tokens, text_weight
from proxy.providers.base import (
    Provider,
    StreamTranslator,
    UpstreamRequest,
    load_json,
)
from proxy.sse import SSEEvent

API_VERSION = "2023-06-01"

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

_INPUT_FIELDS = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
_DATA_URL = re.compile(r"data:(?P<type>[\w.+-]+/[\w.+-]+)(?:;[^,;]*)*;base64,(?P<data>.*)", re.S)
_TOOL_ID_BAD_CHARS = re.compile(r"[^a-zA-Z0-9_-]")
_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")  # OpenAI's rule for function names; Anthropic's too
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_IMAGE_ALIASES = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg"}
_IMAGE_MAGIC = ((b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG", "image/png"), (b"GIF8", "image/gif"))
_ACCOUNT_TROUBLE = re.compile(r"credit balance|billing|usage limits|spend limit", re.I)
# What a user turn says when the client's was empty: Anthropic refuses empty turns and blank
# text, and dropping the turn would leave an assistant turn last (a prefill to continue).
PLACEHOLDER = "..."


def finish_reason(stop_reason: Any) -> str:
    return FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def input_tokens(usage: dict[str, Any]) -> int:
    """Anthropic's input count leaves out cached tokens; OpenAI's prompt count includes them."""
    return sum(v for name in _INPUT_FIELDS if isinstance(v := usage.get(name), int))


def usage_from(payload: Any) -> Usage | None:
    if not isinstance(payload, dict) or not isinstance(payload.get("output_tokens"), int):
        return None
    return Usage(input_tokens(payload), payload["output_tokens"])


# -- request ---------------------------------------------------------------------------------


def _tool_id(value: Any, where: str) -> str:
    """Anthropic wants ids matching [a-zA-Z0-9_-]+; ids made by other providers may not."""
    if not isinstance(value, str) or not value:
        raise BadRequest(f"'{where}' must be a non-empty string.", param=where)
    return _TOOL_ID_BAD_CHARS.sub("_", value)


def _check_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise BadRequest(
            f"'{where}' must be 1 to 64 letters, digits, underscores or dashes.", param=where
        )
    return name


def _text_of(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadRequest(f"{where}.content must be a string or a list of parts.")
    texts = []
    for part in content:
        if isinstance(part, dict) and part.get("type") in ("text", "refusal"):
            text = part.get("text", part.get("refusal"))
            if isinstance(text, str):
                texts.append(text)
                continue
        raise BadRequest(f"{where} may only contain text parts for this model.")
    return "".join(texts)


def _sniff_image(data: str) -> str | None:
    """The image type its first bytes say, whatever the data: URL claims."""
    try:
        head = base64.b64decode(data[:24] + "=" * (-len(data[:24]) % 4))
    except ValueError:
        return None
    for magic, media_type in _IMAGE_MAGIC:
        if head.startswith(magic):
            return media_type
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def _media_block(kind: str, url: Any, where: str) -> dict[str, Any]:
    if not isinstance(url, str) or not url:
        raise BadRequest(f"{where} has no URL.", param=where)
    if url.startswith(("http://", "https://")):
        return {"type": kind, "source": {"type": "url", "url": url}}
    match = _DATA_URL.fullmatch(url) if url.startswith("data:") else None
    if not match:
        raise BadRequest(f"{where} must be a base64 data: URL or an http(s) URL.", param=where)
    media_type, data = match["type"].lower(), match["data"]
    if kind == "image":
        media_type = _sniff_image(data) or _IMAGE_ALIASES.get(media_type, media_type)
        if media_type not in IMAGE_TYPES:
            raise BadRequest(
                f"{where}: images must be JPEG, PNG, GIF or WebP for this model, not {media_type}.",
                param=where,
            )
    elif media_type == "text/plain":
        try:
            text = base64.b64decode(data, validate=True).decode("utf-8")
        except ValueError as exc:  # binascii.Error and UnicodeDecodeError both are
            raise BadRequest(
                f"{where}: the text/plain file is not base64 UTF-8.", param=where
            ) from exc
        return {"type": kind, "source": {"type": "text", "media_type": media_type, "data": text}}
    elif media_type != "application/pdf":
        raise BadRequest(
            f"{where}: files must be PDF or plain text for this model, not {media_type}.",
            param=where,
        )
    return {"type": kind, "source": {"type": "base64", "media_type": media_type, "data": data}}


def _user_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content.strip() else []
    if not isinstance(content, list):
        raise BadRequest(f"{where}.content must be a string or a list of parts.")
    blocks: list[dict[str, Any]] = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        at = f"{where}.content[{i}]"
        if kind == "text" and isinstance(part.get("text"), str):
            if part["text"].strip():  # Anthropic refuses empty and blank text blocks
                blocks.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            blocks.append(_media_block("image", url, f"{at}.image_url.url"))
        elif kind == "file" and isinstance(doc := part.get("file"), dict) and doc.get("file_data"):
            blocks.append(_media_block("document", doc["file_data"], f"{at}.file.file_data"))
        else:
            raise BadRequest(
                f"{at}: content part type {kind!r} is not supported for this model.", param=at
            )
    return blocks


Placed = list[tuple[dict[str, Any], str]]  # blocks of a turn, each with the field it came from


def _tool_use_blocks(calls: Any, where: str) -> Placed:
    blocks: Placed = []
    for i, call in enumerate(calls or ()):
        at = f"{where}.tool_calls[{i}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            raise BadRequest(f"{at} must be a function call with a name.", param=at)
        name = _check_name(function.get("name"), f"{at}.function.name")
        arguments = function.get("arguments") or "{}"
        try:
            parsed = orjson.loads(arguments) if isinstance(arguments, str) else arguments
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"{at}.function.arguments is not JSON.", param=at) from exc
        if not isinstance(parsed, dict):
            raise BadRequest(f"{at}.function.arguments must be a JSON object.", param=at)
        block = {
            "type": "tool_use",
            "id": _tool_id(call.get("id"), f"{at}.id"),
            "name": name,
            "input": parsed,
        }
        blocks.append((block, f"{at}.id"))
    return blocks


def _tool_result_block(message: dict[str, Any], where: str) -> dict[str, Any]:
    block: dict[str, Any] = {
        "type": "tool_result",
        "tool_use_id": _tool_id(message.get("tool_call_id"), f"{where}.tool_call_id"),
    }
    content = message.get("content")
    if isinstance(content, list):
        if parts := _user_blocks(content, where):
            block["content"] = parts
    elif isinstance(content, str) and content.strip():
        block["content"] = content
    return block


def _pair_tool_calls(turns: list[tuple[str, Placed]]) -> None:
    """Give every tool_use an id unique in the request, and its result that id; refuse
    results that answer no call of the assistant turn just before, and calls left unanswered
    (as OpenAI does). Ids are the client's, scoped by turn: a provider that numbers its calls
    per turn repeats them, and Anthropic wants them unique."""
    used: set[str] = set()
    ids: dict[str, str] = {}  # the client's ids of the last assistant turn -> ours
    pending: dict[str, str] = {}  # our ids of calls still awaiting a result -> where from
    for role, blocks in turns:
        if role == "assistant":
            ids = {}
            for block, where in blocks:
                if block["type"] != "tool_use":
                    continue
                if block["id"] in ids:
                    raise BadRequest(f"'{where}' repeats an id of the same message.", param=where)
                unique, n = block["id"], 1
                while unique in used:
                    n += 1
                    unique = f"{block['id']}_{n}"
                used.add(unique)
                ids[block["id"]] = block["id"] = unique
                pending[unique] = where
            continue
        for block, where in blocks:
            if block["type"] == "tool_result":
                ours = ids.get(block["tool_use_id"])
                if ours is None or pending.pop(ours, None) is None:
                    raise BadRequest(
                        f"'{where}' answers no tool call of the assistant message before it.",
                        param=where,
                    )
                block["tool_use_id"] = ours
        if pending:
            break
    if pending:
        where = next(iter(pending.values()))
        raise BadRequest(
            f"'{where}': this tool call has no tool message answering it.", param=where
        )


def translate_messages(messages: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """OpenAI messages -> (Anthropic `system`, alternating Anthropic `messages`)."""
    system: list[str] = []
    turns: list[tuple[str, Placed]] = []
    for i, message in enumerate(messages):
        role = message.get("role")
        where = f"messages[{i}]"
        blocks: Placed
        if role in ("system", "developer"):
            text = _text_of(message.get("content"), where)
            if text.strip():
                system.append(text)
            continue
        if role == "user":
            blocks = [(b, where) for b in _user_blocks(message.get("content"), where)]
        elif role == "assistant":
            text = _text_of(message.get("content"), where)
            blocks = [({"type": "text", "text": text}, where)] if text.strip() else []
            blocks += _tool_use_blocks(message.get("tool_calls"), where)
            if not blocks:
                continue  # an empty assistant message: the turns around it merge
        elif role == "tool":
            role = "user"
            blocks = [(_tool_result_block(message, where), f"{where}.tool_call_id")]
        else:
            raise BadRequest(
                f"{where}.role {role!r} is not supported for this model.", param=f"{where}.role"
            )
        if turns and turns[-1][0] == role:
            turns[-1][1].extend(blocks)
        else:
            turns.append((role, blocks))
    if not turns and system:  # a system prompt alone is the request: it becomes the user turn
        turns.append(("user", [({"type": "text", "text": "\n\n".join(system)}, "messages")]))
        system = []
    if not turns or turns[0][0] != "user":
        turns.insert(0, ("user", []))
    _pair_tool_calls(turns)
    out: list[dict[str, Any]] = []
    for role, placed in turns:
        content = [block for block, _ in placed]
        if role == "user":
            # Tool results first, as Anthropic wants; each group keeps its order.
            content.sort(key=lambda block: block["type"] != "tool_result")
        out.append({"role": role, "content": content or [{"type": "text", "text": PLACEHOLDER}]})
    last = out[-1]["content"]
    if out[-1]["role"] == "assistant" and last[-1]["type"] == "text":
        # A final assistant turn is a prefill, and Anthropic refuses one ending in whitespace.
        last[-1]["text"] = last[-1]["text"].rstrip()
    return "\n\n".join(system), out


def translate_tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise BadRequest("tools must be an array of function tools.", param="tools")
    out = []
    names: set[str] = set()
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or tool.get("type", "function") != "function":
            raise BadRequest(
                f"tools[{i}]: only function tools with a name are supported.", param=f"tools[{i}]"
            )
        name = _check_name(function.get("name"), f"tools[{i}].function.name")
        if name in names:
            raise BadRequest(
                f"tools[{i}].function.name: {name!r} names two tools.",
                param=f"tools[{i}].function.name",
            )
        names.add(name)
        spec: dict[str, Any] = {"name": name}
        if isinstance(function.get("description"), str) and function["description"]:
            spec["description"] = function["description"]
        spec["input_schema"] = _object_schema(
            function.get("parameters"), f"tools[{i}].function.parameters"
        )
        out.append(spec)
    return out


def _object_schema(schema: Any, where: str) -> dict[str, Any]:
    """Anthropic wants every tool's input schema to be an object's."""
    if schema is None or schema == {}:
        return {"type": "object", "properties": {}}
    if not isinstance(schema, dict) or schema.get("type", "object") != "object":
        raise BadRequest(f"'{where}' must be a JSON schema of an object.", param=where)
    return {"type": "object", **schema}


def response_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    """The tool whose input is the answer when `response_format` asks for JSON, or None.

    It is offered only when the model may answer without calling one of the client's tools,
    i.e. not when `tool_choice` is 'required' or names a function.
    """
    fmt = body.get("response_format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    choice = body.get("tool_choice")
    if body.get("tools") and (choice == "required" or isinstance(choice, dict)):
        return None
    if kind == "json_object":
        return {
            "name": "json_answer",
            "description": "Give your whole answer as this tool's input: one JSON object.",
            "input_schema": {"type": "object"},
        }
    spec = fmt.get("json_schema") if kind == "json_schema" else None
    if not isinstance(spec, dict):
        raise BadRequest(
            "response_format must be {'type': 'text'}, {'type': 'json_object'} or "
            "{'type': 'json_schema', 'json_schema': {...}}.",
            param="response_format",
        )
    name = _check_name(spec.get("name"), "response_format.json_schema.name")
    description = "Give your whole answer as this tool's input."
    if isinstance(spec.get("description"), str) and spec["description"]:
        description += " " + spec["description"]
    schema = _object_schema(spec.get("schema"), "response_format.json_schema.schema")
    return {"name": name, "description": description, "input_schema": schema}


def translate_tool_choice(choice: Any, parallel: Any, names: set[str]) -> dict[str, Any] | None:
    if choice is None or choice == "auto":
        out: dict[str, Any] = {"type": "auto"}
    elif choice == "required":
        out = {"type": "any"}
    elif choice == "none":
        return {"type": "none"}
    elif (
        isinstance(choice, dict)
        and isinstance(choice.get("function"), dict)
        and isinstance(choice["function"].get("name"), str)
    ):
        if choice["function"]["name"] not in names:
            raise BadRequest(
                "tool_choice names a function that is not in tools.", param="tool_choice"
            )
        out = {"type": "tool", "name": choice["function"]["name"]}
    else:
        raise BadRequest(
            "tool_choice must be 'auto', 'none', 'required' or a named function.",
            param="tool_choice",
        )
    if parallel is False:
        out["disable_parallel_tool_use"] = True
    elif choice is None:
        return None  # Anthropic's default is already auto
    return out


def _refuse_unsupported(body: dict[str, Any], model: str) -> None:
    """A 400 naming each field whose answer Anthropic cannot give in the shape asked."""
    n = body.get("n")
    if isinstance(n, int) and n > 1:
        raise BadRequest(f"n={n} is not supported for {model}; only n=1.", param="n")
    if body.get("logprobs") is True or body.get("top_logprobs"):
        param = "logprobs" if body.get("logprobs") is True else "top_logprobs"
        raise BadRequest(f"{param}: {model} does not return log probabilities.", param=param)
    modalities = body.get("modalities")
    if isinstance(modalities, list) and any(m != "text" for m in modalities):
        raise BadRequest(f"modalities: {model} answers in text only.", param="modalities")
    for name, why in (
        ("audio", "answers in text only"),
        ("functions", "takes `tools`, not the legacy `functions`"),
        ("function_call", "takes `tool_choice`, not the legacy `function_call`"),
        ("web_search_options", "does not search the web here"),
    ):
        if body.get(name) is not None:
            raise BadRequest(f"{name}: {model} {why}.", param=name)


def _answer_tool_name(chat: ChatRequest) -> str | None:
    tool = response_tool(chat.body)
    return tool["name"] if tool is not None else None


# -- stream ----------------------------------------------------------------------------------


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}


class AnthropicStream(StreamTranslator):
    def __init__(self, chat: ChatRequest, provider: AnthropicProvider):
        super().__init__(chat)
        self.provider = provider
        self.input_counts: dict[str, int] = {}
        self.output_tokens = 0
        self.started = False  # message_start seen: the input count is the upstream's
        self.tool_index: dict[int, int] = {}  # Anthropic block index -> OpenAI tool call index
        self.silent: set[int] = set()  # tool blocks whose arguments have not begun
        self.answer = _answer_tool_name(chat)
        self.answer_blocks: set[int] = set()  # blocks of response_format's tool: content

    def feed(self, event: SSEEvent) -> list[dict[str, Any]]:
        if event.comment or not event.data:
            return []
        data = load_json(event.data, "stream event")
        kind = event.event or data.get("type")
        if kind == "content_block_delta":
            return self._block_delta(data)
        if kind == "content_block_start":
            return self._block_start(data)
        if kind == "content_block_stop":
            return self._block_stop(data)
        if kind == "message_start":
            message = data.get("message")
            self._count(message.get("usage") if isinstance(message, dict) else None)
            self.started = True
            return [_chunk({"role": "assistant", "content": ""})]
        if kind == "message_delta":
            self._count(data.get("usage"))
            if isinstance(data.get("usage"), dict):
                self.usage = Usage(input_tokens(self.input_counts), self.output_tokens)
            delta = data.get("delta")
            stop = delta.get("stop_reason") if isinstance(delta, dict) else None
            if stop == "tool_use" and self.answer_blocks and not self.tool_index:
                return [_chunk({}, "stop")]  # only response_format's tool was called
            return [_chunk({}, finish_reason(stop))] if stop else []
        if kind == "message_stop":
            self.done = True
            if self.usage is None:
                self.usage = Usage(input_tokens(self.input_counts), self.output_tokens)
            if self.chat.include_usage:
                return [{"choices": [], "usage": self.usage.as_dict()}]
            return []
        if kind == "error":
            raise self.provider.error_from_type(data.get("error"), {})
        return []  # ping, and event types added after this was written

    def _block_start(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        block = data.get("content_block")
        if not isinstance(block, dict):
            return []
        if block.get("type") == "text" and block.get("text"):
            self.produced_chars += text_weight(block["text"])
            return [_chunk({"content": block["text"]})]
        if block.get("type") == "tool_use":
            at = data.get("index", -1)
            if self.answer is not None and block.get("name") == self.answer:
                self.answer_blocks.add(at)
                self.silent.add(at)
                return []
            index = self.tool_index[at] = len(self.tool_index)
            self.silent.add(at)
            name = str(block.get("name") or "")
            self.produced_chars += text_weight(name)
            call = {
                "index": index,
                "id": str(block.get("id") or ""),
                "type": "function",
                "function": {"name": name, "arguments": ""},
            }
            return [_chunk({"tool_calls": [call]})]
        return []  # thinking and redacted_thinking stay out of an OpenAI answer

    def _block_delta(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        delta = data.get("delta")
        if not isinstance(delta, dict):
            return []
        kind = delta.get("type")
        if kind == "text_delta" and isinstance(delta.get("text"), str):
            self.produced_chars += text_weight(delta["text"])
            return [_chunk({"content": delta["text"]})]
        if kind == "input_json_delta" and delta.get("partial_json"):
            at = data.get("index", -1)
            fragment = str(delta["partial_json"])
            self.silent.discard(at)
            if at in self.answer_blocks:
                self.produced_chars += text_weight(fragment)
                return [_chunk({"content": fragment})]
            index = self.tool_index.get(at)
            if index is None:
                return []
            self.produced_chars += text_weight(fragment)
            call = {"index": index, "function": {"arguments": fragment}}
            return [_chunk({"tool_calls": [call]})]
        if kind == "thinking_delta" and isinstance(delta.get("thinking"), str):
            # Not sent, but billed as output: count it, for the estimate of a cut stream.
            self.produced_chars += text_weight(delta["thinking"])
        return []  # signature_delta, citations_delta

    def _block_stop(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        """A tool without parameters streams `input: {}` and one empty fragment: its arguments
        must still add up to JSON, as the non-stream answer's "{}" does."""
        at = data.get("index", -1)
        if at not in self.silent:
            return []
        self.silent.discard(at)
        self.produced_chars += 2
        if at in self.answer_blocks:
            return [_chunk({"content": "{}"})]
        call = {"index": self.tool_index[at], "function": {"arguments": "{}"}}
        return [_chunk({"tool_calls": [call]})]

    def _count(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        for name in _INPUT_FIELDS:
            if isinstance(usage.get(name), int):
                self.input_counts[name] = usage[name]
        if isinstance(usage.get("output_tokens"), int):
            self.output_tokens = usage["output_tokens"]

    def final_usage(self) -> Usage:
        """The upstream's usage; for a cut stream, its input count and an output estimate."""
        if self.usage is not None:
            return self.usage
        if self.started:
            output = max(self.output_tokens, estimate_text_tokens(self.produced_chars))
            return Usage(input_tokens(self.input_counts), output, estimated=True)
        return super().final_usage()


# -- provider --------------------------------------------------------------------------------


class AnthropicProvider(Provider):
    kind = "anthropic"

    def __init__(self, config: ProviderConfig):
        super().__init__(config)
        base = config.base_url.rstrip("/")
        self.url = f"{base}/messages" if base.endswith("/v1") else f"{base}/v1/messages"
        self.headers = {
            "Content-Type": "application/json",
            "anthropic-version": API_VERSION,
            **config.headers,
        }
        if config.api_key:
            self.headers["x-api-key"] = config.api_key

    def build_request(self, chat: ChatRequest, deployment: Deployment) -> UpstreamRequest:
        self.require_key()
        source = chat.body
        _refuse_unsupported(source, chat.public_model)
        system, messages = translate_messages(source.get("messages") or [])
        body: dict[str, Any] = {
            "model": deployment.model,
            "max_tokens": chat.cap_for(deployment),
            "messages": messages,
        }
        if system:
            body["system"] = system
        temperature = source.get("temperature")
        if isinstance(temperature, (int, float)) and not isinstance(temperature, bool):
            body["temperature"] = min(max(float(temperature), 0.0), 1.0)
        elif isinstance(source.get("top_p"), (int, float)):
            body["top_p"] = source["top_p"]  # newer models refuse it beside temperature
        stop = source.get("stop")
        stops = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
        # Anthropic refuses blank stop sequences; a model rarely ends text on whitespace alone.
        stops = [s for s in stops if isinstance(s, str) and s.strip()]
        if stops:
            body["stop_sequences"] = stops
        user = source.get("user")
        if isinstance(user, str) and user:
            if len(user) > 256 or not user.isprintable():
                user = hashlib.sha256(user.encode()).hexdigest()
            body["metadata"] = {"user_id": user}
        tools = translate_tools(source["tools"]) if source.get("tools") else []
        names = {tool["name"] for tool in tools}
        choice = source.get("tool_choice")
        if tools:
            anthropic_choice = translate_tool_choice(
                choice, source.get("parallel_tool_calls"), names
            )
        elif choice == "required" or isinstance(choice, dict):
            raise BadRequest(
                "tool_choice asks for a tool call, but tools is empty.", param="tool_choice"
            )
        else:
            anthropic_choice = None
        answer = response_tool(source)
        if answer is not None:
            if answer["name"] in names:
                raise BadRequest(
                    "response_format.json_schema.name is also the name of a tool.",
                    param="response_format.json_schema.name",
                )
            # The answer comes as the input of a tool the model must call (or a call of one of
            # the client's tools, when it may call them).
            only_answer = not tools or choice == "none"
            tools.append(answer)
            anthropic_choice = (
                {"type": "tool", "name": answer["name"]} if only_answer else {"type": "any"}
            )
            if source.get("parallel_tool_calls") is False:
                anthropic_choice["disable_parallel_tool_use"] = True
        if tools:
            body["tools"] = tools
        if anthropic_choice is not None:
            body["tool_choice"] = anthropic_choice
        if chat.stream:
            body["stream"] = True
        try:
            data = orjson.dumps(body)
        except orjson.JSONEncodeError as exc:
            # Tool call arguments arrive as JSON text, parsed here, and may nest past orjson's 254.
            raise BadRequest("The request is nested too deeply for this model.") from exc
        return UpstreamRequest(self.url, self.headers, data)

    def parse_response(self, body: bytes, chat: ChatRequest) -> tuple[dict[str, Any], Usage | None]:
        payload = load_json(body, "answer")
        if not isinstance(payload.get("content"), list):
            if payload.get("type") == "error":
                raise self.error_from_type(payload.get("error"), {})
            raise UpstreamError("The upstream provider sent a malformed answer.")
        answer = _answer_tool_name(chat)
        answered = False  # response_format's tool was called: its input is the content
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        for block in payload["content"]:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text" and isinstance(block.get("text"), str):
                texts.append(block["text"])
            elif block.get("type") == "tool_use":
                arguments = orjson.dumps(block.get("input") or {}).decode()
                if block.get("name") == answer:
                    texts.append(arguments)
                    answered = True
                    continue
                calls.append(
                    {
                        "id": str(block.get("id") or ""),
                        "type": "function",
                        "function": {"name": str(block.get("name") or ""), "arguments": arguments},
                    }
                )
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(texts) if texts or not calls else None,
            "refusal": None,
        }
        if calls:
            message["tool_calls"] = calls
        stop = payload.get("stop_reason")
        completion: dict[str, Any] = {
            "created": int(time.time()),  # the gateway stamps only streams' chunks with it
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": "stop"
                    if stop == "tool_use" and answered and not calls
                    else finish_reason(stop),
                }
            ],
        }
        usage = usage_from(payload.get("usage"))
        if usage is not None:
            cached = payload["usage"].get("cache_read_input_tokens")
            completion["usage"] = {
                **usage.as_dict(),
                "prompt_tokens_details": {"cached_tokens": cached or 0},
            }
        return completion, usage

    def stream_translator(self, chat: ChatRequest) -> StreamTranslator:
        return AnthropicStream(chat, self)

    def error_from_type(
        self, error: Any, headers: dict[str, str], status: int | None = None
    ) -> GatewayError:
        """Map Anthropic's error `type` (and the HTTP status, when there is one) to ours: the
        client's fault is a 400; the deployment's (its model, our key or account, the
        service) is retryable, so the next deployment is tried."""
        kind = error.get("type") if isinstance(error, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        text = message if isinstance(message, str) else ""
        name = self.config.name
        retry = {"Retry-After": headers.get("retry-after") or "1"}
        if kind == "overloaded_error" or status in (503, 529):
            return ServiceUnavailable(
                f"Provider '{name}' is overloaded; retry later.", headers=retry
            )
        if kind == "rate_limit_error" or status == 429:
            return ServiceUnavailable(
                f"Provider '{name}' is rate-limited; retry later.", headers=retry
            )
        if kind == "timeout_error" or status in (408, 504):
            return UpstreamTimeout(f"Provider '{name}' timed out.")
        if kind in ("authentication_error", "permission_error") or status in (401, 403):
            return UpstreamError(f"The gateway's credentials for provider '{name}' were rejected.")
        # "Your credit balance is too low" and spent usage limits come as 400s.
        if kind == "billing_error" or status == 402 or _ACCOUNT_TROUBLE.search(text):
            return ModelUnavailable(
                f"Provider '{name}' refused the gateway's account (billing or usage limits)."
            )
        if kind == "not_found_error" or status == 404:
            return ModelUnavailable(f"Provider '{name}' does not serve this model (retired?).")
        if kind == "request_too_large" or status == 413:
            return BadRequest(f"The request is too large for provider '{name}'.")
        if text.startswith("anthropic-"):  # our headers, not the client's request
            return UpstreamError(f"Provider '{name}' refused the gateway's request headers.")
        if kind == "invalid_request_error" or (status is not None and 400 <= status < 500):
            return BadRequest(
                f"Provider '{name}' refused the request: {text}"
                if text
                else f"Provider '{name}' refused the request."
            )
        if status is not None:
            return UpstreamError(f"Provider '{name}' failed ({status}).")
        return UpstreamError(
            f"Provider '{name}' failed mid-stream" + (f": {text}" if text else ".")
        )

    def error_from_response(
        self, status: int, body: bytes, headers: dict[str, str]
    ) -> GatewayError:
        try:
            payload = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            payload = None
        error = payload.get("error") if isinstance(payload, dict) else None
        lowered = {k.lower(): v for k, v in headers.items()}
        return self.error_from_type(error, lowered, status)
