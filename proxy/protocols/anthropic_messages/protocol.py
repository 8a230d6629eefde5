"""Anthropic's Messages API, as clients speak it (Claude Code, the Anthropic SDKs):
`POST /messages` and `POST /messages/count_tokens` below both API prefixes (`/v1` and
`/api/woozlit/v1`), on the same keys, limits, quota and idempotency as chat completions.

- The key comes as `x-api-key` (the Anthropic SDKs, Claude Code's ANTHROPIC_API_KEY) or as
  `Authorization: Bearer` (ANTHROPIC_AUTH_TOKEN); `anthropic-version` and `anthropic-beta`
  are accepted and sent on to Claude deployments. `stream` absent means false on both
  prefixes, as in Anthropic's API. A `?beta=true` query (Claude Code's) changes nothing.
- The body is checked as Anthropic's reference says (request.py), translated into a chat
  completions body (translate.py) and validated by `validate_chat` with the operator's
  aliases (`model` may be one of Claude Code's own model names), so that the hold, the cap
  and the checks are those of chat completions; the prompt's estimate is the larger of the
  chat body's and the client's own body's. A request that cannot be translated (a server
  tool, an MCP server...) is refused with a 400 naming it when any deployment of its model
  would translate; served untranslated when they all speak Messages.
- A Claude deployment answers natively (providers/anthropic/native.py); the others through
  the translation, their answer turned into a Messages `message` or event stream
  (answer.py, stream.py).
- Errors, on every path of the protocol and both prefixes, are Anthropic's error objects
  (answer.py); a quota refusal keeps the gateway's own sentence.
- count_tokens (count.py): `{"input_tokens": N}`, exact from Anthropic when the model's first
  deployment is Claude, else the gateway's estimate; counted against the key's rate limit,
  never its quota.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from proxy.app_state import CONFIG
from proxy.core import ChatRequest, Usage
from proxy.errors import GatewayError
from proxy.exchange import ClientProtocol, Handler
from proxy.protocols.anthropic_messages.answer import error_response, message_from
from proxy.protocols.anthropic_messages.count import count_tokens
from proxy.protocols.anthropic_messages.read import credentials, read_messages
from proxy.protocols.anthropic_messages.stream import MessagesStream, NativeMessagesStream
from proxy.protocols.body import read_json_object
from proxy.relay import StreamEncoder


class Messages(ClientProtocol):
    """Anthropic's Messages API (see the module docstring)."""

    name = "messages"
    path = "/messages"

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [*super().routes(), ("POST", self.path + "/count_tokens", count_tokens)]

    def credentials(self, request: web.Request) -> str | None:
        return credentials(request)

    async def read(self, request: web.Request) -> ChatRequest:
        server = request.app[CONFIG].server
        body = await read_json_object(request, server.max_body_bytes, server.body_timeout_seconds)
        return read_messages(request, body)

    def body(
        self, payload: dict[str, Any], usage: Usage, chat: ChatRequest, rid: str, native: bool
    ) -> bytes:
        if native:
            payload["id"] = rid
            return orjson.dumps(payload)
        return orjson.dumps(message_from(payload, usage, rid, chat.public_model))

    def encoder(self, chat: ChatRequest, rid: str, native: bool) -> StreamEncoder:
        if native:
            return NativeMessagesStream(rid)
        return MessagesStream(rid, chat)

    def error_response(self, exc: GatewayError) -> web.Response:
        return error_response(exc)


MESSAGES = Messages()
