"""The fake OpenAI's Responses API (`POST /v1/responses`), in OpenAI's wire format: the
`response` object, or its stream of named events (`event: <type>`, `data: {..., "type",
"sequence_number"}`, no `[DONE]`), as OpenAI's API reference ("Responses", "Streaming
events") and openai-python's types give them.

The scenario is the model's name, as for chat completions (tests/fakes/openai_upstream.py):

    gpt-4o, gpt-4o-mini, gpt-5...  "Hello! How can I help?" (a reasoning item first for
                     gpt-5*: its reasoning tokens counted in the usage)
    tools            a get_weather function call (Paris) when the request has tools, else
                     the answer; with a function_call_output in `input`: "It is sunny."
    json             `text.format` json_schema: a JSON object of its schema's properties
    midstream-error  two text deltas, then `response.failed` (an `error` event first)
    early-error      an `error` event before anything else
    error-<status>   that status with OpenAI's error body

Like OpenAI it refuses (400, its error body): a model it does not serve (404
`model_not_found`), `max_output_tokens` below 16, an unknown input item type, a
`function_call_output` whose call_id no earlier `function_call` has, `previous_response_id`
with `store` false, and a temperature for reasoning models.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import orjson
from aiohttp import web

from tests.fakes import openai_wire as wire

TEXT = ["Hello", "!", " How", " can I", " help?"]
INPUT_TOKENS = 13
OUTPUT_TOKENS = 7
REASONING_TOKENS = 4
SCENARIOS = frozenset(
    {
        "gpt-4o",
        "gpt-4o-mini",
        "tools",
        "json",
        "midstream-error",
        "early-error",
        "gpt-5",
        "gpt-5-mini",
        "gated",  # answers as gpt-4o once the test sets the fake's `record.gate`
    }
)
ITEM_TYPES = frozenset(
    {
        "message",
        "function_call",
        "function_call_output",
        "reasoning",
        "item_reference",
        "web_search_call",
        "file_search_call",
        "computer_call",
        "computer_call_output",
    }
)


def served(model: str) -> bool:
    return model in SCENARIOS or model.startswith("error-")


def refusal(body: dict[str, Any]) -> web.Response | None:
    """What OpenAI's Responses API refuses in `body`, as its answer; else None."""
    model = body.get("model")
    if not isinstance(model, str) or not served(model):
        message = f"The model `{model}` does not exist or you do not have access to it."
        return wire.error(404, message, "invalid_request_error", "model", "model_not_found")
    cap = body.get("max_output_tokens")
    if cap is not None and (not isinstance(cap, int) or cap < 16):
        return wire.invalid(
            f"Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 16,"
            f" but got {cap} instead.",
            "max_output_tokens",
            "integer_below_min_value",
        )
    if model.startswith("gpt-5") and body.get("temperature") not in (None, 1, 1.0):
        return wire.invalid(
            "Unsupported parameter: 'temperature' is not supported with this model.",
            "temperature",
            "unsupported_parameter",
        )
    if body.get("previous_response_id") and body.get("store") is False:
        return wire.invalid(
            "Previous response cannot be used when store is false.", "previous_response_id"
        )
    return _input_refusal(body.get("input"))


def _input_refusal(items: Any) -> web.Response | None:
    if isinstance(items, str):
        return None
    if not isinstance(items, list):
        return wire.invalid("Invalid type for 'input'.", "input", "invalid_type")
    calls: set[str] = set()
    for i, item in enumerate(items):
        kind = item.get("type", "message") if isinstance(item, dict) else None
        if kind not in ITEM_TYPES:
            return wire.invalid(f"Invalid value: '{kind}'.", f"input[{i}].type", "invalid_value")
        if kind == "function_call":
            calls.add(item.get("call_id"))
        if kind == "function_call_output" and item.get("call_id") not in calls:
            return wire.invalid(
                f"No tool call found for function call output with call_id {item.get('call_id')}.",
                "input",
            )
    return None


class Answer:
    """One answer: its response object built up as the events go."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        self.model = body["model"]
        self.sequence = 0
        self.response: dict[str, Any] = {
            "id": "resp_fake0123456789",
            "object": "response",
            "created_at": wire.CREATED,
            "status": "in_progress",
            "background": False,
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "model": self.model,
            "output": [],
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "store": body.get("store", True),
            "temperature": body.get("temperature", 1.0),
            "text": body.get("text") or {"format": {"type": "text"}},
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": None,
            "user": None,
            "metadata": {},
        }

    def event(self, kind: str, **data: Any) -> bytes:
        data = {"type": kind, "sequence_number": self.sequence, **data}
        self.sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    def items(self) -> list[dict[str, Any]]:
        """The output items of the scenario, whole."""
        model, items = self.model, []
        if model.startswith("gpt-5"):
            items.append({"id": "rs_fake1", "type": "reasoning", "summary": []})
        if model == "tools" and self.body.get("tools") and not _answered(self.body):
            items.append(
                {
                    "id": "fc_fake1",
                    "type": "function_call",
                    "status": "completed",
                    "call_id": "call_fake1",
                    "name": "get_weather",
                    "arguments": '{"city":"Paris"}',
                }
            )
            return items
        text = "".join(TEXT)
        if model == "tools":
            text = "It is sunny."
        elif model == "json":
            schema = self.body["text"]["format"]["schema"]
            text = json.dumps({name: _sample(spec) for name, spec in schema["properties"].items()})
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        items.append(
            {
                "id": "msg_fake1",
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [part],
            }
        )
        return items

    def usage(self) -> dict[str, Any]:
        reasoning = REASONING_TOKENS if self.model.startswith("gpt-5") else 0
        return {
            "input_tokens": INPUT_TOKENS,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": OUTPUT_TOKENS + reasoning,
            "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": INPUT_TOKENS + OUTPUT_TOKENS + reasoning,
        }

    def whole(self) -> dict[str, Any]:
        return {
            **self.response,
            "status": "completed",
            "output": self.items(),
            "usage": self.usage(),
        }

    def events(self) -> list[bytes]:
        """The stream's events; `midstream-error` ends with a failure after two deltas."""
        out = [
            self.event("response.created", response=self.response),
            self.event("response.in_progress", response=self.response),
        ]
        if self.model == "early-error":
            return [
                self.event("error", code="server_error", message="The model failed.", param=None)
            ]
        for index, item in enumerate(self.items()):
            out += self.item_events(index, item)
            if self.model == "midstream-error":
                return out
        out.append(self.event("response.completed", response=self.whole()))
        return out

    def item_events(self, index: int, item: dict[str, Any]) -> list[bytes]:
        where = {"item_id": item["id"], "output_index": index}
        if item["type"] == "function_call":
            added = {**item, "status": "in_progress", "arguments": ""}
            return [
                self.event("response.output_item.added", output_index=index, item=added),
                self.event(
                    "response.function_call_arguments.delta", **where, delta=item["arguments"]
                ),
                self.event(
                    "response.function_call_arguments.done", **where, arguments=item["arguments"]
                ),
                self.event("response.output_item.done", output_index=index, item=item),
            ]
        if item["type"] != "message":
            return [
                self.event("response.output_item.added", output_index=index, item=item),
                self.event("response.output_item.done", output_index=index, item=item),
            ]
        part = item["content"][0]
        empty = {**part, "text": ""}
        out = [
            self.event(
                "response.output_item.added",
                output_index=index,
                item={**item, "status": "in_progress", "content": []},
            ),
            self.event("response.content_part.added", **where, content_index=0, part=empty),
        ]
        pieces = TEXT if part["text"] == "".join(TEXT) else [part["text"]]
        for i, piece in enumerate(pieces):
            out.append(
                self.event(
                    "response.output_text.delta", **where, content_index=0, delta=piece, logprobs=[]
                )
            )
            if self.model == "midstream-error" and i == 1:
                error = {"code": "server_error", "message": "The model crashed."}
                failed = {**self.response, "status": "failed", "error": error}
                return [
                    *out,
                    self.event("error", param=None, **error),
                    self.event("response.failed", response=failed),
                ]
        return [
            *out,
            self.event(
                "response.output_text.done",
                **where,
                content_index=0,
                text=part["text"],
                logprobs=[],
            ),
            self.event("response.content_part.done", **where, content_index=0, part=part),
            self.event("response.output_item.done", output_index=index, item=item),
        ]


def _answered(body: dict[str, Any]) -> bool:
    items = body.get("input")
    return isinstance(items, list) and any(
        isinstance(i, dict) and i.get("type") == "function_call_output" for i in items
    )


def _sample(spec: Any) -> Any:
    kind = spec.get("type") if isinstance(spec, dict) else None
    return {"integer": 42, "number": 1.5, "boolean": True, "array": []}.get(kind, "Paris")


async def respond(request: web.BaseRequest, body: dict[str, Any]) -> web.StreamResponse:
    """Answer `POST /v1/responses` (the body already read and recorded)."""
    refused = refusal(body)
    if refused is not None:
        return refused
    model = body["model"]
    if model.startswith("error-"):
        status = int(model.removeprefix("error-"))
        kind = "server_error" if status >= 500 else "invalid_request_error"
        return wire.error(status, f"The server answered {status}.", kind)
    answer = Answer(body)
    if not body.get("stream"):
        return web.json_response(answer.whole())
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for data in answer.events():
        await resp.write(data)
        await asyncio.sleep(0)
    return resp
