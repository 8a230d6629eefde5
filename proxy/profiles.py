"""The two API profiles a request can come in by, chosen by its path, and how each shows an
error (interface: "Two profiles, chosen by path").

- The Woozlit API, below `/api/woozlit/v1`: `stream` absent means streaming (unless the
  request's Accept asks for JSON only), errors are `{"error": "<one sentence>"}`.
- The OpenAI-compatible profile, below `/v1`, for tools built on OpenAI's API: `stream`
  absent means false, errors are OpenAI's error object
  `{"error": {"message", "type", "param", "code"}}` with the same sentence as `message`.

A client protocol with an error shape of its own (Anthropic Messages) has it on every
prefix: `ERROR_SHAPES` maps its paths to it (`ClientProtocol.error_response`).

In both profiles, an error after a stream began is one SSE event `data: {"error":
{"message", "type", "code"}}` (`stream_error`): the openai SDKs, LangChain, litellm and the
Vercel AI SDK read `error.message` there, and lose the sentence when `error` is a string.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from proxy.errors import GatewayError

WOOZLIT_PREFIX = "/api/woozlit/v1"
OPENAI_PREFIX = "/v1/"
# Full path -> the error of a client protocol with a shape of its own (None: the profile's).
ERROR_SHAPES = web.AppKey[dict[str, Callable[[GatewayError], web.Response | None]]]("error_shapes")


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """An error in the Woozlit API's shape, `{"error": "<message>"}`."""
    return web.Response(
        status=status,
        body=orjson.dumps({"error": message}),
        content_type="application/json",
        headers=headers,
    )


def openai_profile(request: web.Request) -> bool:
    """Whether the request came in by the OpenAI-compatible profile (paths below `/v1`),
    where `stream` absent means false and errors are OpenAI's error objects; the Woozlit
    API is below `/api/woozlit/v1`."""
    return request.path.startswith(OPENAI_PREFIX)


def render_error(request: web.Request, exc: GatewayError) -> web.Response:
    """`exc` in the shape of the request's client protocol, if it has one of its own
    (`ERROR_SHAPES`), else of its profile: `{"error": {"message", "type", "param", "code"}}`
    below `/v1`, `{"error": "<message>"}` elsewhere."""
    shape = request.app.get(ERROR_SHAPES, {}).get(request.path)
    if shape is not None:
        response = shape(exc)
        if response is not None:
            return response
    if not openai_profile(request):
        return error_response(exc.status, exc.message, exc.headers)
    return web.Response(
        status=exc.status,
        body=orjson.dumps({"error": exc.openai_error()}),
        content_type="application/json",
        headers=exc.headers,
    )


def http_error(status: int, message: str, headers: dict[str, str] | None = None) -> GatewayError:
    """A GatewayError for an HTTP status that has no class of its own (404 path, 405, 417)."""
    exc = GatewayError(message, headers=headers)
    exc.status = status
    exc.type = "invalid_request_error" if status < 500 else "server_error"
    return exc


def stream_error(exc: GatewayError) -> dict[str, Any]:
    """The SSE event that ends a stream which failed after it began, in both profiles."""
    return {"error": {"message": exc.message, "type": exc.type, "code": exc.code}}
