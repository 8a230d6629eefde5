"""Anthropic's errors -> the gateway's: the client's fault, or the deployment's (retryable).

The client's fault is a 400 with Anthropic's sentence; the deployment's is retryable, so the
next deployment is tried: 404 / not_found_error (model retired or unknown), 402 /
billing_error and the 400 "credit balance is too low" or usage limits are ModelUnavailable
(503); 401/403 (our key) a 502 that says nothing of keys; 429/503/529 a 503 with Retry-After;
408/504 / timeout_error a 504; other 5xx a 502. Mid-stream `error` events are sorted by their
type the same way.

Source: Anthropic's errors (platform.claude.com/docs/en/api/errors: the HTTP statuses, the
error types, the `{"type": "error", "error": {...}}` body, errors in a stream).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from proxy.errors import (
    BadRequest,
    GatewayError,
    ModelUnavailable,
    NotFound,
    ServiceUnavailable,
    UpstreamError,
    UpstreamTimeout,
)

_ACCOUNT_TROUBLE = re.compile(r"credit balance|billing|usage limits|spend limit", re.I)


def error_from_type(
    name: str,
    error: Any,
    headers: dict[str, str],
    status: int | None = None,
    *,
    native: bool = False,
) -> GatewayError:
    """Map Anthropic's error `type` (and the HTTP status, when there is one) to ours: the
    client's fault is a 400; the deployment's (its model, our key or account, the
    service) is retryable, so the next deployment is tried. `name` is the provider's.

    A refusal of an `anthropic-` header (`anthropic-version`, `anthropic-beta`) is ours when
    the request was translated (the gateway chose the headers), and the client's with
    `native`: a Messages client's own `anthropic-version` and `anthropic-beta` go to Claude
    as it sent them, and it gets Anthropic's sentence in a 400 (Claude Code then retries
    without a beta the model does not take). Never a 5xx that would feed the breaker. So is a
    native 404 about anything but the model ("model: <name>"): a file or container the
    client named."""
    kind = error.get("type") if isinstance(error, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    text = message if isinstance(message, str) else ""
    retry = {"Retry-After": headers.get("retry-after") or "1"}
    if kind == "overloaded_error" or status in (503, 529):
        return ServiceUnavailable(f"Provider '{name}' is overloaded; retry later.", headers=retry)
    if kind == "rate_limit_error" or status == 429:
        return ServiceUnavailable(f"Provider '{name}' is rate-limited; retry later.", headers=retry)
    if kind == "timeout_error" or status in (408, 504):
        return UpstreamTimeout(f"Provider '{name}' timed out.")
    if kind in ("authentication_error", "permission_error") or status in (401, 403):
        return UpstreamError(f"The gateway's credentials for provider '{name}' were rejected.")
    # "Your credit balance is too low" and spent usage limits come as 400s.
    if kind == "billing_error" or status == 402 or _ACCOUNT_TROUBLE.search(text):
        return ModelUnavailable(
            f"Provider '{name}' refused the gateway's account (billing or usage limits)."
        )
    if kind == "not_found_error" or status == 404:
        if native and not text.startswith("model"):  # a file or container the client named
            return NotFound(text or "Not found.")
        return ModelUnavailable(f"Provider '{name}' does not serve this model (retired?).")
    if kind == "request_too_large" or status == 413:
        return BadRequest(f"The request is too large for provider '{name}'.")
    if text.startswith("anthropic-") and not native:  # our headers, not the client's
        return UpstreamError(f"Provider '{name}' refused the gateway's request headers.")
    if kind == "invalid_request_error" or (status is not None and 400 <= status < 500):
        return BadRequest(
            f"Provider '{name}' refused the request: {text}"
            if text
            else f"Provider '{name}' refused the request."
        )
    if status is not None:
        return UpstreamError(f"Provider '{name}' failed ({status}).")
    return UpstreamError(f"Provider '{name}' failed mid-stream" + (f": {text}" if text else "."))


def error_from_body(
    name: str, status: int, body: bytes, headers: dict[str, str], *, native: bool = False
) -> GatewayError:
    """An Anthropic error answer (`{"type": "error", "error": {...}}`) as ours."""
    try:
        payload = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        payload = None
    error = payload.get("error") if isinstance(payload, dict) else None
    lowered = {k.lower(): v for k, v in headers.items()}
    return error_from_type(name, error, lowered, status, native=native)
