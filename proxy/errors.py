"""The gateway's error tree: every failure a client can see is one of these.

Each class carries its HTTP status, the `type` and `code` of OpenAI's error object (from
OpenAI's API reference, "Error codes"), and whether another deployment may succeed where one
attempt failed (`retryable`). One middleware in `app.py` renders any of them in the shape of
the API profile the request came in by: `{"error": "<message>"}` on the Woozlit API
(`/api/woozlit/v1`), `{"error": {"message", "type", "param", "code"}}` on the
OpenAI-compatible profile (`/v1`). Errors from libraries (aiohttp, redis) are translated into
these at the boundary where they happen, with `raise ... from exc`.
"""

from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    """Base: an error with an HTTP status and a message safe to show to the client.

    `param` names the request field at fault (OpenAI's `param`), when one is; `code`
    overrides the class's code for one instance.
    """

    status = 500
    default_message = "Internal server error."
    type = "server_error"
    code: str | None = None
    # Another deployment of the model may well not fail the same way: the request goes on
    # to the next one (routing). False: the request itself is at fault, or the client left.
    retryable = False

    def __init__(
        self,
        message: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        param: str | None = None,
        code: str | None = None,
    ):
        self.message = message or self.default_message
        self.headers = headers or {}
        self.param = param
        if code is not None:
            self.code = code
        super().__init__(self.message)

    def openai_error(self) -> dict[str, Any]:
        """OpenAI's error object: `{"message", "type", "param", "code"}`."""
        return {"message": self.message, "type": self.type, "param": self.param, "code": self.code}


class BadRequest(GatewayError):
    status = 400
    default_message = "Invalid request."
    type = "invalid_request_error"


class Unauthorized(GatewayError):
    status = 401
    default_message = "Invalid or missing API key."
    type = "invalid_request_error"
    code = "invalid_api_key"


class Forbidden(GatewayError):
    status = 403
    default_message = "Account disabled or developer access revoked."
    type = "permission_error"
    code = "permission_denied"


class NotFound(GatewayError):
    status = 404
    default_message = "Not found."
    type = "invalid_request_error"


class RequestTimeout(GatewayError):
    status = 408
    default_message = "The request body did not arrive in time."
    type = "invalid_request_error"
    code = "request_timeout"


class Conflict(GatewayError):
    status = 409
    default_message = "A request with this Idempotency-Key is still in progress."
    type = "invalid_request_error"
    code = "idempotency_key_in_use"


class IdempotencyMismatch(GatewayError):
    status = 422
    default_message = "This Idempotency-Key was used for a different request body."
    type = "invalid_request_error"
    code = "idempotency_key_reused"


class PayloadTooLarge(GatewayError):
    status = 413
    default_message = "Request body too large."
    type = "invalid_request_error"
    code = "request_too_large"


class RateLimited(GatewayError):
    """The per-key request rate limit refused the request."""

    status = 429
    default_message = "Rate limit exceeded for this API key. Retry after the time in Retry-After."
    type = "requests"
    code = "rate_limit_exceeded"


class TooManyConcurrent(GatewayError):
    """The key already has as many requests in flight as its tier allows."""

    status = 429
    default_message = "Too many requests in progress for this API key; retry when one finishes."
    type = "requests"
    code = "rate_limit_exceeded"


class QuotaExceeded(GatewayError):
    """The account's monthly token quota refused the request."""

    status = 429
    default_message = "Monthly token limit exceeded. Your usage will reset next month."
    type = "insufficient_quota"
    code = "insufficient_quota"


class UpstreamError(GatewayError):
    """The provider failed: refused, reset, answered garbage or rejected our credentials."""

    status = 502
    default_message = "The upstream provider failed."
    code = "upstream_error"
    retryable = True


class ServiceUnavailable(GatewayError):
    """The gateway cannot serve now: store down, draining, provider overloaded or unconfigured."""

    status = 503
    default_message = "Service temporarily unavailable."
    code = "service_unavailable"
    retryable = True


class ModelUnavailable(ServiceUnavailable):
    """The provider refused the deployment, not the request: the upstream model is retired
    or unknown to it, or the gateway's provider account lacks permission or credit."""

    default_message = "The model is unavailable right now."
    code = "model_unavailable"

    def __init__(self, message: str | None = None, **kwargs: Any):
        super().__init__(message, **kwargs)
        # Retried at once, a retired model or an account out of credit fails the same way:
        # the openai SDKs honour this and do not.
        self.headers.setdefault("x-should-retry", "false")


class UpstreamTimeout(GatewayError):
    status = 504
    default_message = "The upstream provider timed out."
    code = "timeout"
    retryable = True
