"""The Responses items an account's answers produced, kept for a bounded time, so that its
next requests may refer to them by `item_reference` (OpenAI's API reference, "Responses:
Create a model response", `input` item "Item reference": `{"type": "item_reference",
"id"}`, its `type` optional).

Why: with OpenAI's default `store: true`, clients refer to the items of earlier answers
instead of sending them again. The Vercel AI SDK's `openai(model)` does so for every
assistant text part that carries its `itemId` (every assistant message of a chat built with
it), for reasoning parts and for provider-defined tool calls (`@ai-sdk/openai`,
`convert-to-openai-responses-input.ts`). The gateway sends `store: false` upstream
(providers/openai_responses.py), so no provider could resolve a reference itself.

Kept (`Keeper.keep`): when `server.responses_store_seconds` > 0 and the request does not
say `store: false`, every output item with an `id` of a `completed` or `incomplete` answer
(messages, function calls, reasoning, built-in tool calls: each as its client received it,
JSON), one key per item under the account's hash tag (`store.keys.response_item`: on Redis
Cluster all of an account's items live in its slot), with that TTL. The write is one round
trip (SETs with PX, `Store.set_many_soon`: with the next flush of the pipelined script
connection when it is up), in the background after the answer went out: it never delays
or fails a request; a failure is counted and logged by the store
(`woozlit_redis_errors_total{op="command"}`), and the items are then unknown. The answer says
`"store": true` whenever items are kept, else `"store": false`. Non-stream: from the
`response` body given to the client; stream: from its `response.completed` (or
`.incomplete`) event, native or translated.

Bound: an answer's items are kept only if together their JSON takes at most
`server.max_body_bytes` (the most one request may carry; an answer is bounded by its
output cap, so this refuses only the pathological); a larger answer keeps nothing, with a
warning, and a later reference to its items is a 400. Per account, the count is bounded by
the answers its quota admits within the TTL.

Resolved (`expand`): before the request is translated and its hold estimated (so that the
hold covers the whole conversation), every `item_reference` of `input` is replaced by the
stored item of the request's account, all in one MGET; the native OpenAI deployment gets
the full items too. An id that is unknown, expired or another account's is a 400 naming
`input[i].id` with OpenAI's sentence: "Item with id '<id>' not found.".

Not yet handled: a reasoning item of a native answer, sent back to OpenAI (which gets
`store: false`), is resolved by OpenAI only with its `encrypted_content`, which the item
carries only when the client asked `include: ["reasoning.encrypted_content"]` (OpenAI
refuses that `include` for models that do not reason, so the gateway cannot add it blindly).

`previous_response_id` and `conversation` stay refused (a 400 naming the field,
request.py). Serving `previous_response_id` would mean keeping each response's input too
(its user messages have no ids: a copy of the whole conversation per response, quadratic in
its length, or one key per input item) and a second round trip before admission (response
to item ids to items). The clients we serve do not need it on their defaults: the Vercel AI
SDK sends it only when the application sets `previousResponseId`, Codex sends the whole
conversation with `store: false`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from proxy.app_state import CONFIG, STORE
from proxy.core import ChatRequest, Native
from proxy.errors import BadRequest
from proxy.exchange import OWNER
from proxy.store import Store, keys

log = logging.getLogger("proxy.responses")
KEPT_STATUSES = frozenset({"completed", "incomplete"})
# The writes in flight: kept here until done (a task nobody holds may be collected).
_writing: set[asyncio.Future[Any]] = set()


@dataclass(frozen=True, slots=True)
class Keeper:
    """Where one request's answer is kept: the account's items, for `ttl_ms` ms, at most
    `max_bytes` bytes of JSON per answer."""

    store: Store
    account_id: str
    ttl_ms: int
    max_bytes: int

    def keep(self, output: Any) -> None:
        """Keep the items (with an `id`) of `output`, an answer's `output` array, in the
        background."""
        values: dict[str, str] = {}
        size = 0
        for item in output if isinstance(output, list) else ():
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                value = orjson.dumps(item).decode()
                size += len(value)
                values[keys.response_item(self.account_id, item["id"])] = value
        if not values:
            return
        if size > self.max_bytes:
            log.warning(
                "responses: an answer's %d items (%d bytes) are over server.max_body_bytes"
                " (%d): not kept",
                len(values),
                size,
                self.max_bytes,
            )
            return
        # In the background, never failing the answer: a failure is counted and logged by
        # the store (Store._unavailable), and the items are then unknown.
        writing = self.store.set_many_soon(values, px=self.ttl_ms)
        _writing.add(writing)
        writing.add_done_callback(_writing.discard)


@dataclass(frozen=True, slots=True)
class ResponsesNative(Native):
    """A Responses request's `Native`, with where its answer is kept (None: not kept)."""

    keeper: Keeper | None = None


def keeper(request: web.Request, body: dict[str, Any]) -> Keeper | None:
    """Where the answer to `body` is kept: None when the request says `store: false` or
    the gateway keeps nothing (`server.responses_store_seconds` 0)."""
    server = request.app[CONFIG].server
    if server.responses_store_seconds <= 0 or body.get("store") is False:
        return None
    ttl_ms = max(1, round(server.responses_store_seconds * 1000))
    return Keeper(request.app[STORE], request[OWNER][0], ttl_ms, server.max_body_bytes)


def stored(chat: ChatRequest) -> bool:
    """Whether the answer to `chat` is kept: its `store` field."""
    return isinstance(chat.native, ResponsesNative) and chat.native.keeper is not None


def keep(chat: ChatRequest, response: dict[str, Any]) -> None:
    """Keep the output items of `response` (a `response` object as its client got it), if
    the request's answer is kept and it completed (or stopped at its cap)."""
    native = chat.native
    if isinstance(native, ResponsesNative) and native.keeper is not None:
        if response.get("status") in KEPT_STATUSES:
            native.keeper.keep(response.get("output"))


def is_reference(item: Any) -> bool:
    """Whether an `input` item is an item reference (`type` item_reference, or an object
    with an `id` and neither `type` nor `role`)."""
    if not isinstance(item, dict):
        return False
    if "type" in item:
        return bool(item["type"] == "item_reference")
    return "role" not in item and "id" in item


async def expand(request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
    """`body` with each item reference of its `input` replaced by the item it names (a new
    body; `body` itself unchanged). BadRequest naming `input[i].id` for an id that is not a
    string or that the account has no item of; ServiceUnavailable when the store fails."""
    items = body.get("input")
    if not isinstance(items, list):
        return body
    refs = [(i, item.get("id")) for i, item in enumerate(items) if is_reference(item)]
    if not refs:
        return body
    for i, item_id in refs:
        if not isinstance(item_id, str) or not item_id:
            raise BadRequest(f"'input[{i}].id' must be a non-empty string.", param=f"input[{i}].id")
    account_id = request[OWNER][0]
    values = await request.app[STORE].mget(
        [keys.response_item(account_id, item_id) for _, item_id in refs]
    )
    expanded = list(items)
    for (i, item_id), value in zip(refs, values, strict=True):
        if value is None:
            shown = item_id if len(item_id) <= 100 else item_id[:100] + "..."
            raise BadRequest(f"Item with id '{shown}' not found.", param=f"input[{i}].id")
        expanded[i] = orjson.loads(value)
    return {**body, "input": expanded}


async def written() -> None:
    """Wait for the writes in flight (tests, before they refer to what was just kept)."""
    while _writing:
        await asyncio.gather(*_writing, return_exceptions=True)
