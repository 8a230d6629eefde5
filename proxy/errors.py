"""The gateway's error tree: every failure a client can see is one of these.

Each class carries its HTTP status; one middleware in `app.py` renders any of them as
`{"error": "<message>"}`. Errors from libraries (aiohttp, redis) are translated into these at
the boundary where they happen, with `raise ... from exc`.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base: an error with an HTTP status and a message safe to show to the client."""

    status = 500
    default_message = "Internal server error."

    def __init__(self, message: str | None = None, *, headers: dict[str, str] | None = None):
        self.message = message or self.default_message
        self.headers = headers or {}
        super().__init__(self.message)


class BadRequest(GatewayError):
    status = 400
    default_message = "Invalid request."


class Unauthorized(GatewayError):
    status = 401
    default_message = "Invalid or missing API key."


class Forbidden(GatewayError):
    status = 403
    default_message = "Account disabled or developer access revoked."


class NotFound(GatewayError):
    status = 404
    default_message = "Not found."


class MethodNotAllowed(GatewayError):
    status = 405
    default_message = "Method not allowed."


class RequestTimeout(GatewayError):
    status = 408
    default_message = "The request body did not arrive in time."


class Conflict(GatewayError):
    status = 409
    default_message = "A request with this Idempotency-Key is still in progress."


class IdempotencyMismatch(GatewayError):
    status = 422
    default_message = "This Idempotency-Key was used for a different request body."


class PayloadTooLarge(GatewayError):
    status = 413
    default_message = "Request body too large."


class RateLimited(GatewayError):
    """The per-key request rate limit refused the request."""

    status = 429
    default_message = "Rate limit exceeded for this API key. Retry after the time in Retry-After."


class TooManyConcurrent(GatewayError):
    """The key already has as many requests in flight as its tier allows."""

    status = 429
    default_message = "Too many requests in progress for this API key; retry when one finishes."


class QuotaExceeded(GatewayError):
    """The account's monthly token quota refused the request."""

    status = 429
    default_message = "Monthly token limit exceeded. Your usage will reset next month."


class NotImplementedByGateway(GatewayError):
    status = 501
    default_message = "Not implemented."


class UpstreamError(GatewayError):
    """The provider failed: refused, reset, answered garbage or rejected our credentials."""

    status = 502
    default_message = "The upstream provider failed."


class ServiceUnavailable(GatewayError):
    """The gateway cannot serve now: store down, draining, provider overloaded or unconfigured."""

    status = 503
    default_message = "Service temporarily unavailable."


class UpstreamTimeout(GatewayError):
    status = 504
    default_message = "The upstream provider timed out."
