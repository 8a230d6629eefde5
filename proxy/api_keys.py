"""API keys: their format, their digests, and reading them from a request.

A key is `woozlit_` and 256 bits of URL-safe randomness. Only its SHA-256 digest is stored
(with a short display prefix), so a leaked store leaks no usable key.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from proxy.errors import Unauthorized

KEY_PREFIX = "woozlit_"
DISPLAY_PREFIX_CHARS = len(KEY_PREFIX) + 4
_KEY_SHAPE = re.compile(r"woozlit_[A-Za-z0-9_-]{32,128}")


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def display_prefix(key: str) -> str:
    return key[:DISPLAY_PREFIX_CHARS]


def bearer_key(authorization: str | None) -> str:
    """The API key in an `Authorization: Bearer woozlit_...` header, or 401."""
    if not authorization:
        raise Unauthorized("Missing API key: send 'Authorization: Bearer woozlit_...'.")
    scheme, _, key = authorization.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not _KEY_SHAPE.fullmatch(key):
        raise Unauthorized("Invalid API key.")
    return key


def admin_authorized(authorization: str | None, token: str) -> bool:
    """Constant-time check of the admin bearer token."""
    if not authorization or not token:
        return False
    scheme, _, given = authorization.partition(" ")
    # aiohttp keeps header bytes that are not UTF-8 as surrogates: encode them back as bytes.
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode("utf-8", "surrogateescape"), token.encode()
    )
