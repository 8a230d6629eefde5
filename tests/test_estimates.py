"""The prompt estimate: every field a provider bills, never less than a simple count."""

from __future__ import annotations

from proxy.estimates import (
    IMAGE_TOKENS,
    TOOL_USE_TOKENS,
    estimate_prediction_tokens,
    estimate_prompt_tokens,
    text_weight,
)

BASE = {"model": "woozlit/m", "messages": [{"role": "user", "content": "hi"}]}


def test_text_in_any_billed_field_counts():
    base = estimate_prompt_tokens(BASE)
    text = "x" * 4000
    for extra in (
        {"messages": [{"role": "user", "content": "hi", "name": text}]},
        {"messages": [{"role": "system", "content": text}, *BASE["messages"]]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": text}]}]},
        {"response_format": {"type": "json_schema", "json_schema": {"schema": {"d": text}}}},
        {"tool_choice": {"type": "function", "function": {"name": text}}},
        {"some_field_the_gateway_does_not_know": text},
    ):
        assert estimate_prompt_tokens({**BASE, **extra}) >= base + 1000, extra


def test_settings_are_not_billed():
    settings = {"user": "x" * 4000, "metadata": {"k": "x" * 4000}, "stop": ["x" * 4000]}
    assert estimate_prompt_tokens({**BASE, **settings}) == estimate_prompt_tokens(BASE)


def test_tools_add_their_definitions_and_the_system_prompt_that_enables_them():
    tools = [{"type": "function", "function": {"name": "f", "description": "d" * 4000}}]
    assert estimate_prompt_tokens({**BASE, "tools": tools}) >= (
        estimate_prompt_tokens(BASE) + 1000 + TOOL_USE_TOKENS
    )


def test_other_scripts_count_more_than_ascii():
    assert text_weight("hello") == 5
    assert text_weight("日本語") == 15  # about a token a character
    assert text_weight("😀") == 7
    assert text_weight("é") == 3


def test_images_count_a_fixed_amount_not_their_bytes():
    def image(detail: str) -> dict:
        url = {"url": "data:image/png;base64," + "A" * 400_000, "detail": detail}
        return {
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": url}]}]
        }

    base = estimate_prompt_tokens({"messages": [{"role": "user", "content": []}]})
    # `detail: low` is OpenAI's alone (85 tokens there); Claude and Gemini ignore it.
    assert estimate_prompt_tokens(image("low")) - base == IMAGE_TOKENS
    assert estimate_prompt_tokens(image("high")) - base == IMAGE_TOKENS


def test_deep_nesting_is_no_recursion():
    value: object = "x"
    for _ in range(5000):
        value = [value]
    assert estimate_prompt_tokens({**BASE, "deep": value}) > estimate_prompt_tokens(BASE)


def test_a_prediction_is_billed_as_output():
    assert estimate_prediction_tokens(BASE) == 0
    prediction = {"type": "content", "content": "x" * 4000}
    assert estimate_prediction_tokens({**BASE, "prediction": prediction}) >= 1000


def test_a_cut_stream_of_other_scripts_is_estimated_as_high_as_its_prompt_would_be():
    """What a cut stream produced is estimated with the same weights as a prompt: a
    character of CJK is about a token, not a quarter of one."""
    import orjson

    from proxy.core import ChatRequest
    from proxy.providers.openai import OpenAIStream
    from proxy.sse import SSEEvent

    chat = ChatRequest({}, "woozlit/m", True, False, None, 10)
    stream = OpenAIStream(chat)
    delta = {"choices": [{"index": 0, "delta": {"content": "日本語のテキスト" * 100}}]}
    stream.feed(SSEEvent(orjson.dumps(delta)))
    usage = stream.final_usage()
    assert usage.estimated and usage.completion_tokens >= 800
