"""Every chat answer the gateway gives, checked against the official openai SDK's types.

`check_completion` and `check_chunks` validate strictly (pydantic strict mode: no coercion, a
string where an int belongs fails) against `openai.types.chat.ChatCompletion` and
`ChatCompletionChunk`, and check what the types alone allow but clients trip on: a delta with
a null-valued key (the openai SDK's `delta.content` of a reasoning chunk printed "None"), and
streamed tool-call arguments that do not add up to JSON.
"""

from __future__ import annotations

from typing import Any

import orjson
from openai.types.chat import ChatCompletion, ChatCompletionChunk


def _no_nulls(value: Any, where: str) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            assert item is not None, f"{where}.{key} is null"
            _no_nulls(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _no_nulls(item, f"{where}[{i}]")


def check_completion(body: dict[str, Any]) -> ChatCompletion:
    """A non-stream answer: a strict `ChatCompletion`, each tool call's arguments JSON."""
    completion = ChatCompletion.model_validate(body, strict=True)
    assert completion.id.startswith("woozlit-"), completion.id
    assert completion.model.startswith("woozlit/"), completion.model
    for choice in completion.choices:
        for call in choice.message.tool_calls or ():
            orjson.loads(call.function.arguments)  # type: ignore[union-attr]
    return completion


def check_chunks(chunks: list[dict[str, Any]]) -> list[ChatCompletionChunk]:
    """A stream's chunks (the JSON of each `data:` event but `[DONE]`): each a strict
    `ChatCompletionChunk`, no delta with a null-valued key, one id and model throughout, and
    each tool call's streamed arguments adding up to JSON."""
    parsed = []
    arguments: dict[tuple[int, int], str] = {}
    for i, chunk in enumerate(chunks):
        assert "error" not in chunk, chunk
        parsed.append(ChatCompletionChunk.model_validate(chunk, strict=True))
        for choice in chunk["choices"]:
            _no_nulls(choice["delta"], f"chunks[{i}].delta")
            for call in choice["delta"].get("tool_calls") or ():
                key = (choice["index"], call["index"])
                arguments[key] = arguments.get(key, "") + call.get("function", {}).get(
                    "arguments", ""
                )
    assert len({c.id for c in parsed}) <= 1, "one id per stream"
    assert len({c.model for c in parsed}) <= 1, "one model per stream"
    for key, text in arguments.items():
        try:
            orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise AssertionError(f"tool call {key}: arguments {text!r} are not JSON") from exc
    return parsed


def sse_chunks(body: bytes) -> list[dict[str, Any]]:
    """The JSON of each `data:` event of an SSE body, up to `[DONE]` (which must end it)."""
    events = [line[6:] for line in body.split(b"\n") if line.startswith(b"data: ")]
    assert events and events[-1] == b"[DONE]", events[-1:]
    return [orjson.loads(e) for e in events[:-1]]


def stream_chunks(body: bytes) -> list[dict[str, Any]]:
    """The JSON of each `data:` event of an SSE body, up to `[DONE]` or an error event (a
    stream that failed after it began: what came before it must still be valid)."""
    chunks = []
    for line in body.split(b"\n"):
        if not line.startswith(b"data: "):
            continue
        data = line[6:]
        if data == b"[DONE]":
            break
        chunk = orjson.loads(data)
        if "error" in chunk:
            break
        chunks.append(chunk)
    return chunks
