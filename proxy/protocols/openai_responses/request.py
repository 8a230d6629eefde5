"""A Responses request (`POST /responses`) checked, and translated into chat completions.

Follows OpenAI's API reference, "Responses: Create a model response"
(platform.openai.com/docs/api-reference/responses/create) and the openai-python types
(`openai.types.responses.ResponseCreateParams`, `ResponseInputItemParam`, `ToolParam`).
Every refusal is a BadRequest naming the field (`param`).

Refused on every provider (a 400 naming the field): `previous_response_id`, `conversation`
and `background: true`. The gateway keeps the output items of answers, not responses nor
conversations (items.py says why), so it cannot expand them; and a hold estimated without
the referenced history could be outrun by what the provider bills. Clients send the
conversation in `input`, the items of earlier answers as they are or by `item_reference`
(items.py replaces each by its item before this module reads the body).

Translated into a chat completions body (for providers that do not speak Responses):

| Responses | chat completions |
| --- | --- |
| `instructions` | a leading `system` message |
| `input` string | one `user` message |
| `message` items (user, assistant, system, developer) | messages of that role |
| `input_text`, `output_text` parts | `text` parts |
| `refusal` parts | `refusal` parts |
| `input_image` (`image_url`, `detail`) | `image_url` parts |
| `input_file` (`file_data`, `filename`) | `file` parts |
| `input_audio` | `input_audio` parts |
| `function_call` items | `tool_calls` of an assistant message (consecutive calls: one message) |
| `function_call_output` items | `tool` messages |
| `reasoning` items | left out (chat completions has no field for them) |
| function `tools` (name, description, parameters, strict) | function tools |
| `namespace` tools (Codex) | its functions as `<namespace>__<name>` (split back after) |
| `tool_choice` auto / none / required / {type: function, name} | the same |
| `parallel_tool_calls`, `temperature`, `top_p`, `user`, `service_tier` | the same |
| `safety_identifier`, `prompt_cache_key` | the same |
| `text.format` json_object / json_schema {name, schema, strict, description} | `response_format` |
| `text.verbosity` | `verbosity` |
| `max_output_tokens` | `max_completion_tokens` |
| `reasoning.effort` | `reasoning_effort` (each provider maps or ignores it as for chat clients) |
| `stream` | `stream` (absent: false on both prefixes, as in OpenAI's API) |

Ignored in translation, because the answer's shape does not depend on them: `store` (read
by items.py: whether the answer's items are kept), `metadata`, `include`, `truncation`,
`reasoning.summary`, `stream_options` (obfuscation), and fields this module does not know
(passed natively as sent: Codex sends `client_metadata`). Not translatable (a 400 naming
the field on providers that do not speak Responses, `Native.untranslatable`; served
natively): built-in tools (web_search, file_search, computer_use, code_interpreter,
image_generation, mcp, local_shell, shell, apply_patch, custom, tool_search, ...), their
call items in `input`, `allowed_tools` and hosted tool choices, `input_image` /
`input_file` by `file_id` or `file_url`, `prompt` templates, `max_tool_calls`,
`top_logprobs`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.errors import BadRequest

MIN_OUTPUT_TOKENS = 16  # OpenAI refuses less: "integer_below_min_value"
MAX_OUTPUT_TOKENS = 2**31 - 1  # as chat completions' caps (protocols/openai_chat.py)
# `reasoning.effort` as OpenAI's API reference lists it ("Reasoning": effort).
EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")
ROLES = frozenset({"user", "assistant", "system", "developer"})
NAMESPACE_SEPARATOR = "__"
# Input items of the Responses API that only the Responses API can serve (a provider's
# built-in tools and their results): native only.
NATIVE_ITEMS = frozenset(
    {
        "file_search_call",
        "computer_call",
        "computer_call_output",
        "web_search_call",
        "image_generation_call",
        "code_interpreter_call",
        "local_shell_call",
        "local_shell_call_output",
        "shell_call",
        "shell_call_output",
        "apply_patch_call",
        "apply_patch_call_output",
        "mcp_list_tools",
        "mcp_approval_request",
        "mcp_approval_response",
        "mcp_call",
        "custom_tool_call",
        "custom_tool_call_output",
        "compaction",
        "tool_search_call",
        "tool_search_output",
    }
)
TEXT_FORMATS = frozenset({"text", "json_object", "json_schema"})
CHOICES = frozenset({"auto", "none", "required"})
# Top-level fields passed to chat completions under the same name.
SAME = ("temperature", "top_p", "user", "safety_identifier", "prompt_cache_key", "service_tier")
# Top-level fields that only the Responses API serves: (field, when it is set).
NATIVE_FIELDS: dict[str, Callable[[Any], bool]] = {
    "prompt": lambda v: v is not None,
    "max_tool_calls": lambda v: v is not None,
    "top_logprobs": lambda v: bool(v),
}


@dataclass
class Translation:
    """A Responses body's chat completions body, and the first thing it could not carry."""

    body: dict[str, Any]
    lost: tuple[str, str] | None = None  # (what, param) of the first thing lost
    messages: list[dict[str, Any]] = field(default_factory=list)

    def cannot(self, what: str, param: str) -> None:
        """Note that `what` (a tool, a field) is lost in translation: the first one is the
        400 of providers that do not speak Responses (`untranslatable`)."""
        if self.lost is None:
            self.lost = (what, param)

    def untranslatable(self, model: str) -> tuple[str, str] | None:
        """`Native.untranslatable` for the public `model`: the 400 naming what is lost."""
        if self.lost is None:
            return None
        what, param = self.lost
        message = (
            f"{what} is not available on {model}: only its deployments that speak OpenAI's"
            " Responses API serve it."
        )
        return message, param


def translate(body: dict[str, Any]) -> Translation:
    """The chat completions body for Responses `body` (its `model` as the client sent it:
    validate_chat checks it); BadRequest naming the field for what OpenAI's API refuses."""
    _refuse_stateful(body)
    out = Translation({"model": body.get("model")})
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise BadRequest("'instructions' must be a string.", param="instructions")
        out.messages.append({"role": "system", "content": instructions})
    _input(body.get("input"), out)
    out.body["messages"] = out.messages
    for name in SAME:
        if body.get(name) is not None:
            out.body[name] = body[name]
    if body.get("parallel_tool_calls") is not None:
        out.body["parallel_tool_calls"] = _bool(body, "parallel_tool_calls")
    _tools(body.get("tools"), out)
    _tool_choice(body.get("tool_choice"), out)
    _text(body.get("text"), out)
    _reasoning(body.get("reasoning"), out)
    _caps(body, out)
    for name, is_set in NATIVE_FIELDS.items():
        if is_set(body.get(name)):
            out.cannot(f"'{name}'", name)
    for name in ("store", "stream"):
        if body.get(name) is not None:
            _bool(body, name)
    if body.get("stream") is not None:
        out.body["stream"] = body["stream"]
    for name in ("metadata", "stream_options"):
        if body.get(name) is not None and not isinstance(body[name], dict):
            raise BadRequest(f"'{name}' must be an object.", param=name)
    if body.get("include") is not None and not isinstance(body["include"], list):
        raise BadRequest("'include' must be an array of strings.", param="include")
    return out


def _refuse_stateful(body: Mapping[str, Any]) -> None:
    for name in ("previous_response_id", "conversation"):
        if body.get(name) is not None:
            raise BadRequest(
                f"'{name}' is not supported: the gateway keeps the items of answers, not"
                " responses. Send the conversation in 'input' (earlier answers' items may be"
                " sent as 'item_reference').",
                param=name,
            )
    if body.get("background"):
        raise BadRequest(
            "'background' is not supported: the gateway keeps no responses.", param="background"
        )


def _bool(body: Mapping[str, Any], name: str) -> bool:
    value = body[name]
    if not isinstance(value, bool):
        raise BadRequest(f"'{name}' must be a boolean.", param=name)
    return value


def _input(value: Any, out: Translation) -> None:
    if value is None:
        raise BadRequest("'input' is required.", param="input")
    if isinstance(value, str):
        out.messages.append({"role": "user", "content": value})
        return
    if not isinstance(value, list) or not value:
        raise BadRequest("'input' must be a string or a non-empty array of items.", param="input")
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise BadRequest(f"'{where}' must be an object.", param=where)
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            _message(item, where, out)
        elif kind == "function_call":
            _function_call(item, where, out)
        elif kind == "function_call_output":
            _function_call_output(item, where, out)
        elif kind == "reasoning":
            if not isinstance(item.get("summary", []), list):
                raise BadRequest(f"'{where}.summary' must be an array.", param=f"{where}.summary")
        elif kind in NATIVE_ITEMS:
            out.cannot(f"An input item of type '{kind}'", f"{where}.type")
        else:
            raise BadRequest(f"'{where}.type' {kind!r} is not a known item type.", param=where)


def _message(item: dict[str, Any], where: str, out: Translation) -> None:
    role = item.get("role")
    if role not in ROLES:
        raise BadRequest(
            f"'{where}.role' must be one of {', '.join(sorted(ROLES))}.", param=f"{where}.role"
        )
    content = item.get("content")
    if isinstance(content, str):
        out.messages.append({"role": role, "content": content})
        return
    if not isinstance(content, list):
        raise BadRequest(
            f"'{where}.content' must be a string or an array of content parts.",
            param=f"{where}.content",
        )
    parts = [_part(part, f"{where}.content[{j}]", out) for j, part in enumerate(content)]
    out.messages.append({"role": role, "content": parts})


def _text_of(part: dict[str, Any], key: str, where: str) -> str:
    text = part.get(key)
    if not isinstance(text, str):
        raise BadRequest(f"'{where}.{key}' must be a string.", param=f"{where}.{key}")
    return text


def _part(part: Any, where: str, out: Translation) -> dict[str, Any]:
    """One content part of a message as a chat completions part."""
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        raise BadRequest(f"'{where}' must be an object with a 'type'.", param=where)
    kind = part["type"]
    if kind in ("input_text", "output_text", "text"):
        return {"type": "text", "text": _text_of(part, "text", where)}
    if kind == "refusal":
        return {"type": "refusal", "refusal": _text_of(part, "refusal", where)}
    if kind == "input_image":
        url = part.get("image_url")
        if url is None:
            out.cannot("An image by 'file_id'", where)
            return {"type": "text", "text": ""}
        if not isinstance(url, str):
            raise BadRequest(f"'{where}.image_url' must be a string.", param=f"{where}.image_url")
        image = {"url": url, "detail": part.get("detail") or "auto"}
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        data = part.get("file_data")
        if not isinstance(data, str):
            out.cannot("A file by 'file_id' or 'file_url'", where)
            return {"type": "text", "text": ""}
        file = {"file_data": data, "filename": part.get("filename") or "file"}
        return {"type": "file", "file": file}
    if kind == "input_audio":
        return {"type": "input_audio", "input_audio": part.get("input_audio")}
    raise BadRequest(f"'{where}.type' {kind!r} is not a known content part type.", param=where)


def flat_name(namespace: str | None, name: str) -> str:
    """The chat completions name of a function of a `namespace` tool (or of a plain one)."""
    return f"{namespace}{NAMESPACE_SEPARATOR}{name}" if namespace else name


def _function_call(item: dict[str, Any], where: str, out: Translation) -> None:
    for key in ("call_id", "name", "arguments"):
        _text_of(item, key, where)
    namespace = item.get("namespace")
    call = {
        "id": item["call_id"],
        "type": "function",
        "function": {"name": flat_name(namespace, item["name"]), "arguments": item["arguments"]},
    }
    last = out.messages[-1] if out.messages else None
    # An assistant's text and the calls after it are one assistant turn (parallel calls
    # too), as chat completions has them.
    if last is not None and last["role"] == "assistant":
        last.setdefault("tool_calls", []).append(call)
    else:
        out.messages.append({"role": "assistant", "content": None, "tool_calls": [call]})


def _function_call_output(item: dict[str, Any], where: str, out: Translation) -> None:
    call_id = _text_of(item, "call_id", where)
    output = item.get("output")
    if isinstance(output, list):
        output = [_part(part, f"{where}.output[{j}]", out) for j, part in enumerate(output)]
    elif not isinstance(output, str):
        raise BadRequest(
            f"'{where}.output' must be a string or an array of content parts.",
            param=f"{where}.output",
        )
    out.messages.append({"role": "tool", "tool_call_id": call_id, "content": output})


def _function(tool: dict[str, Any], where: str, namespace: str | None = None) -> dict[str, Any]:
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequest(f"'{where}.name' must be a non-empty string.", param=f"{where}.name")
    function: dict[str, Any] = {"name": flat_name(namespace, name)}
    for key in ("description", "parameters", "strict"):
        if tool.get(key) is not None:
            function[key] = tool[key]
    if "parameters" in function and not isinstance(function["parameters"], dict):
        raise BadRequest(f"'{where}.parameters' must be an object.", param=f"{where}.parameters")
    return {"type": "function", "function": function}


def _tools(tools: Any, out: Translation) -> None:
    if tools is None:
        return
    if not isinstance(tools, list):
        raise BadRequest("'tools' must be an array.", param="tools")
    chat_tools = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            raise BadRequest(f"'{where}' must be an object with a 'type'.", param=where)
        kind = tool["type"]
        if kind == "function":
            chat_tools.append(_function(tool, where))
        elif kind == "namespace":
            chat_tools += _namespace(tool, where, out)
        else:
            out.cannot(f"The built-in tool '{kind}'", f"{where}.type")
    names = [t["function"]["name"] for t in chat_tools]
    if len(set(names)) != len(names):
        raise BadRequest("'tools' name the same function twice.", param="tools")
    if chat_tools:
        out.body["tools"] = chat_tools


def _namespace(tool: dict[str, Any], where: str, out: Translation) -> list[dict[str, Any]]:
    """A `namespace` tool's functions (Codex groups its sub-agent tools so): each becomes a
    function named `<namespace>__<name>`; a call of it is split back (`namespaces`)."""
    namespace = tool.get("name")
    if not isinstance(namespace, str) or not namespace:
        raise BadRequest(f"'{where}.name' must be a non-empty string.", param=f"{where}.name")
    inner = tool.get("tools")
    if not isinstance(inner, list):
        raise BadRequest(f"'{where}.tools' must be an array.", param=f"{where}.tools")
    functions = []
    for j, function in enumerate(inner):
        at = f"{where}.tools[{j}]"
        if not isinstance(function, dict):
            raise BadRequest(f"'{at}' must be an object.", param=at)
        if function.get("type") != "function":
            out.cannot(f"A '{function.get('type')}' tool in a namespace", f"{at}.type")
            continue
        functions.append(_function(function, at, namespace))
    return functions


def namespaces(body: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """The chat name of each function of the request's `namespace` tools: (namespace, name)."""
    found: dict[str, tuple[str, str]] = {}
    tools = body.get("tools")
    for tool in tools if isinstance(tools, list) else ():
        if isinstance(tool, dict) and tool.get("type") == "namespace":
            for function in tool.get("tools") or ():
                if isinstance(function, dict) and isinstance(function.get("name"), str):
                    found[flat_name(tool["name"], function["name"])] = (
                        tool["name"],
                        function["name"],
                    )
    return found


def _tool_choice(choice: Any, out: Translation) -> None:
    if choice is None:
        return
    if isinstance(choice, str):
        if choice not in CHOICES:
            raise BadRequest(
                "'tool_choice' must be auto, none, required or an object.", param="tool_choice"
            )
        out.body["tool_choice"] = choice
        return
    if not isinstance(choice, dict) or not isinstance(choice.get("type"), str):
        raise BadRequest("'tool_choice' must be a string or an object.", param="tool_choice")
    if choice["type"] == "function":
        name = choice.get("name")
        if not isinstance(name, str):
            raise BadRequest("'tool_choice.name' must be a string.", param="tool_choice.name")
        function = {"name": flat_name(choice.get("namespace"), name)}
        out.body["tool_choice"] = {"type": "function", "function": function}
        return
    out.cannot(f"The tool choice '{choice['type']}'", "tool_choice")


def _text(text: Any, out: Translation) -> None:
    if text is None:
        return
    if not isinstance(text, dict):
        raise BadRequest("'text' must be an object.", param="text")
    if text.get("verbosity") is not None:
        out.body["verbosity"] = text["verbosity"]
    fmt = text.get("format")
    if fmt is None:
        return
    if not isinstance(fmt, dict) or fmt.get("type") not in TEXT_FORMATS:
        raise BadRequest(
            "'text.format.type' must be text, json_object or json_schema.", param="text.format"
        )
    if fmt["type"] == "json_object":
        out.body["response_format"] = {"type": "json_object"}
    elif fmt["type"] == "json_schema":
        name, schema = fmt.get("name"), fmt.get("schema")
        if not isinstance(name, str) or not name:
            raise BadRequest("'text.format.name' is required.", param="text.format.name")
        if not isinstance(schema, dict):
            raise BadRequest("'text.format.schema' must be an object.", param="text.format.schema")
        spec = {"name": name, "schema": schema}
        for key in ("strict", "description"):
            if fmt.get(key) is not None:
                spec[key] = fmt[key]
        out.body["response_format"] = {"type": "json_schema", "json_schema": spec}


def _reasoning(reasoning: Any, out: Translation) -> None:
    if reasoning is None:
        return
    if not isinstance(reasoning, dict):
        raise BadRequest("'reasoning' must be an object.", param="reasoning")
    effort = reasoning.get("effort")
    if effort is not None:
        if effort not in EFFORTS:
            raise BadRequest(
                f"'reasoning.effort' must be one of {', '.join(EFFORTS)}.",
                param="reasoning.effort",
            )
        out.body["reasoning_effort"] = effort


def _caps(body: Mapping[str, Any], out: Translation) -> None:
    cap = body.get("max_output_tokens")
    if cap is None:
        return
    if not isinstance(cap, int) or isinstance(cap, bool):
        code = "invalid_type"
    elif cap < MIN_OUTPUT_TOKENS:
        code = "integer_below_min_value"
    elif cap > MAX_OUTPUT_TOKENS:
        code = "integer_above_max_value"
    else:
        code = None
    if code is not None:
        raise BadRequest(
            f"'max_output_tokens' must be an integer from {MIN_OUTPUT_TOKENS} to"
            f" {MAX_OUTPUT_TOKENS}.",
            param="max_output_tokens",
            code=code,
        )
    out.body["max_completion_tokens"] = cap
