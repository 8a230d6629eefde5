"""The app factory: routes, middleware, and the lifetime of shared resources.

`create_app(config, ...)` builds an aiohttp Application; each shared resource (the upstream
ClientSession, the store) is opened and closed by one cleanup context. Handlers reach them
through the typed keys of `app_state.py`. Nothing here reads the environment: `__main__`
does, and passes what it found.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import aiohttp_cors
import orjson
from aiohttp import web

from proxy.accounting import Accountant, Admission
from proxy.admin import api as admin_api
from proxy.admin.accounts import Accounts, next_month_start
from proxy.app_state import (
    ACCESS,
    ACCESS_LOG,
    ACCOUNTANT,
    ACCOUNTS,
    BOOTSTRAP_KEY,
    CONFIG,
    METRICS,
    REQUEST_ID,
    ROUTER,
    STATE,
    STORE,
    UPSTREAM,
    X_REQUEST_ID,
)
from proxy.config import Config
from proxy.errors import GatewayError, NotFound
from proxy.exchange import ClientProtocol, Handler
from proxy.logs import AccessLog
from proxy.metrics import CONTENT_TYPE, REQUEST_LABELS, Metrics
from proxy.profiles import (
    ERROR_SHAPES,
    OPENAI_PREFIX,
    WOOZLIT_PREFIX,
    error_response,
    http_error,
    render_error,
)
from proxy.protocols.anthropic_messages import MESSAGES
from proxy.protocols.openai_chat import OPENAI_CHAT
from proxy.protocols.openai_responses import OPENAI_RESPONSES
from proxy.routing import Router
from proxy.store import open_store
from proxy.upstream import Upstream

log = logging.getLogger("proxy")

API_PREFIXES = (WOOZLIT_PREFIX, OPENAI_PREFIX.rstrip("/"))
# The protocols clients speak (protocols/), each on its paths below every API prefix.
PROTOCOLS: tuple[ClientProtocol, ...] = (OPENAI_CHAT, MESSAGES, OPENAI_RESPONSES)
# The headers a browser page may read from an API answer (CORS).
EXPOSED_HEADERS = (
    "x-request-id",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
    "x-should-retry",
    "x-woozlit-deployment",
    "Retry-After",
    "Idempotent-Replayed",
)
# The `Server` header of every answer: the gateway, never its stack (aiohttp's default names
# the versions of Python and aiohttp). server.py sets it on the answers made before the app.
SERVER = "woozlit-gateway"
MODELS_CREATED = 1733011200  # 2024-12-01, when the model list was set; stable for clients
HTTP_MESSAGES = {
    404: "Not found.",
    405: "Method not allowed.",
    413: "Request body too large.",
}
_REQUEST_ID_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


@web.middleware
async def edge_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """What every request goes through: its ids, the error format, the access log line.

    Our id for the request is the response `id` and the accounting id; `x-request-id` echoes
    the client's when it sent a sane one. Every failure becomes an error in the shape of the
    request's profile (`render_error`) with its status, never a traceback. A chat completion
    request is counted here, once, with the status it got, whatever refused or failed it
    (exchange.py names its labels). One middleware rather than three: each layer costs a frame.
    """
    started = time.perf_counter()
    request_id = "woozlit-" + secrets.token_hex(12)
    request[REQUEST_ID] = request_id
    given = request.headers.get("x-request-id", "")
    ok = given and len(given) <= 128 and all(c in _REQUEST_ID_OK for c in given)
    request[X_REQUEST_ID] = given if ok else request_id
    fields: dict[str, Any] = {"request_id": request_id}
    if ok:
        fields["x_request_id"] = given
    request[ACCESS] = fields
    try:
        response: web.StreamResponse = await handler(request)
    except GatewayError as exc:
        response = render_error(request, exc)
        fields["error"] = exc.code or exc.type  # why, for the operator: never the message
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        message = HTTP_MESSAGES.get(exc.status) or exc.reason + "."
        response = render_error(request, http_error(exc.status, message, headers))
    except asyncio.CancelledError:
        fields["status"] = 499  # the client went away
        _count(request, 499)
        _log_access(request, fields, started)
        raise
    except ConnectionResetError:
        # The client went away before we noticed: a write to its closed connection, or its
        # body cut short. No error of ours; the answer goes nowhere (aiohttp drops it).
        response = render_error(request, http_error(499, "Client closed the request."))
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        response = render_error(request, GatewayError())
    if not response.prepared:  # a stream got it before its headers went out (relay.py)
        response.headers["x-request-id"] = request[X_REQUEST_ID]
    if request.app[STATE]["draining"]:
        response.force_close()  # no keep-alive while draining: the client reconnects elsewhere
    fields.setdefault("status", response.status)
    _count(request, response.status)
    _log_access(request, fields, started)
    return response


def _count(request: web.Request, status: int) -> None:
    """An API request (chat completions, messages, responses) in woozlit_requests_total
    (exchange.py labelled it); others not."""
    labels = request.get(REQUEST_LABELS)
    if labels is not None:
        model, provider, protocol = labels
        request.app[METRICS].count_request(model, provider, status, protocol)


def _log_access(request: web.Request, fields: dict[str, Any], started: float) -> None:
    route = request.match_info.route.resource
    fields["method"] = request.method
    fields["path"] = route.canonical if route is not None else "-"  # never a raw path
    fields["duration_ms"] = round((time.perf_counter() - started) * 1000, 3)
    request.app[ACCESS_LOG].write(fields)


async def name_the_server(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer of the app, streams included, as its headers are about to go out."""
    response.headers["Server"] = SERVER


async def expect_handler(request: web.Request) -> web.StreamResponse | None:
    """`Expect: 100-continue` as usual; any other expectation is a JSON 417, not aiohttp's."""
    if request.headers.get("Expect", "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return None
    return render_error(request, http_error(417, "Unsupported Expect header."))


async def key_holder(request: web.Request) -> Admission:
    """The key's account, checked (key, account state) without counting against its limits.
    The key as every protocol takes it: `Authorization: Bearer`, or Anthropic's `x-api-key`
    (the anthropic SDKs list models with it)."""
    accountant = request.app[ACCOUNTANT]
    owner = await accountant.identify(MESSAGES.credentials(request))
    return await accountant.admit(owner, request[REQUEST_ID], mode="check")


async def list_models(request: web.Request) -> web.Response:
    admission = await key_holder(request)
    router = request.app[ROUTER]
    data = [
        {"id": name, "object": "model", "created": MODELS_CREATED, "owned_by": router.owner(name)}
        for name in router.routes
    ]
    return web.Response(
        body=orjson.dumps({"object": "list", "data": data}),
        content_type="application/json",
        headers=admission.headers,
    )


async def retrieve_model(request: web.Request) -> web.Response:
    """`GET /models/{id}`: one model of the list (ids contain a slash: `woozlit/gpt-4o`)."""
    admission = await key_holder(request)
    router = request.app[ROUTER]
    name = request.match_info["model"]
    if name not in router.routes:
        raise NotFound(
            f"The model '{name}' does not exist.",
            param="model",
            code="model_not_found",
            headers=admission.headers,
        )
    body = {
        "id": name,
        "object": "model",
        "created": MODELS_CREATED,
        "owned_by": router.owner(name),
    }
    return web.Response(
        body=orjson.dumps(body), content_type="application/json", headers=admission.headers
    )


async def key_usage(request: web.Request) -> web.Response:
    app = request.app
    admission = await key_holder(request)
    await app[
        ACCOUNTANT
    ].flush()  # this instance's settles in flight: a client sees its last request
    full = await app[ACCOUNTS].usage(admission.account_id)
    body = {k: full[k] for k in ("month", "limit", "used", "remaining")}
    body["reset_at"] = next_month_start(full["month"])
    return web.Response(
        body=orjson.dumps(body), content_type="application/json", headers=admission.headers
    )


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    app = request.app
    if app[STATE]["draining"]:
        return error_response(503, "Draining: not accepting new work.")
    if not await app[STORE].ping():
        return error_response(503, "The accounting store is unreachable.")
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def create_app(
    config: Config,
    *,
    redis_url: str | None = None,
    admin_token: str | None = None,
    bootstrap: bool | None = None,
) -> web.Application:
    """The gateway as an aiohttp Application.

    `redis_url` None means the embedded store; `bootstrap` (default: when embedded) creates
    a developer account and key at start, kept in `app[BOOTSTRAP_KEY]`.
    """
    app = web.Application(
        middlewares=[edge_middleware],
        client_max_size=config.server.max_body_bytes,
    )
    metrics_ = Metrics()
    app[CONFIG] = config
    app[METRICS] = metrics_
    app[ROUTER] = Router(config, metrics_)
    app[STATE] = {"draining": False}
    app[ACCESS_LOG] = AccessLog(enabled=config.access_log)

    async def store_ctx(app: web.Application) -> AsyncIterator[None]:
        store = open_store(redis_url, config.accounting.redis_timeout_seconds, metrics_)
        await store.warm()
        app[STORE] = store
        accountant = app[ACCOUNTANT] = Accountant(store, config, metrics_)
        app[ACCOUNTS] = Accounts(store, config)
        if bootstrap if bootstrap is not None else redis_url is None:
            app[BOOTSTRAP_KEY] = await _bootstrap(app[ACCOUNTS])
        renewing = asyncio.create_task(accountant.keep_renewing())
        yield
        renewing.cancel()
        await accountant.drain(seconds=5)
        await store.close()

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(
            limit=0, limit_per_host=0, ttl_dns_cache=300, enable_cleanup_closed=True
        )
        session = aiohttp.ClientSession(
            connector=connector, auto_decompress=True, skip_auto_headers=("User-Agent",)
        )
        app[UPSTREAM] = Upstream(session, metrics_, config.server.client_read_timeout_seconds)
        yield
        await session.close()

    app.cleanup_ctx.append(store_ctx)
    app.cleanup_ctx.append(session_ctx)
    app.on_shutdown.append(_settle_before_closing)
    app.on_cleanup.append(_flush_access_log)
    # Here rather than in edge_middleware: a stream sends its headers before the middleware
    # sees its response, and the expect handler's 417 never passes through it.
    app.on_response_prepare.append(name_the_server)

    routes: list[tuple[str, str, Handler]] = [
        ("GET", "/healthz", healthz),
        ("GET", "/readyz", readyz),
        ("GET", "/metrics", metrics),
    ]
    api: list[tuple[str, str, Handler]] = []
    shapes = app[ERROR_SHAPES] = {}
    for prefix in API_PREFIXES:
        for protocol in PROTOCOLS:
            for method, path, handler in protocol.routes():
                api.append((method, prefix + path, handler))
                shapes[prefix + path] = protocol.error_response
        api += [
            ("GET", prefix + "/models", list_models),
            ("GET", prefix + "/models/{model:.+}", retrieve_model),
            ("GET", prefix + "/usage", key_usage),
        ]
    if admin_token:
        routes += admin_api.routes(admin_token)
    for method, path, handler in routes:
        app.router.add_route(method, path, handler, expect_handler=expect_handler)
    _add_api_routes(app, config.server.cors_origins, api)
    return app


def _add_api_routes(
    app: web.Application, origins: tuple[str, ...], api: list[tuple[str, str, Handler]]
) -> None:
    """Add the API routes, with CORS for browser pages of `origins` (aiohttp-cors answers
    the preflight `OPTIONS` and adds the headers to every answer, errors included); the
    admin API and the operations routes get none."""
    before = list(app.on_response_prepare)
    cors = aiohttp_cors.setup(app)
    # aiohttp-cors looks at every answer as it is prepared (4 us each, measured); an answer
    # to a request without `Origin` is no CORS answer (CORS 6.1.1), so it is not asked then.
    for hook in [h for h in app.on_response_prepare if h not in before]:
        app.on_response_prepare.remove(hook)
        app.on_response_prepare.append(_cross_origin_only(hook))
    options = aiohttp_cors.ResourceOptions(
        allow_credentials=False,
        expose_headers=EXPOSED_HEADERS,
        allow_headers="*",
        allow_methods=["GET", "POST"],
        max_age=86400,
    )
    for method, path, handler in api:
        route = app.router.add_route(method, path, handler, expect_handler=expect_handler)
        if origins:
            cors.add(route, {origin: options for origin in origins})


def _cross_origin_only(hook: Any) -> Any:
    async def prepare(request: web.Request, response: web.StreamResponse) -> None:
        if "Origin" in request.headers:
            await hook(request, response)
            # aiohttp-cors echoes the origin, even for "*": a shared cache must not hand one
            # origin's answer to another.
            if "Access-Control-Allow-Origin" in response.headers:
                response.headers.add("Vary", "Origin")

    return prepare


async def _settle_before_closing(app: web.Application) -> None:
    """At shutdown, before the upstream session closes: wait for every settle still to come,
    answers of clients that left among them (they need the session to arrive)."""
    await app[ACCOUNTANT].drain(seconds=app[CONFIG].server.drain_seconds)


async def _flush_access_log(app: web.Application) -> None:
    app[ACCESS_LOG].flush()


async def _bootstrap(accounts: Accounts) -> str:
    account = await accounts.create_account(
        {"tier": "premium", "developer": True, "email": "bootstrap@localhost"}
    )
    key = await accounts.create_key(account["id"], "bootstrap")
    return str(key["key"])
