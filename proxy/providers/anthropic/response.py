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

from typing import Any

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
