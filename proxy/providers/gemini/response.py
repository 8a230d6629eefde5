"""Gemini's answer -> OpenAI's: candidates as choices, finish reasons, usage.

Each candidate is a choice, by its `index` (proto3 JSON leaves out a zero index); thought
parts are left out; function calls get fresh ids that carry their thought signatures
(calls.py). A prompt blocked before any candidate (`promptFeedback.blockReason`) is `n`
empty choices finished "content_filter". Finish reasons: STOP is "stop" (or "tool_calls" when
the candidate called a tool), MAX_TOKENS "length", the safety and recitation reasons
"content_filter". Usage: the prompt count with the tool-use prompt tokens, and thinking
tokens billed as completion tokens.

Sources: Gemini API reference, GenerateContentResponse
(ai.google.dev/api/generate-content#generatecontentresponse: `candidates`, `promptFeedback`,
`usageMetadata` and its counts) and FinishReason (ai.google.dev/api/generate-content#FinishReason).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from proxy.core import ChatRequest, Usage
from proxy.errors import UpstreamError
from proxy.providers.gemini.calls import ToolNames, call_id, tool_names
from proxy.providers.gemini.request import candidate_count

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


def candidate_output(
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
                    "id": call_id(part.get("thoughtSignature")),
                    "type": "function",
                    "function": {
                        "name": names.openai(str(call.get("name") or "")),
                        "arguments": orjson.dumps(call.get("args") or {}).decode(),
                    },
                }
            )
    return "".join(texts), calls


def blocked(payload: dict[str, Any]) -> bool:
    feedback = payload.get("promptFeedback")
    return isinstance(feedback, dict) and bool(feedback.get("blockReason"))


def completion_from(
    payload: dict[str, Any], chat: ChatRequest
) -> tuple[dict[str, Any], Usage | None]:
    """A GenerateContentResponse (not an error) as an OpenAI completion, and its usage."""
    usage = usage_from(payload.get("usageMetadata"))
    choices = _choices(payload, tool_names(chat.body))
    if not choices:
        if not blocked(payload):
            raise UpstreamError("The upstream provider sent an answer with no candidates.")
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": ""},
                "finish_reason": "content_filter",
                "logprobs": None,
            }
            for i in range(candidate_count(chat.body))
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


def _choices(payload: dict[str, Any], names: ToolNames) -> list[dict[str, Any]]:
    """A choice per candidate, in the order they came."""
    choices = []
    for candidate in payload.get("candidates") or ():
        if not isinstance(candidate, dict):
            continue
        text, calls = candidate_output(candidate, names)
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
    return choices
