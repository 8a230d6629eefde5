"""Request bodies in: a JSON object, read and decoded, whatever the client protocol.

Every failure is a GatewayError with the status HTTP gives it (413, 408, 400), so a client
sees at once what to fix.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from proxy.errors import BadRequest, PayloadTooLarge, RequestTimeout


async def read_json_object(request: web.Request, limit: int, seconds: float) -> dict[str, Any]:
    """The request body as a JSON object, whatever its Content-Type (curl's `-d` sends a form
    type; OpenAI's API reads the body as JSON all the same); 413 past `limit` bytes, 408 when
    it takes longer than `seconds` to arrive, 400 for anything else."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"Request body too large: the limit is {limit} bytes.")
    raw = bytearray()
    content = request.content
    try:
        if content.is_eof():  # the whole body came with the headers: no timer needed
            raw += content.read_nowait()
            if len(raw) > limit:
                raise PayloadTooLarge(f"Request body too large: the limit is {limit} bytes.")
        else:
            async with asyncio.timeout(seconds):
                async for piece in content.iter_any():
                    raw += piece
                    if len(raw) > limit:
                        raise PayloadTooLarge(
                            f"Request body too large: the limit is {limit} bytes."
                        )
    except TimeoutError as exc:
        raise RequestTimeout(f"The request body did not arrive within {seconds:g} s.") from exc
    except web.RequestPayloadError as exc:
        # aiohttp decodes Content-Encoding and chunked framing as the body comes in.
        raise BadRequest("Request body could not be read: bad encoding or framing.") from exc
    if not raw:
        raise BadRequest("Request body is empty; send a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("Request body is not valid UTF-8.") from exc
        raise BadRequest(f"Request body is not valid JSON: {exc.msg}.") from exc
    if not isinstance(body, dict):
        raise BadRequest("Request body must be a JSON object.")
    # orjson reads 1024 levels of nesting but writes only 254, and repr() of a value nested
    # ~1000 deep overflows the stack: a body that cannot be written back cannot be forwarded.
    try:
        orjson.dumps(body)
    except orjson.JSONEncodeError as exc:
        raise BadRequest("Request body is nested too deeply.") from exc
    return body
