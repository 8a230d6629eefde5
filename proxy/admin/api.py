"""The admin API under /admin/v1, for operators and the Woozlit web app.

Registered only when WOOZLIT_ADMIN_TOKEN is set (otherwise every path is a 404), and every
call must carry that token as a bearer token, compared in constant time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from proxy import api_keys
from proxy.app_state import ACCOUNTANT, ACCOUNTS
from proxy.errors import BadRequest, Unauthorized

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        raw = await request.read()
    except web.RequestPayloadError as exc:
        raise BadRequest("Request body could not be read: bad encoding or framing.") from exc
    if not raw:
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest("Request body is not valid JSON.") from exc
    if not isinstance(body, dict):
        raise BadRequest("Request body must be a JSON object.")
    return body


async def create_account(request: web.Request) -> web.Response:
    return json(await request.app[ACCOUNTS].create_account(await _body(request)), 201)


async def get_account(request: web.Request) -> web.Response:
    return json(await request.app[ACCOUNTS].get_account(request.match_info["id"]))


async def update_account(request: web.Request) -> web.Response:
    accounts = request.app[ACCOUNTS]
    return json(await accounts.update_account(request.match_info["id"], await _body(request)))


async def create_key(request: web.Request) -> web.Response:
    body = await _body(request)
    return json(
        await request.app[ACCOUNTS].create_key(request.match_info["id"], body.get("name")), 201
    )


async def list_keys(request: web.Request) -> web.Response:
    return json({"data": await request.app[ACCOUNTS].list_keys(request.match_info["id"])})


async def revoke_key(request: web.Request) -> web.Response:
    await request.app[ACCOUNTS].revoke_key(request.match_info["key_id"])
    return web.Response(status=204)


async def get_usage(request: web.Request) -> web.Response:
    month = request.query.get("month")
    await request.app[ACCOUNTANT].flush()
    return json(await request.app[ACCOUNTS].usage(request.match_info["id"], month))


async def charge_usage(request: web.Request) -> web.Response:
    accounts = request.app[ACCOUNTS]
    return json(await accounts.charge(request.match_info["id"], await _body(request)))


def _guarded(handler: Handler, token: str) -> Handler:
    async def guarded(request: web.Request) -> web.StreamResponse:
        if not api_keys.admin_authorized(request.headers.get("Authorization"), token):
            raise Unauthorized("Invalid or missing admin token.")
        return await handler(request)

    return guarded


def routes(token: str) -> list[tuple[str, str, Handler]]:
    """The admin routes, each guarded by the admin token."""
    table = [
        ("POST", "/accounts", create_account),
        ("GET", "/accounts/{id}", get_account),
        ("PATCH", "/accounts/{id}", update_account),
        ("POST", "/accounts/{id}/keys", create_key),
        ("GET", "/accounts/{id}/keys", list_keys),
        ("DELETE", "/keys/{key_id}", revoke_key),
        ("GET", "/accounts/{id}/usage", get_usage),
        ("POST", "/accounts/{id}/usage", charge_usage),
    ]
    return [
        (method, "/admin/v1" + path, _guarded(handler, token)) for method, path, handler in table
    ]
