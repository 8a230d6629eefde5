"""The startup checks of the Messages and Responses phases: before any load, each target
answers one non-stream request and one paced stream of each protocol, checked in full.

What the fake upstream sends (tests/fakes/fast.py) is what the client must get, event for
event: the Messages phases go to a Claude deployment and the Responses phases to an OpenAI
one with `responses_api`, both served natively by the gateway (the request and the events
pass through; usage is read for accounting). So the checks ask for the upstream's answer,
its events in their order (Anthropic's `ping` may come more often: a keep-alive), every
delta's send stamp, the upstream's usage and, for the Responses API, `sequence_number`
from 0 without a gap. `id` and `model` are not compared: a gateway may put its own.
Each failure is a RuntimeError that says what came instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
from loadgen import T_IN_CONTENT, Protocol, Target

# The fake upstream's answers (tests/fakes/fast.py).
TEXT = "Hello from the fake upstream."
INPUT_TOKENS = 9
OUTPUT_TOKENS = 7  # of the non-stream answer; a stream's are its chunks


def named_events(text: str) -> list[tuple[str | None, Any]]:
    """The events of an SSE body as (the `event:` line's type, the `data:` JSON); comments
    and blank blocks left out. Raises RuntimeError on data that is not JSON."""
    events: list[tuple[str | None, Any]] = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if not lines:
            continue
        name = next((line[6:].strip() for line in lines if line.startswith("event:")), None)
        data = "\n".join(line[5:].lstrip() for line in lines if line.startswith("data:"))
        try:
            events.append((name, orjson.loads(data)))
        except orjson.JSONDecodeError:
            raise RuntimeError(f"an event whose data is not JSON: {block[:200]!r}") from None
    return events


def expect(condition: bool, what: str, got: object) -> None:
    if not condition:
        raise RuntimeError(f"{what}; got {str(got)[:400]}")


def check_messages_json(payload: Any) -> None:
    """A `message` (Anthropic's API reference, "Messages"), the upstream's text and usage."""
    expect(isinstance(payload, dict) and payload.get("type") == "message", "not a message", payload)
    expect(payload.get("content") == [{"type": "text", "text": TEXT}], "not the text", payload)
    usage = payload.get("usage") or {}
    expect(
        usage.get("input_tokens") == INPUT_TOKENS and usage.get("output_tokens") == OUTPUT_TOKENS,
        f"usage is not the upstream's ({INPUT_TOKENS} in, {OUTPUT_TOKENS} out)",
        usage,
    )


def check_messages_stream(events: list[tuple[str | None, Any]], chunks: int) -> None:
    """Anthropic's event flow ("Streaming Messages"): message_start, content_block_start,
    the deltas, content_block_stop, message_delta, message_stop; every event's `type` its
    `event:` line; the upstream's usage in message_start and message_delta."""
    for name, data in events:
        expect(isinstance(data, dict) and data.get("type") == name, "type differs", (name, data))
    flow = [name for name, _ in events if name != "ping"]
    want = [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * chunks,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    expect(flow == want, "not the upstream's events (pings aside)", flow)
    start = next(data for name, data in events if name == "message_start")
    expect(
        start["message"].get("usage", {}).get("input_tokens") == INPUT_TOKENS,
        f"message_start: input_tokens is not the upstream's {INPUT_TOKENS}",
        start,
    )
    delta = next(data for name, data in events if name == "message_delta")
    expect(
        delta.get("usage", {}).get("output_tokens") == chunks,
        f"message_delta: output_tokens is not the upstream's {chunks}",
        delta,
    )
    texts = [
        data["delta"].get("text", "") for name, data in events if name == "content_block_delta"
    ]
    stamped = sum(1 for text in texts if T_IN_CONTENT.fullmatch(text.encode()))
    expect(stamped == chunks, f"{stamped} of {chunks} deltas came with their stamp", texts)


def check_responses_json(payload: Any) -> None:
    """A `response` (OpenAI's API reference, "Responses"), completed, with the upstream's
    text and usage."""
    expect(
        isinstance(payload, dict) and payload.get("object") == "response", "not a response", payload
    )
    expect(payload.get("status") == "completed", "not completed", payload)
    output = payload.get("output") or [{}]
    content = output[0].get("content") or [{}]
    expect(content[0].get("text") == TEXT, "not the text", output)
    check_responses_usage(payload.get("usage"), OUTPUT_TOKENS)


def check_responses_usage(usage: Any, output_tokens: int) -> None:
    usage = usage if isinstance(usage, dict) else {}
    expect(
        usage.get("input_tokens") == INPUT_TOKENS and usage.get("output_tokens") == output_tokens,
        f"usage is not the upstream's ({INPUT_TOKENS} in, {output_tokens} out)",
        usage,
    )


def check_responses_stream(events: list[tuple[str | None, Any]], chunks: int) -> None:
    """The Responses API's event flow ("Streaming events") for one text answer, each event's
    `type` its `event:` line, `sequence_number` 0, 1, 2..., the deltas' text the text of the
    closing events, and the upstream's usage in response.completed."""
    for name, data in events:
        expect(isinstance(data, dict) and data.get("type") == name, "type differs", (name, data))
    flow = [name for name, _ in events]
    want = [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * chunks,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    expect(flow == want, "not the upstream's events", flow)
    numbers = [data.get("sequence_number") for _, data in events]
    expect(numbers == list(range(len(events))), "sequence_number is not 0, 1, 2...", numbers)
    deltas = [data["delta"] for name, data in events if name == "response.output_text.delta"]
    stamped = sum(1 for text in deltas if T_IN_CONTENT.fullmatch(text.encode()))
    expect(stamped == chunks, f"{stamped} of {chunks} deltas came with their stamp", deltas)
    done = next(data for name, data in events if name == "response.output_text.done")
    expect(done.get("text") == "".join(deltas), "output_text.done: not the deltas' text", done)
    completed = events[-1][1]["response"]
    check_responses_usage(completed.get("usage"), chunks)


CHECKS: dict[str, tuple[Callable[[Any], None], Callable[[list, int], None]]] = {
    "messages": (check_messages_json, check_messages_stream),
    "responses": (check_responses_json, check_responses_stream),
}


async def check_protocol(
    s: aiohttp.ClientSession, target: Target, protocol: Protocol, chunks: int
) -> None:
    """One non-stream request and one paced stream of `protocol` (messages, responses) to
    `target`, checked as above. Raises RuntimeError naming the request and what is wrong."""
    check_json, check_stream = CHECKS[protocol.name]
    url = f"http://{target.host}:{target.port}{protocol.path}"
    headers = {"Content-Type": "application/json", **protocol.auth(target.key)}
    async with s.post(url, data=protocol.body(protocol.model, False), headers=headers) as r:
        text = await r.text()
        if r.status != 200 or r.content_type != "application/json":
            raise RuntimeError(f"non-stream request: {r.status} {r.content_type} {text[:300]}")
    try:
        check_json(orjson.loads(text))
    except (RuntimeError, orjson.JSONDecodeError) as exc:
        raise RuntimeError(f"non-stream request: {exc}") from None
    data = protocol.body(protocol.paced_model, True)
    async with s.post(url, data=data, headers=headers) as r:
        text = await r.text()
        if r.status != 200 or r.content_type != "text/event-stream":
            raise RuntimeError(f"stream request: {r.status} {r.content_type} {text[:300]}")
    try:
        check_stream(named_events(text), chunks)
    except (RuntimeError, KeyError, TypeError, AttributeError, StopIteration) as exc:
        raise RuntimeError(f"paced stream: {exc!r}: ...{text[-300:]!r}") from None
