"""Accounts and API keys in the store: create, read, update, revoke, report usage.

Used by the admin API and the admin CLI, never on the request path (see accounting.py for
that). Input is validated here, so both front ends give the same errors.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from proxy import api_keys
from proxy.config import Config
from proxy.errors import BadRequest, NotFound
from proxy.store import Store, keys

MAX_TOKENS = 10**12  # per charge; far below Redis's 2**63 counters
# The largest monthly_token_limit or requests_per_minute override. The scripts compute in Lua
# numbers, doubles exact to 2**53, and Redis turns a Lua number past 2**63 into garbage (an
# override of 2**64 - 1 requests a minute went out as `x-ratelimit-limit-requests:
# -9223372036854775808`).
MAX_LIMIT = 10**15
# The months whose usage can be asked for. From 1970-01: months are named from the clock, in
# seconds since the Unix epoch, so no usage is ever written before it. To 9999-11: the answer
# names the start of the next month (`reset_at`), and the month after 9999-12 is in the year
# 10000, which neither datetime nor YYYY-MM can write.
FIRST_MONTH, LAST_MONTH = "1970-01", "9999-11"
_MONTH = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])")  # ASCII: `\d` takes any script's digits
_SHOWN_CHARS = 32  # of a bad value quoted back in an error
ACCOUNT_FIELDS = ("tier", "developer", "disabled", "monthly_token_limit", "requests_per_minute")


def _flag(value: Any, name: str) -> str:
    if not isinstance(value, bool):
        raise BadRequest(f"'{name}' must be a boolean.")
    return "1" if value else "0"


def _limit(value: Any, name: str, minimum: int) -> str:
    if value is None:
        return ""
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= MAX_LIMIT:
        raise BadRequest(f"'{name}' must be an integer from {minimum} to {MAX_LIMIT}, or null.")
    return str(value)


def _shown(value: str) -> str:
    """`value` quoted for an error message, cut short when long."""
    return f"'{value}'" if len(value) <= _SHOWN_CHARS else f"'{value[:_SHOWN_CHARS]}...'"


def check_month(month: str) -> str:
    """`month` if it is a YYYY-MM from FIRST_MONTH to LAST_MONTH; else a 400 that names it."""
    # Fixed width, so the strings compare as the months do.
    if _MONTH.fullmatch(month) and FIRST_MONTH <= month <= LAST_MONTH:
        return month
    raise BadRequest(
        f"'month' must be a month from {FIRST_MONTH} to {LAST_MONTH} as YYYY-MM; "
        f"got {_shown(month)}."
    )


def _optional_int(value: str | None) -> int | None:
    return int(value) if value else None


def _account_view(raw: Mapping[str, str]) -> dict[str, Any]:
    return {
        "id": raw["id"],
        "email": raw.get("email") or None,
        "tier": raw["tier"],
        "developer": raw.get("developer") == "1",
        "disabled": raw.get("disabled") == "1",
        "monthly_token_limit": _optional_int(raw.get("monthly_token_limit")),
        "requests_per_minute": _optional_int(raw.get("requests_per_minute")),
        "created_at": int(raw["created_at"]),
    }


def next_month_start(month: str) -> str:
    year, mon = map(int, month.split("-"))
    year, mon = (year + 1, 1) if mon == 12 else (year, mon + 1)
    return datetime(year, mon, 1, tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Accounts:
    def __init__(self, store: Store, config: Config):
        self.store = store
        self.config = config

    def _tier(self, value: Any) -> str:
        if not isinstance(value, str) or value not in self.config.tiers:
            raise BadRequest(f"'tier' must be one of {', '.join(self.config.tiers)}.")
        return value

    async def create_account(self, body: Mapping[str, Any]) -> dict[str, Any]:
        unknown = set(body) - {"email", *ACCOUNT_FIELDS}
        if unknown:
            raise BadRequest(f"Unknown field '{sorted(unknown)[0]}'.")
        email = body.get("email")
        if email is not None and not isinstance(email, str):
            raise BadRequest("'email' must be a string.")
        record = {
            "id": "acct_" + secrets.token_hex(8),
            "email": email or "",
            "tier": self._tier(body.get("tier", "free")),
            "developer": _flag(body.get("developer", False), "developer"),
            "disabled": _flag(body.get("disabled", False), "disabled"),
            "monthly_token_limit": _limit(
                body.get("monthly_token_limit"), "monthly_token_limit", 0
            ),
            "requests_per_minute": _limit(
                body.get("requests_per_minute"), "requests_per_minute", 1
            ),
            "created_at": str(int(time.time())),
        }
        await self.store.hset(keys.account(record["id"]), record)
        return _account_view(record)

    async def _raw_account(self, account_id: str) -> dict[str, str]:
        raw = await self.store.hgetall(keys.account(account_id))
        if not raw:
            raise NotFound(f"No account '{account_id}'.")
        return raw

    async def get_account(self, account_id: str) -> dict[str, Any]:
        return _account_view(await self._raw_account(account_id))

    async def update_account(self, account_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        raw = await self._raw_account(account_id)
        unknown = set(body) - {"email", *ACCOUNT_FIELDS}
        if unknown:
            raise BadRequest(f"Unknown field '{sorted(unknown)[0]}'.")
        changes: dict[str, str] = {}
        if "email" in body:
            if body["email"] is not None and not isinstance(body["email"], str):
                raise BadRequest("'email' must be a string or null.")
            changes["email"] = body["email"] or ""
        if "tier" in body:
            changes["tier"] = self._tier(body["tier"])
        for name in ("developer", "disabled"):
            if name in body:
                changes[name] = _flag(body[name], name)
        if "monthly_token_limit" in body:
            changes["monthly_token_limit"] = _limit(
                body["monthly_token_limit"], "monthly_token_limit", 0
            )
        if "requests_per_minute" in body:
            changes["requests_per_minute"] = _limit(
                body["requests_per_minute"], "requests_per_minute", 1
            )
        if changes:
            await self.store.hset(keys.account(account_id), changes)
        raw.update(changes)
        return _account_view(raw)

    async def create_key(self, account_id: str, name: Any) -> dict[str, Any]:
        await self._raw_account(account_id)
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise BadRequest("'name' must be a non-empty string of at most 200 characters.")
        secret = api_keys.new_key()
        record = {
            "id": "key_" + secrets.token_hex(8),
            "account_id": account_id,
            "name": name.strip(),
            "prefix": api_keys.display_prefix(secret),
            "digest": api_keys.digest(secret),
            "created_at": str(int(time.time())),
            "last_used_at": "",
            "revoked": "0",
        }
        key_id = record["id"]
        # The key's record first, its lookups last: a key is usable only once complete.
        await self.store.hset(keys.api_key(account_id, key_id), record)
        await self.store.sadd(keys.account_keys(account_id), key_id)
        await self.store.set(keys.key_owner(key_id), account_id)
        await self.store.set(keys.key_digest(record["digest"]), f"{account_id}:{key_id}")
        return {
            "id": key_id,
            "name": record["name"],
            "key": secret,
            "prefix": record["prefix"],
            "created_at": int(record["created_at"]),
        }

    async def list_keys(self, account_id: str) -> list[dict[str, Any]]:
        await self._raw_account(account_id)
        ids = sorted(await self.store.smembers(keys.account_keys(account_id)))
        out = []
        for key_id in ids:
            raw = await self.store.hgetall(keys.api_key(account_id, key_id))
            if raw:
                out.append(
                    {
                        "id": key_id,
                        "name": raw["name"],
                        "prefix": raw["prefix"],
                        "created_at": int(raw["created_at"]),
                        "last_used_at": _optional_int(raw.get("last_used_at")),
                        "revoked": raw.get("revoked") == "1",
                    }
                )
        return sorted(out, key=lambda k: (k["created_at"], k["id"]))

    async def revoke_key(self, key_id: str) -> None:
        account_id = await self.store.get(keys.key_owner(key_id))
        if not account_id:
            raise NotFound(f"No key '{key_id}'.")
        record = keys.api_key(account_id, key_id)
        digest = await self.store.hget(record, "digest")
        # The flag is what every instance's admit script reads: this is the revocation.
        await self.store.hset(record, {"revoked": "1"})
        if digest:
            await self.store.delete(keys.key_digest(digest))

    def effective_limit(self, raw: Mapping[str, str]) -> int | None:
        override = raw.get("monthly_token_limit")
        if override:
            return int(override)
        tier = self.config.tiers.get(raw.get("tier", ""))
        return tier.monthly_tokens if tier else None

    async def usage(self, account_id: str, month: str | None = None) -> dict[str, Any]:
        """The month's usage of an account, in full (the admin's view)."""
        month = self.store.month() if month is None else check_month(month)
        raw = await self._raw_account(account_id)
        counts = await self.store.hgetall(keys.usage(account_id, month))
        held = await self.store.get(keys.held(account_id))
        limit = self.effective_limit(raw)
        used = int(counts.get("used", 0))
        return {
            "month": month,
            "limit": limit,
            "used": used,
            "remaining": None if limit is None else max(limit - used, 0),
            "held": max(int(held or 0), 0),
            "requests": int(counts.get("requests", 0)),
            "prompt_tokens": int(counts.get("prompt", 0)),
            "completion_tokens": int(counts.get("completion", 0)),
            # Reported by providers beyond what requests had reserved: served, not charged.
            "excess_tokens": int(counts.get("excess", 0)),
            "by_model": _section(counts, "m:"),
            "by_key": _section(counts, "k:"),
            "by_source": _section(counts, "s:"),
            "reset_at": next_month_start(month),
        }

    async def charge(self, account_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Charge usage from elsewhere (the Woozlit web app) to the month's quota."""
        await self._raw_account(account_id)
        unknown = set(body) - {"tokens", "source"}
        if unknown:  # a 'month', say: always this month's, never silently ignored
            raise BadRequest(f"Unknown field '{sorted(unknown)[0]}'.")
        tokens = body.get("tokens")
        if not isinstance(tokens, int) or isinstance(tokens, bool) or not 0 <= tokens <= MAX_TOKENS:
            raise BadRequest(f"'tokens' must be an integer from 0 to {MAX_TOKENS}.")
        source = body.get("source", "web")
        if not isinstance(source, str) or not source or len(source) > 64 or ":" in source:
            raise BadRequest("'source' must be a short name such as 'web'.")
        reply = await self.store.run(
            "charge",
            lambda month: [keys.usage(account_id, month)],
            [tokens, source, keys.USAGE_TTL_SECONDS, ""],
        )
        return {"used": int(reply[1])}


def _section(counts: Mapping[str, str], prefix: str) -> dict[str, int]:
    return {k[len(prefix) :]: int(v) for k, v in sorted(counts.items()) if k.startswith(prefix)}
