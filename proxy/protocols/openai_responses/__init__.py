"""OpenAI's Responses API, as clients speak it (Codex, the Agents SDK, the Vercel AI SDK's
`openai(model)`): `POST /responses` below both API prefixes.

- `request.py`: the request checked, and translated into chat completions (its docstring
  lists every mapping, what is ignored and what is refused);
- `response.py`: the `response` object, translated from a chat completion or native;
- `stream.py`: the streams' encoders, translated and native;
- `items.py`: the answers' output items kept per account, and the `item_reference`s of
  `input` replaced by them before anything else reads the request.

On both prefixes, as in OpenAI's API: `stream` absent means false, the key is a Bearer
`Authorization`, and errors are OpenAI's error object `{"error": {"message", "type",
"param", "code"}}` (the Woozlit API's plain string would lose the SDKs' sentence).

A deployment whose provider serves the Responses API (`responses_api: true`, OpenAI) gets
the client's body as it came (providers/openai_responses.py); every other one gets its chat
completions translation, and the answer is translated back. Either way the request is held
and charged as a chat completions request is: its prompt estimate is the larger of the two
bodies' (`estimates.estimate_prompt_tokens`), its cap `max_output_tokens` or the model's.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from proxy.app_state import CONFIG, ROUTER
from proxy.core import ChatRequest, Usage
from proxy.errors import GatewayError
from proxy.estimates import estimate_builtin_tool_tokens, estimate_prompt_tokens
from proxy.exchange import ClientProtocol
from proxy.protocols.body import read_json_object
from proxy.protocols.openai_chat import validate_chat
from proxy.protocols.openai_responses.items import ResponsesNative, expand, keep, keeper, stored
from proxy.protocols.openai_responses.request import translate
from proxy.protocols.openai_responses.response import translated_response
from proxy.protocols.openai_responses.stream import NativeStream, TranslatedStream
from proxy.relay import StreamEncoder

DIALECT = "openai-responses"


def builtin_tools(body: dict[str, Any]) -> int:
    """How many of the request's `tools` the provider runs itself (web search, file search,
    code interpreter...: every type but the client's own `function`, `namespace` and
    `custom` tools)."""
    tools = body.get("tools")
    if not isinstance(tools, list):
        return 0
    own = ("function", "namespace", "custom")
    return sum(1 for tool in tools if isinstance(tool, dict) and tool.get("type") not in own)


class OpenAIResponses(ClientProtocol):
    """OpenAI's Responses API: the request's body, the answer's shape, its errors."""

    name = "responses"
    path = "/responses"

    async def read(self, request: web.Request) -> ChatRequest:
        app = request.app
        server = app[CONFIG].server
        body = await read_json_object(request, server.max_body_bytes, server.body_timeout_seconds)
        body = await expand(request, body)  # before the estimate: the hold covers the items
        translation = translate(body)
        chat = validate_chat(
            translation.body,
            models=app[ROUTER].routes,
            aliases=app[CONFIG].aliases,
            accept="",
            default_temperature=server.default_temperature,
            openai=True,
        )
        chat.native = ResponsesNative(
            DIALECT,
            body,
            {},
            untranslatable=translation.untranslatable(chat.public_model),
            keeper=keeper(request, body),
        )
        chat.include_usage = chat.stream  # the translated stream's last event carries it
        # The native body may carry what the translation leaves out (reasoning items,
        # built-in tools): the hold covers whichever is larger.
        chat.prompt_tokens_estimate = max(chat.prompt_tokens_estimate, estimate_prompt_tokens(body))
        # Built-in tools run by OpenAI bill their results as input: held too (estimates.py).
        chat.completion_extra += estimate_builtin_tool_tokens(builtin_tools(body))
        return chat

    def body(
        self, payload: dict[str, Any], usage: Usage, chat: ChatRequest, rid: str, native: bool
    ) -> bytes:
        if native:
            payload["id"] = rid
            payload["model"] = chat.public_model
            payload["store"] = stored(chat)
        else:
            payload = translated_response(payload, usage, chat, rid)
        keep(chat, payload)
        return orjson.dumps(payload)

    def encoder(self, chat: ChatRequest, rid: str, native: bool) -> StreamEncoder:
        if native:
            return NativeStream(rid, chat)
        return TranslatedStream(rid, chat)

    def error_response(self, exc: GatewayError) -> web.Response:
        """OpenAI's error object on both prefixes (the Responses SDKs read `error.message`)."""
        return web.Response(
            status=exc.status,
            body=orjson.dumps({"error": exc.openai_error()}),
            content_type="application/json",
            headers=exc.headers,
        )


# POST /responses, on both prefixes.
OPENAI_RESPONSES = OpenAIResponses()
