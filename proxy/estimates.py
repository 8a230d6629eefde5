"""Token estimates: what a request may cost before it is sent, and what an upstream that
reports no usage (or a cut stream) produced.

The prompt estimate must not fall short of what the provider bills, because a request's hold
(and so what it may be charged) is built on it; it leans high on purpose. It counts every
field of the request that a provider bills as input, not only the messages: tool and
function definitions, JSON schemas of `response_format`, and any field the gateway does not
know (an OpenAI-compatible upstream gets it as sent, and may bill it). Fields that are
settings, not text for the model, are left out (`NOT_BILLED`).

About four characters a token for English text with the GPT and Claude tokenizers; other
scripts split finer (a CJK character is about one token, an emoji two or three), so a
non-ASCII character counts as 2 x its UTF-8 bytes - 1 characters: 5 for CJK, 7 for an
emoji, 3 for an accented Latin letter. Every message costs a few tokens of framing, as in
OpenAI's counting guide. An image is counted at the most one image costs on gpt-4o, Claude
or Gemini (about 1,600 tokens, whatever its `detail`). Not bounded by this estimate, and
recorded as excess where they bill past the hold: gpt-4o-mini's images (~33 times the
tokens), a PDF's pages, a video given to Gemini by URL. Tools add the system prompt a
provider adds to use them.
"""

from __future__ import annotations

from typing import Any

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4
TOKENS_PER_REQUEST = 3
# OpenAI high detail is 85 + 170 a 512 px tile, 1,445 for the largest (2048 x 768 px after
# scaling); Claude ~ width x height / 750 with a long side of 1,568 px, ~1,600; Gemini 258
# a 768 px tile.
IMAGE_TOKENS = 1_600
IMAGE_PARTS = frozenset({"image_url", "input_image", "image"})
# A request with tools is billed a system prompt the provider adds to enable tool use: up to
# 530 tokens (Claude 3 Opus, tool_choice auto; Anthropic's "Tool use pricing and tokens").
TOOL_USE_TOKENS = 530

# Top-level request fields that are settings, not text the model reads: not billed.
NOT_BILLED = frozenset(
    {
        "model",
        "stream",
        "stream_options",
        "temperature",
        "top_p",
        "n",
        "max_tokens",
        "max_completion_tokens",
        "frequency_penalty",
        "presence_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "seed",
        "stop",
        "user",
        "metadata",
        "store",
        "service_tier",
        "parallel_tool_calls",
        "modalities",
        "reasoning_effort",
        "safety_identifier",
        "prompt_cache_key",
        "prediction",  # billed as output: see `estimate_prediction_tokens`
    }
)


def estimate_text_tokens(chars: int) -> int:
    return (chars + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


def text_weight(text: str) -> int:
    """A string's length in ASCII-character equivalents (see the module's docstring)."""
    if text.isascii():
        return len(text)
    return 2 * len(text.encode("utf-8", "surrogatepass")) - len(text)


def _weight(value: Any) -> int:
    """Characters-equivalent of a JSON value: its strings, its keys, a little for the rest.

    A loop over a stack, not recursion: a body may nest as deep as the JSON parser allows.
    """
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += text_weight(item)
        elif isinstance(item, dict):
            kind = item.get("type")
            if isinstance(kind, str) and kind in IMAGE_PARTS:
                # `detail: low` (85 tokens) is OpenAI's alone: Claude and Gemini ignore it.
                total += IMAGE_TOKENS * CHARS_PER_TOKEN
                continue
            for key, member in item.items():
                total += text_weight(key)
                stack.append(member)
        elif isinstance(item, list):
            total += len(item)
            stack.extend(item)
        else:
            total += CHARS_PER_TOKEN  # a number, true, false or null: about one token
    return total


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    """The input tokens a chat completions `body` may be billed for: an upper estimate."""
    chars = 0
    messages = 0
    for name, value in body.items():
        if name in NOT_BILLED:
            continue
        if name == "messages" and isinstance(value, list):
            messages = len(value)
            for message in value:
                chars += _weight(message)
            continue
        chars += text_weight(name) + _weight(value)
    tools = TOOL_USE_TOKENS if body.get("tools") or body.get("functions") else 0
    return estimate_text_tokens(chars) + TOKENS_PER_MESSAGE * messages + TOKENS_PER_REQUEST + tools


# What a request may cost beyond its prompt and output for each tool the provider runs
# itself (OpenAI's built-in tools in the Responses API, Anthropic's server tools): their
# results (search results, fetched pages, file chunks, code output) come back into the
# model's context and are billed as input tokens, which no estimate of the prompt sees.
# OpenAI bills web search's content as a fixed block of 8,000 input tokens per call for its
# mini models (platform.openai.com/docs/pricing, "Built-in tools"); a result of Anthropic's
# web search or web fetch is billed as input tokens of its size (platform.claude.com/docs,
# "Web search tool": pricing). One call's worth is held per tool (per `max_uses` when a
# Claude server tool sets it): a model that calls a tool more often than that can still
# be billed more than was held, and the rest shows as excess (accounting).
BUILTIN_TOOL_RESERVE = 8192


def estimate_builtin_tool_tokens(calls: int) -> int:
    """The tokens held for `calls` calls of tools the provider runs itself."""
    return calls * BUILTIN_TOOL_RESERVE


def estimate_prediction_tokens(body: dict[str, Any]) -> int:
    """OpenAI's Predicted Outputs: the prediction's tokens that the answer does not use are
    billed as completion tokens, beyond `max_completion_tokens` (OpenAI's guide to them)."""
    prediction = body.get("prediction")
    return estimate_text_tokens(_weight(prediction)) if prediction is not None else 0
