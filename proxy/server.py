"""Running the app: the HTTP server around it, its signals and its graceful drain.

aiohttp answers some requests itself, before any middleware: malformed HTTP (a header over
8 KiB, a bad Content-Length, garbage) and unknown `Expect` values. It answers them in
text/plain, and logs the offending line, which may quote the client's `Authorization`
header. `GatewayRunner` makes those answers `{"error": ...}` like every other, and logs no
request text. aiohttp has no public hook for this: the runner swaps in a request handler
whose `handle_error` is ours (tests/test_hostile.py's corpus guards it across upgrades).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from proxy import gc_policy
from proxy.app import SERVER, create_app
from proxy.app_state import BOOTSTRAP_KEY, STATE
from proxy.config import Config
from proxy.profiles import error_response
from proxy.workers import WORKER_ENV, cannot_listen

log = logging.getLogger("proxy")

PROTOCOL_MESSAGES = {
    400: "Malformed HTTP request.",
    413: "Request too large.",
    414: "Request line too long.",
    431: "Request headers too large.",
    500: "Internal server error.",
}
# How long a connection may take to send a request's headers (and idle between requests).
KEEPALIVE_SECONDS = 75.0


class _Handler(RequestHandler):
    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # The exception's text may quote a request line or header: log its type only.
        log.info("rejected a malformed request: %s (%s)", status, type(exc).__name__)
        if request.writer.output_size > 0:
            raise ConnectionError("an answer was already under way; closing the connection")
        response = error_response(status, PROTOCOL_MESSAGES.get(status, "Bad request."))
        response.headers["Server"] = SERVER  # the app's on_response_prepare never sees these
        response.force_close()
        return response


class _Server(web.Server):
    def __call__(self) -> RequestHandler:
        return _Handler(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """An AppRunner whose protocol-level errors are JSON, with the gateway's server settings."""

    def __init__(self, app: web.Application, *, drain_seconds: float = 60.0, **kwargs: Any):
        kwargs.setdefault("handler_cancellation", True)  # a client that leaves: cancel at once
        kwargs.setdefault("access_log", None)  # ours is proxy/logs.py
        kwargs.setdefault("keepalive_timeout", KEEPALIVE_SECONDS)
        super().__init__(app, shutdown_timeout=drain_seconds, **kwargs)

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _Server
        return server


class CannotListen(Exception):
    """The address could not be bound; the message says why, in one line."""


async def serve(config: Config, host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT, then drain gracefully; CannotListen if it cannot bind."""
    redis_url = os.environ.get("WOOZLIT_REDIS_URL") or None
    app = create_app(config, redis_url=redis_url, admin_token=os.environ.get("WOOZLIT_ADMIN_TOKEN"))
    runner = GatewayRunner(app, drain_seconds=config.server.drain_seconds)
    await runner.setup()
    # Before listening: a process that takes requests always drains on SIGTERM (and one that
    # was stopped before it listened had none: the supervisor counts on that).
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    worker = os.environ.get(WORKER_ENV)
    site = web.TCPSite(runner, host, port, backlog=4096, reuse_port=worker is not None)
    try:
        await site.start()
    except OSError as exc:  # the port in use, an address not ours, a privileged port
        await runner.cleanup()  # the upstream session and the store, opened by setup()
        raise CannotListen(cannot_listen(host, port, exc)) from None
    if redis_url is None:
        log.warning(
            "no WOOZLIT_REDIS_URL: using the embedded in-process store "
            "(single process only, nothing persisted)"
        )
    # Full collections scan only what is new: pauses stay short under many open streams.
    gc_policy.install()
    collections = asyncio.create_task(gc_policy.collections())
    sockets = getattr(site._server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    if BOOTSTRAP_KEY in app:
        # The embedded store lives and dies with this process: print its one key so that a
        # newcomer can call the gateway at once. Only here, never in logs.
        print(f"woozlit-proxy: bootstrap developer key: {app[BOOTSTRAP_KEY]}", flush=True)
    if worker is None:  # the supervisor announces a pool of workers itself
        local = redis_url is None and _loopback(host)
        note = " (embedded store: only this machine can connect; --host 0.0.0.0 opens it)"
        print(f"woozlit-proxy: listening on http://{host}:{bound}{note if local else ''}",
              flush=True)  # fmt: skip

    await stop.wait()
    # Graceful drain: readiness fails at once; new connections are still served for a short
    # grace, while the load balancer notices; then we stop listening and in-flight requests
    # and streams get up to drain_seconds; last, the settles of every request are flushed.
    app[STATE]["draining"] = True
    grace, drain = config.server.shutdown_grace_seconds, config.server.drain_seconds
    log.info("draining: readiness is 503; serving for %ss more", grace)
    await asyncio.sleep(grace)
    log.info("no longer listening; finishing in-flight requests (up to %ss)", drain)
    await runner.cleanup()
    collections.cancel()
    gc_policy.uninstall()
    log.info("stopped")


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
