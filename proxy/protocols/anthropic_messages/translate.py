"""A Messages API request -> an OpenAI chat completions body, for the providers that do not
speak Messages (OpenAI, DeepSeek, Gemini); a Claude deployment gets the request as sent.

The chat body is what those providers translate from (each to its own upstream), and what
`validate_chat` checks and estimates, so the hold, the cap and the checks are the ones chat
completions has.

Mapped:
- `system` (a string or text blocks) -> a first `system` message; a `system` turn inside
  `messages` -> a `system` message in its place.
- user content: `text` -> a text part; `image` -> an `image_url` part (a base64 source as a
  data: URL, a url source as is); `document` with a base64 PDF -> a `file` part (a data:
  URL), with a plain-text source -> a text part; `tool_result` -> a `tool` message (its text
  and its `is_error` as an "Error: " prefix), placed before the rest of the user turn, as
  OpenAI wants tool messages right after the assistant's calls.
- assistant content: text blocks -> `content`; `tool_use` -> `tool_calls` (its `input` as
  JSON arguments).
- custom tools -> function tools (`input_schema` as `parameters`); `tool_choice` auto ->
  "auto", any -> "required", tool -> the named function, none -> "none";
  `disable_parallel_tool_use` -> `parallel_tool_calls: false`.
- `max_tokens`, `temperature`, `top_p`, `stop_sequences` (as `stop`), `stream` (with
  `stream_options.include_usage`: the answer's usage comes from the last chunk);
  `output_config.format` of type json_schema -> `response_format` json_schema.

Ignored, as Anthropic-only settings that do not change the answer's shape: `cache_control`
(on any block), `thinking` and `thinking`/`redacted_thinking` blocks of earlier turns (their
signatures mean nothing to another provider), `context_management`, `output_config.effort`,
`top_k` (no OpenAI equivalent), `metadata`, `service_tier`, `container`, `citations`.

Refused with a 400 naming the field, never dropped: server tools (a `tools` entry with a
versioned `type`: web search, bash, text editor, code execution, computer use...), and
`mcp_servers` (Anthropic runs them); content blocks the providers cannot take (documents by
URL or file id, images in tool results, server tool blocks, search results, files by id).

Sources (platform.claude.com/docs/en/...): the Messages API reference (`api/messages`),
tool use (`agents-and-tools/tool-use/overview`: client and server tools, tool results);
OpenAI's chat completions reference (platform.openai.com/docs/api-reference/chat/create:
message roles, content parts, `tool_choice`, `parallel_tool_calls`, `response_format`).
"""

from __future__ import annotations

from typing import Any

import orjson

from proxy.errors import BadRequest


def untranslatable(what: str, param: str) -> BadRequest:
    return BadRequest(
        f"{param}: {what} is served by Claude models only; this model's deployments do not"
        " speak Anthropic's Messages API.",
        param=param,
    )


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """The chat completions body for a checked Messages `body` (request.check_body); raises
    BadRequest naming what has no translation."""
    chat: dict[str, Any] = {"model": body["model"], "messages": _messages(body)}
    if body.get("max_tokens") is not None:
        chat["max_tokens"] = body["max_tokens"]
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            chat[name] = body[name]
    if body.get("stop_sequences"):
        chat["stop"] = body["stop_sequences"]
    if body.get("mcp_servers"):
        raise untranslatable("an MCP server", "mcp_servers")
    tools = [_tool(tool, f"tools.{i}") for i, tool in enumerate(body.get("tools") or ())]
    if tools:
        chat["tools"] = tools
        _tool_choice(chat, body.get("tool_choice"))
    elif isinstance(body.get("tool_choice"), dict) and body["tool_choice"]["type"] != "auto":
        chat["tool_choice"] = "none" if body["tool_choice"]["type"] == "none" else "required"
    _response_format(chat, body.get("output_config"))
    stream = body.get("stream") is True
    chat["stream"] = stream
    if stream:
        chat["stream_options"] = {"include_usage": True}
    return chat


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    system = body.get("system")
    if system:
        out.append({"role": "system", "content": _text(system)})
    for i, message in enumerate(body["messages"]):
        role, content, where = message["role"], message["content"], f"messages.{i}.content"
        if role == "system":
            out.append({"role": "system", "content": _text(content)})
        elif role == "assistant":
            out.append(_assistant(content, where))
        elif isinstance(content, str):
            out.append({"role": "user", "content": content})
        else:
            out += _user(content, where)
    return out


def _text(content: Any) -> str:
    """The text of a string or of text blocks (system prompts: no other block is allowed)."""
    if isinstance(content, str):
        return content
    return "\n\n".join(b["text"] for b in content if b.get("type") == "text")


def _assistant(content: Any, where: str) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        kind = block["type"]
        if kind == "text":
            texts.append(block["text"])
        elif kind == "tool_use":
            arguments = orjson.dumps(block["input"]).decode()
            function = {"name": block["name"], "arguments": arguments}
            calls.append({"id": block["id"], "type": "function", "function": function})
        elif kind not in ("thinking", "redacted_thinking"):
            raise untranslatable(f"a '{kind}' block", f"{where}.{j}")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        message["tool_calls"] = calls
    elif message["content"] is None:
        message["content"] = ""
    return message


def _user(content: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    """A user turn: its tool results as `tool` messages, then the rest as one user message."""
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        if block["type"] == "tool_result":
            results.append(_tool_result(block, f"{where}.{j}"))
        else:
            parts.append(_part(block, f"{where}.{j}"))
    if parts:
        return [*results, {"role": "user", "content": parts}]
    return results


def _tool_result(block: dict[str, Any], where: str) -> dict[str, Any]:
    content = block.get("content")
    if isinstance(content, list):
        texts = []
        for k, part in enumerate(content):
            if part["type"] != "text":
                raise untranslatable(f"a '{part['type']}' block in a tool result", f"{where}.{k}")
            texts.append(part["text"])
        text = "\n\n".join(texts)
    else:
        text = content or ""
    if block.get("is_error") is True:
        text = "Error: " + text
    return {"role": "tool", "tool_call_id": block["tool_use_id"], "content": text}


def _part(block: dict[str, Any], where: str) -> dict[str, Any]:
    kind = block["type"]
    if kind == "text":
        return {"type": "text", "text": block["text"]}
    source = block.get("source") or {}
    source_type = source.get("type")
    if kind == "image" and source_type == "base64":
        url = f"data:{source.get('media_type')};base64,{source.get('data')}"
        return {"type": "image_url", "image_url": {"url": url}}
    if kind == "image" and source_type == "url":
        return {"type": "image_url", "image_url": {"url": source.get("url")}}
    if kind == "document" and source_type == "base64":
        data = f"data:{source.get('media_type')};base64,{source.get('data')}"
        return {"type": "file", "file": {"filename": "document.pdf", "file_data": data}}
    if kind == "document" and source_type == "text" and isinstance(source.get("data"), str):
        return {"type": "text", "text": source["data"]}
    what = f"a '{kind}' block" + (f" with a '{source_type}' source" if source_type else "")
    raise untranslatable(what, where)


def is_server_tool(tool: dict[str, Any]) -> bool:
    """Whether a `tools` entry is one Anthropic runs (a versioned `type`: web search, code
    execution...), not the client's own (no `type`, or `custom`)."""
    return tool.get("type") not in (None, "custom")


def _tool(tool: dict[str, Any], where: str) -> dict[str, Any]:
    if is_server_tool(tool):
        raise untranslatable(f"the server tool '{tool['name']}' ({tool['type']})", where)
    function: dict[str, Any] = {"name": tool["name"], "parameters": tool["input_schema"]}
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _tool_choice(chat: dict[str, Any], choice: Any) -> None:
    if not isinstance(choice, dict):
        return
    kind = choice["type"]
    if kind == "tool":
        chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        chat["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[kind]
    if choice.get("disable_parallel_tool_use") is True:
        chat["parallel_tool_calls"] = False


def _response_format(chat: dict[str, Any], config: Any) -> None:
    """`output_config.format` (Anthropic's structured outputs) as OpenAI's `response_format`."""
    form = config.get("format") if isinstance(config, dict) else None
    if not isinstance(form, dict) or form.get("type") != "json_schema":
        return
    if not isinstance(form.get("schema"), dict):
        raise BadRequest(
            "output_config.format.schema: Input should be an object",
            param="output_config.format.schema",
        )
    spec = {"name": "output", "schema": form["schema"]}
    chat["response_format"] = {"type": "json_schema", "json_schema": spec}
