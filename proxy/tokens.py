"""Token estimates, for holds before a request and for upstreams that report no usage.

About four characters a token for English text with the GPT and Claude tokenizers; the
estimate leans high on purpose (a hold that is too small lets a quota be overspent), and
every message costs a few tokens of framing as in OpenAI's own counting guide.
"""

from __future__ import annotations

from typing import Any

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4
TOKENS_PER_REQUEST = 3


def estimate_text_tokens(chars: int) -> int:
    return (chars + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


def _content_chars(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    total += len(text)
                elif part.get("type") in ("image_url", "input_image", "image"):
                    total += 85 * CHARS_PER_TOKEN  # a low-detail image, as OpenAI counts it
        return total
    return 0


def estimate_prompt_tokens(messages: list[dict[str, Any]], extra_chars: int = 0) -> int:
    """Estimate the prompt tokens of `messages` (plus the size of tools and the like)."""
    chars = extra_chars
    for message in messages:
        chars += _content_chars(message.get("content"))
        for call in message.get("tool_calls") or ():
            if isinstance(call, dict):
                function = call.get("function") or {}
                if isinstance(function, dict):
                    chars += len(str(function.get("name", ""))) + len(
                        str(function.get("arguments", ""))
                    )
    return estimate_text_tokens(chars) + TOKENS_PER_MESSAGE * len(messages) + TOKENS_PER_REQUEST
