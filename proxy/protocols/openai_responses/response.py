"""The Responses `response` object: translated from a chat completion, or the native one
stamped with the gateway's id and the public model name.

Shape from OpenAI's API reference, "The response object"
(platform.openai.com/docs/api-reference/responses/object) and openai-python's
`openai.types.responses.Response`:

- `id` is the gateway's request id (`woozlit-...`) in both paths, as chat completions has
  it (interface: "Response `id` is `woozlit-<unique>`"); item ids are the provider's when
  native, else `msg_`, `fc_`, `rs_` + that id's hex and the item's place.
- `output`: a `reasoning` item for a DeepSeek answer's `reasoning_content` (as
  `content: [{type: reasoning_text}]`, the Responses API's raw reasoning text, with no
  summary), a `message` item with one `output_text` part (`annotations: []`) or a `refusal`
  part, then one `function_call` item per tool call (call_id = the chat call's id; a
  `namespace` tool's function split back into `namespace` and `name`).
- `status`: `completed`, or `incomplete` with `incomplete_details.reason`
  `max_output_tokens` (finish_reason `length`) or `content_filter`.
- `usage`: input_tokens (with `input_tokens_details.cached_tokens` when the provider said),
  output_tokens (with `output_tokens_details.reasoning_tokens`), total_tokens: the charge.
- `store`: whether the answer's items are kept for `item_reference` (items.py).
"""

from __future__ import annotations

import time
from typing import Any

from proxy.core import ChatRequest, Usage
from proxy.protocols.openai_responses.items import stored
from proxy.protocols.openai_responses.request import namespaces

INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def response_object(
    chat: ChatRequest, rid: str, status: str, output: list[dict[str, Any]]
) -> dict[str, Any]:
    """A `response` object for the client's request (its settings echoed, as OpenAI does)."""
    native = chat.native
    body = native.body if native is not None else {}
    reasoning = _object(body.get("reasoning"))
    text = _object(body.get("text"))
    return {
        "id": rid,
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": chat.public_model,
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "store": stored(chat),
        "temperature": chat.body.get("temperature"),
        "text": {"format": text.get("format") or {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation") or "disabled",
        "usage": None,
        "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }


def usage_object(usage: Usage, details: Any = None) -> dict[str, Any]:
    """Responses usage for the charge `usage`; `details`: the chat completion's usage, for
    its cached and reasoning token counts."""
    details = details if isinstance(details, dict) else {}
    prompt = details.get("prompt_tokens_details")
    completion = details.get("completion_tokens_details")
    cached = prompt.get("cached_tokens") if isinstance(prompt, dict) else None
    reasoning = completion.get("reasoning_tokens") if isinstance(completion, dict) else None
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {
            "cached_tokens": cached if isinstance(cached, int) else 0,
            "cache_write_tokens": 0,
        },
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {
            "reasoning_tokens": reasoning if isinstance(reasoning, int) else 0
        },
        "total_tokens": usage.total_tokens,
    }


def item_id(prefix: str, rid: str, index: int) -> str:
    """An output item's id: `msg_`, `fc_` or `rs_`, the request id's hex, its place."""
    return f"{prefix}_{rid.removeprefix('woozlit-')}{index:02d}"


def message_item(rid: str, index: int, text: str | None, refusal: str | None) -> dict[str, Any]:
    part: dict[str, Any]
    if refusal:
        part = {"type": "refusal", "refusal": refusal}
    else:
        part = {"type": "output_text", "text": text or "", "annotations": [], "logprobs": []}
    return {
        "id": item_id("msg", rid, index),
        "type": "message",
        "status": "completed",
        "role": "assistant",
        "content": [part],
    }


def reasoning_item(rid: str, index: int, text: str) -> dict[str, Any]:
    return {
        "id": item_id("rs", rid, index),
        "type": "reasoning",
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}],
    }


def call_item(
    rid: str, index: int, call_id: str, name: str, arguments: str, names: dict[str, Any]
) -> dict[str, Any]:
    item = {
        "id": item_id("fc", rid, index),
        "type": "function_call",
        "status": "completed",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }
    if name in names:
        item["namespace"], item["name"] = names[name]
    return item


def translated_response(
    payload: dict[str, Any], usage: Usage, chat: ChatRequest, rid: str
) -> dict[str, Any]:
    """A chat completion (one choice) as a `response` object."""
    choices = payload.get("choices") or [{}]
    choice = _object(choices[0])
    message = _object(choice.get("message"))
    names = namespaces(chat.native.body) if chat.native is not None else {}
    output: list[dict[str, Any]] = []
    reasoning = message.get("reasoning_content")
    if isinstance(reasoning, str) and reasoning:
        output.append(reasoning_item(rid, len(output), reasoning))
    content, refusal = message.get("content"), message.get("refusal")
    if (isinstance(content, str) and content) or (isinstance(refusal, str) and refusal):
        output.append(message_item(rid, len(output), content, refusal))
    for call in message.get("tool_calls") or ():
        function = _object(call.get("function"))
        output.append(
            call_item(
                rid,
                len(output),
                str(call.get("id") or ""),
                str(function.get("name") or ""),
                str(function.get("arguments") or ""),
                names,
            )
        )
    incomplete = INCOMPLETE.get(str(choice.get("finish_reason")))
    response = response_object(chat, rid, "incomplete" if incomplete else "completed", output)
    if incomplete:
        response["incomplete_details"] = {"reason": incomplete}
    response["usage"] = usage_object(usage, payload.get("usage"))
    return response


def _object(value: Any) -> dict[str, Any]:
    """`value` if it is a JSON object, else an empty one."""
    return value if isinstance(value, dict) else {}
