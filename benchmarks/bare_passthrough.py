"""The floor: a bare aiohttp passthrough that forwards bytes and does nothing else.

    python benchmarks/bare_passthrough.py --port 9002 --upstream http://127.0.0.1:9001

`POST /v1/chat/completions` and `/api/woozlit/v1/chat/completions` send the request body,
as bytes, to `<upstream>/v1/chat/completions` through one shared `ClientSession` (a pooled,
keep-alive connector), and stream the answer back as it arrives (`iter_any` + `write`): no
parsing, no auth, no accounting, no metrics, no access log. Any aiohttp proxy pays at least
this much per request; the benchmark reports the gateway as a ratio to it.

The Messages API (`/v1/messages`) and the Responses API (`/v1/responses`), both also below
`/api/woozlit/v1`, go the same way to the same path upstream; the headers a Messages
upstream wants (`x-api-key`, `anthropic-version`) are passed on as the client sent them.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web

SESSION = web.AppKey("session", aiohttp.ClientSession)
# The paths served, below /v1 and /api/woozlit/v1, each forwarded to /v1/<path> upstream,
# with the request headers (besides Content-Type) its upstream wants.
PATHS = {
    "chat/completions": (),
    "messages": ("x-api-key", "anthropic-version"),
    "responses": (),
}


def forwarder(url: str, passed: tuple[str, ...]) -> Callable[[web.Request], Awaitable]:
    """A handler: the body and the `passed` headers to `url`, the answer's status,
    Content-Type and bytes back as they come."""

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        session = request.app[SESSION]
        headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
        for name in passed:
            if name in request.headers:
                headers[name] = request.headers[name]
        async with session.post(url, data=body, headers=headers) as upstream:
            response = web.StreamResponse(
                status=upstream.status,
                headers={"Content-Type": upstream.headers.get("Content-Type", "application/json")},
            )
            await response.prepare(request)
            async for data in upstream.content.iter_any():
                await response.write(data)
            await response.write_eof()
            return response

    return forward


def create_app(upstream: str) -> web.Application:
    app = web.Application()

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        # No pool limit (the default is 100): the client decides the concurrency, as it
        # does for the gateway. Idle connections close after aiohttp's default 15 s, as the
        # gateway's do (see bench.py's wait_connections_gone).
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
            app[SESSION] = session
            yield

    app.cleanup_ctx.append(session_ctx)
    for path, passed in PATHS.items():
        forward = forwarder(f"{upstream.rstrip('/')}/v1/{path}", passed)
        app.router.add_post(f"/v1/{path}", forward)
        app.router.add_post(f"/api/woozlit/v1/{path}", forward)
    return app


async def serve(host: str, port: int, upstream: str) -> None:
    runner = web.AppRunner(create_app(upstream), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096)
    await site.start()
    print(f"bare_passthrough: listening on http://{host}:{port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9002)
    parser.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:9001")
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        runner(serve(args.host, args.port, args.upstream))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
