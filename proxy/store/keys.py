"""Every Redis key the gateway uses, and every TTL, in one place.

Everything about one account lives under its hash tag `{a:ID}`, so each script touches a
single slot and runs unchanged on Redis Cluster. Two lookups stand outside any account,
each a single-key GET: the SHA-256 digest of an API key, and a key id, to its account.
"""

from __future__ import annotations

PREFIX = "wz"

USAGE_TTL_SECONDS = 400 * 86400  # a month's usage stays readable for over a year


def _tag(account_id: str) -> str:
    return f"{PREFIX}:{{a:{account_id}}}"


def account(account_id: str) -> str:
    return f"{_tag(account_id)}:account"


def account_keys(account_id: str) -> str:
    """Set of the account's key ids."""
    return f"{_tag(account_id)}:keys"


def api_key(account_id: str, key_id: str) -> str:
    return f"{_tag(account_id)}:key:{key_id}"


def rate_log(account_id: str, key_id: str) -> str:
    return f"{_tag(account_id)}:rate:{key_id}"


def usage(account_id: str, month: str) -> str:
    return f"{_tag(account_id)}:usage:{month}"


def holds(account_id: str) -> str:
    return f"{_tag(account_id)}:holds"


def hold_expiries(account_id: str) -> str:
    return f"{_tag(account_id)}:hold-expiries"


def held(account_id: str) -> str:
    return f"{_tag(account_id)}:held"


def in_flight(account_id: str, key_id: str) -> str:
    """The key's requests admitted and not settled (zset, request id -> expiry ms)."""
    return f"{_tag(account_id)}:in-flight:{key_id}"


def idempotency(account_id: str, key_digest: str) -> str:
    """A client's Idempotency-Key: 'pending:<body digest>' or 'done:<body digest>:<answer>'."""
    return f"{_tag(account_id)}:idem:{key_digest}"


def response_item(account_id: str, item_id: str) -> str:
    """An output item of a Responses answer, as its client got it (JSON), by the item's
    `id`: what an `item_reference` of that account names (protocols/openai_responses/items.py;
    TTL `server.responses_store_seconds`)."""
    return f"{_tag(account_id)}:item:{item_id}"


def key_digest(digest: str) -> str:
    """API key SHA-256 digest -> 'account_id:key_id'."""
    return f"{PREFIX}:digest:{digest}"


def key_owner(key_id: str) -> str:
    """Key id -> account id, for revocation by key id."""
    return f"{PREFIX}:key-owner:{key_id}"


def admit_keys(account_id: str, key_id: str, month: str) -> list[str]:
    return [
        account(account_id),
        api_key(account_id, key_id),
        rate_log(account_id, key_id),
        usage(account_id, month),
        holds(account_id),
        hold_expiries(account_id),
        held(account_id),
        in_flight(account_id, key_id),
    ]


def settle_keys(account_id: str, key_id: str, month: str) -> list[str]:
    return [
        usage(account_id, month),
        holds(account_id),
        hold_expiries(account_id),
        held(account_id),
        in_flight(account_id, key_id),
    ]


def renew_keys(account_id: str, key_ids: list[str]) -> list[str]:
    """The keys of renew.lua: the account's holds, then each key's in-flight set."""
    return [
        holds(account_id),
        hold_expiries(account_id),
        held(account_id),
        *(in_flight(account_id, key_id) for key_id in key_ids),
    ]
