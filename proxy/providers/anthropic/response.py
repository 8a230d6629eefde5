"""Anthropic's answer -> OpenAI's: finish reasons and usage (an answer's and a stream's).

Anthropic's stop reasons map to OpenAI's finish reasons (FINISH_REASONS; a response_format
answer, given as a tool call, finishes "stop"). Anthropic's `input_tokens` leaves out the
tokens read from and written to the prompt cache, which it counts apart; OpenAI's
`prompt_tokens` includes them, so the prompt count is their sum.

Sources (Anthropic's documentation, platform.claude.com/docs/en/...): the Messages API
reference (`api/messages`: `stop_reason`, `usage`), handling stop reasons
(`build-with-claude/handling-stop-reasons`), prompt caching
(`build-with-claude/prompt-caching`: `cache_read_input_tokens`,
`cache_creation_input_tokens`).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from proxy.core import Usage

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

INPUT_FIELDS = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")


def finish_reason(stop_reason: Any) -> str:
    return FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def input_tokens(usage: dict[str, Any]) -> int:
    """Anthropic's input count leaves out cached tokens; OpenAI's prompt count includes them."""
    return sum(v for name in INPUT_FIELDS if isinstance(v := usage.get(name), int))


def usage_from(payload: Any) -> Usage | None:
    if not isinstance(payload, dict) or not isinstance(payload.get("output_tokens"), int):
        return None
    return Usage(input_tokens(payload), payload["output_tokens"])


def completion_from(
    payload: dict[str, Any], answer: str | None
) -> tuple[dict[str, Any], Usage | None]:
    """An Anthropic message (its `content` a list) as an OpenAI completion, and its usage;
    `answer` names response_format's tool, whose input is the content."""
    message, answered = _message(payload["content"], answer)
    stop = payload.get("stop_reason")
    only_answered = stop == "tool_use" and answered and "tool_calls" not in message
    completion: dict[str, Any] = {
        "created": int(time.time()),  # the gateway stamps only streams' chunks with it
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": "stop" if only_answered else finish_reason(stop),
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


def _message(content: list[Any], answer: str | None) -> tuple[dict[str, Any], bool]:
    """The assistant message of an answer's content blocks, and whether response_format's
    tool was called (its input is then the message's content)."""
    answered = False
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in content:
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
    return message, answered
