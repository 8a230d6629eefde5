"""Google's errors -> the gateway's: the client's request, or this deployment's fault.

The client's request is a 400 with Google's message (and `param` when the message names a
field: `_PARAMS`); the rest is this deployment's fault and retryable, so the next deployment
is tried: our key rejected (400 API_KEY_INVALID, 401, 403) a 502 that says nothing of any
key; an unknown or retired model (404) and region or billing (FAILED_PRECONDITION) a 503
ModelUnavailable; 429 and 503 a 503 with Retry-After (the header, else the error's
RetryInfo `retryDelay`); 408 and 504 a 504; CANCELLED, ABORTED and other 5xx a 502. An error
event mid-stream is mapped the same way, by its `code`.

Sources: Gemini troubleshooting (ai.google.dev/gemini-api/docs/troubleshooting: the HTTP
codes and statuses and what they mean); Google's API error model
(cloud.google.com/apis/design/errors: `{"error": {"code", "message", "status", "details"}}`,
ErrorInfo `reason`, RetryInfo `retryDelay`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import orjson

from proxy.errors import (
    BadRequest,
    GatewayError,
    ModelUnavailable,
    ServiceUnavailable,
    UpstreamError,
    UpstreamTimeout,
)


def error_object(payload: Any) -> dict[str, Any] | None:
    """The `error` object of a Google error body (sometimes wrapped in a one-item list)."""
    if isinstance(payload, list) and payload:
        payload = payload[0]
    error = payload.get("error") if isinstance(payload, dict) else None
    return error if isinstance(error, dict) else None


def _key_rejected(error: dict[str, Any]) -> bool:
    # Google answers a bad or expired key with 400 INVALID_ARGUMENT; only the reason (or
    # the message) tells it apart from a bad request.
    message = str(error.get("message") or "")
    if any(s in message for s in ("API_KEY_INVALID", "API key not valid", "API key expired")):
        return True
    details = error.get("details")
    return isinstance(details, list) and any(
        isinstance(d, dict) and d.get("reason") == "API_KEY_INVALID" for d in details
    )


def _retry_after(error: dict[str, Any], headers: Mapping[str, str]) -> str:
    header = headers.get("retry-after") or headers.get("Retry-After")
    if header:
        return header
    for detail in error.get("details") or ():
        delay = detail.get("retryDelay") if isinstance(detail, dict) else None
        if isinstance(delay, str) and delay.endswith("s"):
            try:
                return str(max(1, math.ceil(float(delay[:-1]))))
            except ValueError:
                pass
    return "1"


def error_from_body(
    name: str, status: int, body: bytes, headers: Mapping[str, str]
) -> GatewayError:
    """A Google error answer as ours (`map_error`); `name` is the provider's."""
    try:
        error = error_object(orjson.loads(body)) if body else None
    except orjson.JSONDecodeError:
        error = None
    return map_error(name, status, error or {}, headers)


def map_error(
    name: str, status: int, error: dict[str, Any], headers: Mapping[str, str]
) -> GatewayError:
    """A Google `{"code", "message", "status"}` error as ours: the client's request (400),
    or this deployment's fault, retryable so the next deployment is tried."""
    google = error.get("status")
    message = error.get("message") if isinstance(error.get("message"), str) else None
    if (
        _key_rejected(error)
        or status in (401, 403)
        or google in ("UNAUTHENTICATED", "PERMISSION_DENIED")
    ):
        return UpstreamError(f"The gateway's credentials for provider '{name}' were rejected.")
    if status == 429 or google == "RESOURCE_EXHAUSTED":
        return ServiceUnavailable(
            f"Provider '{name}' is rate-limited; retry later.",
            headers={"Retry-After": _retry_after(error, headers)},
        )
    if status == 503 or google == "UNAVAILABLE":
        return ServiceUnavailable(
            f"Provider '{name}' is overloaded; retry later.",
            headers={"Retry-After": _retry_after(error, headers)},
        )
    if status in (408, 504) or google == "DEADLINE_EXCEEDED":
        return UpstreamTimeout(f"Provider '{name}' timed out.")
    if status == 404 or google == "NOT_FOUND":
        # The configured upstream model is unknown or retired: not the client's request.
        return ModelUnavailable(
            f"Provider '{name}' does not serve the configured model (unknown or retired)."
        )
    if google == "FAILED_PRECONDITION":
        # The provider account's region or billing ("User location is not supported").
        return ModelUnavailable(
            f"Provider '{name}' refused this deployment: {message or 'failed precondition'}"
        )
    if status in (409, 499) or google in ("ABORTED", "CANCELLED"):
        return UpstreamError(f"Provider '{name}' dropped the request ({status}).")
    if 400 <= status < 500:
        return BadRequest(
            message or f"Provider '{name}' rejected the request ({status}).",
            param=_param_of(message or ""),
        )
    return UpstreamError(f"Provider '{name}' failed ({status}).")


# Where a Google validation message points, as the OpenAI request field it came from.
_PARAMS = (
    ("function_response", "messages"),
    ("functionresponse", "messages"),
    ("function call", "messages"),
    ("thought_signature", "messages"),
    ("thought signature", "messages"),
    ("contents", "messages"),
    ("system_instruction", "messages"),
    ("function_declarations", "tools"),
    ("tool_config", "tool_choice"),
    ("response_schema", "response_format"),
    ("stop_sequences", "stop"),
    ("max_output_tokens", "max_completion_tokens"),
    ("candidate_count", "n"),
)


def _param_of(message: str) -> str | None:
    text = message.lower()
    return next((param for key, param in _PARAMS if key in text), None)
