"""The admin API (/admin/v1) and the admin CLI, against a real redis-server and real gateways.

Every change made through the admin side is checked where it matters: on the API a key
holder calls (403, 401, 429 at once), and in Redis itself (no secret stored in clear).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from proxy.__main__ import parser
from tests.conftest import ADMIN_TOKEN, FakeUpstream, Gateway, GatewayFactory, openai_provider
from tests.fakes.openai_upstream import COMPLETION_TOKENS, PROMPT_TOKENS

ROOT = Path(__file__).resolve().parent.parent
MODEL_A = "woozlit/gpt-4o-mini"
MODEL_B = "woozlit/deepseek-chat"
MODELS = {
    MODEL_A: [{"provider": "openai", "model": "gpt-4o-mini"}],
    MODEL_B: [{"provider": "openai", "model": "deepseek-chat"}],
}
PER_REQUEST = PROMPT_TOKENS + COMPLETION_TOKENS
ACCOUNT_FIELDS = {
    "id",
    "email",
    "tier",
    "developer",
    "disabled",
    "monthly_token_limit",
    "requests_per_minute",
    "created_at",
}
QUOTA_MESSAGE = "Monthly token limit exceeded. Your usage will reset next month."
PREMIUM_RPM = 100_000  # conftest's DEFAULT_TIERS
FREE_TOKENS = 1_000_000
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
MONTH_ERROR = "'month' must be a month from 1970-01 to 9999-11 as YYYY-MM; got {}."
MAX_LIMIT = 10**15  # of a monthly_token_limit or requests_per_minute override


def this_month() -> str:
    return datetime.now(UTC).strftime("%Y-%m")


def month_after(month: str) -> str:
    year, mon = map(int, month.split("-"))
    year, mon = (year + 1, 1) if mon == 12 else (year, mon + 1)
    return f"{year:04d}-{mon:02d}-01T00:00:00Z"


@pytest.fixture
async def gw(gateway: GatewayFactory, fake_openai: FakeUpstream, redis_url: str) -> Gateway:
    """A gateway on the test's Redis, with a premium developer account and its key."""
    return await gateway({"openai": openai_provider(fake_openai.url)}, MODELS, redis_url=redis_url)


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def call(
    http: aiohttp.ClientSession,
    gw: Gateway,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = ADMIN,
) -> tuple[int, Any]:
    """(status, decoded JSON body or None) of one admin API call."""
    data = None if body is None else (body if isinstance(body, bytes) else orjson.dumps(body))
    async with http.request(
        method, gw.base_url + "/admin/v1" + path, data=data, headers=headers
    ) as resp:
        raw = await resp.read()
        if resp.status != 204:
            assert resp.content_type == "application/json", (resp.status, raw)
        return resp.status, orjson.loads(raw) if raw else None


async def admin(http: aiohttp.ClientSession, gw: Gateway, method: str, path: str, body: Any = None):
    """The JSON answer of an admin call that must succeed."""
    status, answer = await call(http, gw, method, path, body)
    assert status in (200, 201, 204), (method, path, status, answer)
    return answer


async def chat(
    http: aiohttp.ClientSession,
    gw: Gateway,
    key: str | None = None,
    model: str = MODEL_A,
    stream: bool = False,
) -> tuple[int, Any, Any]:
    """(status, body, headers) of one chat completion; a stream is read to its end."""
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "stream": stream}
    async with http.post(gw.api + "/chat/completions", json=body, headers=gw.auth(key)) as resp:
        raw = await resp.read()
        answer = raw.decode() if stream and resp.status == 200 else orjson.loads(raw)
        return resp.status, answer, resp.headers


async def new_account(http: aiohttp.ClientSession, gw: Gateway, **fields: Any) -> tuple[str, str]:
    """(account id, key) of a new account, developer unless told otherwise."""
    account = await admin(http, gw, "POST", "/accounts", {"developer": True, **fields})
    key = await admin(http, gw, "POST", f"/accounts/{account['id']}/keys", {"name": "k"})
    return account["id"], key["key"]


async def redis_contents(url: str) -> list[str]:
    """Every key name and every value in Redis, as strings."""
    client = aioredis.from_url(url, decode_responses=True)
    out: list[str] = []
    try:
        async for key in client.scan_iter(count=1000):
            out.append(key)
            kind = await client.type(key)
            if kind == "string":
                out.append(await client.get(key))
            elif kind == "hash":
                out += [x for item in (await client.hgetall(key)).items() for x in item]
            elif kind == "set":
                out += await client.smembers(key)
            elif kind == "zset":
                out += await client.zrange(key, 0, -1)
            elif kind == "list":
                out += await client.lrange(key, 0, -1)
            else:
                raise AssertionError(f"unexpected Redis type {kind} of {key}")
    finally:
        await client.aclose()
    return out


# -- access to the admin API -------------------------------------------------------------


async def test_admin_api_absent_without_token(
    gateway: GatewayFactory, fake_openai: FakeUpstream, redis_url: str, http
):
    gw = await gateway(
        {"openai": openai_provider(fake_openai.url)}, MODELS, redis_url=redis_url, admin_token=None
    )
    for method, path, body in [
        ("POST", "/accounts", {"tier": "free", "developer": True}),
        ("GET", f"/accounts/{gw.account_id}", None),
        ("GET", f"/accounts/{gw.account_id}/keys", None),
        ("GET", f"/accounts/{gw.account_id}/usage", None),
    ]:
        for headers in (ADMIN, None):
            status, answer = await call(http, gw, method, path, body, headers)
            assert status == 404
            assert isinstance(answer["error"], str)


@pytest.mark.parametrize(
    "headers",
    [
        None,
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Bearer {ADMIN_TOKEN}x"},
        {"Authorization": f"Bearer {ADMIN_TOKEN[:-1]}"},
        {"Authorization": f"Basic {ADMIN_TOKEN}"},
        {"Authorization": ADMIN_TOKEN},
        {"Authorization": "Bearer "},
    ],
)
async def test_admin_api_needs_the_token(gw, http, headers):
    routes = [
        ("POST", "/accounts", {"tier": "free", "developer": True}),
        ("GET", f"/accounts/{gw.account_id}", None),
        ("GET", "/accounts/acct_nope", None),  # 401 too: existence is not revealed
        ("PATCH", f"/accounts/{gw.account_id}", {"disabled": True}),
        ("POST", f"/accounts/{gw.account_id}/keys", {"name": "x"}),
        ("GET", f"/accounts/{gw.account_id}/keys", None),
        ("DELETE", "/keys/key_nope", None),
        ("GET", f"/accounts/{gw.account_id}/usage", None),
        ("POST", f"/accounts/{gw.account_id}/usage", {"tokens": 5, "source": "web"}),
    ]
    for method, path, body in routes:
        status, answer = await call(http, gw, method, path, body, headers)
        assert status == 401, (method, path)
        assert isinstance(answer["error"], str)
    # Nothing of the above happened.
    account = await admin(http, gw, "GET", f"/accounts/{gw.account_id}")
    assert account["disabled"] is False
    assert len((await admin(http, gw, "GET", f"/accounts/{gw.account_id}/keys"))["data"]) == 1
    assert (await admin(http, gw, "GET", f"/accounts/{gw.account_id}/usage"))["used"] == 0


async def test_admin_token_of_undecodable_bytes_is_401(gw):
    """aiohttp keeps header bytes that are not UTF-8 as surrogates: encoding them was a 500."""
    for value in (b"Bearer \xff\xfe", b"Bearer " + ADMIN_TOKEN.encode() + b"\xff", b"\xff"):
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.server.port)
        writer.write(
            b"GET /admin/v1/accounts/" + gw.account_id.encode() + b" HTTP/1.1\r\nHost: x\r\n"
            b"Connection: close\r\nAuthorization: " + value + b"\r\n\r\n"
        )
        raw = await asyncio.wait_for(reader.read(-1), 10)
        writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 401 "), (value, raw)
        assert orjson.loads(body) == {"error": "Invalid or missing admin token."}


# -- accounts ----------------------------------------------------------------------------


async def test_create_and_get_account(gw, http):
    before = int(time.time())
    status, account = await call(
        http, gw, "POST", "/accounts", {"tier": "free", "developer": True, "email": "a@b.c"}
    )
    assert status == 201
    assert set(account) == ACCOUNT_FIELDS
    assert account["id"]
    assert account["email"] == "a@b.c"
    assert account["tier"] == "free"
    assert account["developer"] is True
    assert account["disabled"] is False
    assert account["monthly_token_limit"] is None
    assert account["requests_per_minute"] is None
    assert before <= account["created_at"] <= time.time() + 1
    assert await admin(http, gw, "GET", f"/accounts/{account['id']}") == account

    status, other = await call(
        http, gw, "POST", "/accounts", {"tier": "premium", "developer": False}
    )
    assert status == 201
    assert set(other) == ACCOUNT_FIELDS
    assert other["id"] != account["id"]
    assert (other["email"], other["tier"], other["developer"]) == (None, "premium", False)

    # Overrides and the disabled flag may be set at creation too.
    body = {"developer": True, "disabled": True, "monthly_token_limit": 9, "requests_per_minute": 3}
    status, third = await call(http, gw, "POST", "/accounts", body)
    assert status == 201
    assert {k: third[k] for k in body} == body
    assert third["tier"] == "free"  # the default
    key = await admin(http, gw, "POST", f"/accounts/{third['id']}/keys", {"name": "k"})
    assert (await chat(http, gw, key["key"]))[0] == 403


@pytest.mark.parametrize(
    "body",
    [
        {"tier": "gold", "developer": True},
        {"tier": None, "developer": True},
        {"tier": 1, "developer": True},
        {"tier": "free", "developer": "true"},
        {"tier": "free", "developer": 1},
        {"tier": "free", "developer": None},
        {"tier": "free", "developer": True, "disabled": "no"},
        {"tier": "free", "developer": True, "plan": "x"},
        {"tier": "free", "developer": True, "id": "acct_mine"},
        {"tier": "free", "developer": True, "email": 5},
        {"tier": "free", "developer": True, "monthly_token_limit": -1},
        {"tier": "free", "developer": True, "requests_per_minute": 0},
        {"tier": "free", "developer": True, "monthly_token_limit": MAX_LIMIT + 1},
        {"tier": "free", "developer": True, "requests_per_minute": 2**64 - 1},
        b"{not json",
        b"[1, 2]",
    ],
)
async def test_create_account_validation(gw, http, body):
    status, answer = await call(http, gw, "POST", "/accounts", body)
    assert status == 400
    assert set(answer) == {"error"}
    assert isinstance(answer["error"], str) and answer["error"]


async def test_unknown_account_is_404(gw, http):
    for method, path, body in [
        ("GET", "/accounts/acct_nope", None),
        ("PATCH", "/accounts/acct_nope", {"disabled": True}),
        ("POST", "/accounts/acct_nope/keys", {"name": "x"}),
        ("GET", "/accounts/acct_nope/keys", None),
        ("GET", "/accounts/acct_nope/usage", None),
        ("POST", "/accounts/acct_nope/usage", {"tokens": 1, "source": "web"}),
    ]:
        status, answer = await call(http, gw, method, path, body)
        assert status == 404, (method, path)
        assert isinstance(answer["error"], str)
    status, _ = await call(http, gw, "GET", "/accounts/acct_nope")
    assert status == 404  # and a PATCH of a missing account did not create it


async def test_patch_each_field_and_back_to_tier(gw, http):
    account = await admin(http, gw, "POST", "/accounts", {"tier": "free", "developer": False})
    path = f"/accounts/{account['id']}"
    changes: list[tuple[dict[str, Any], dict[str, Any]]] = [
        ({"tier": "premium"}, {"tier": "premium"}),
        ({"developer": True}, {"developer": True}),
        ({"disabled": True}, {"disabled": True}),
        ({"monthly_token_limit": 5000}, {"monthly_token_limit": 5000}),
        ({"monthly_token_limit": 0}, {"monthly_token_limit": 0}),
        ({"requests_per_minute": 7}, {"requests_per_minute": 7}),
        ({"disabled": False, "developer": False}, {"disabled": False, "developer": False}),
        ({"monthly_token_limit": None}, {"monthly_token_limit": None}),
        ({"requests_per_minute": None}, {"requests_per_minute": None}),
        ({"tier": "free"}, {"tier": "free"}),
        ({}, {}),
    ]
    expected = dict(account)
    for body, effect in changes:
        expected.update(effect)
        answer = await admin(http, gw, "PATCH", path, body)
        assert answer == expected, body
        assert await admin(http, gw, "GET", path) == expected, body

    # After the null, the tier's values apply again: the usage view shows the tier's limit.
    usage = await admin(http, gw, "GET", path + "/usage")
    assert usage["limit"] == FREE_TOKENS


@pytest.mark.parametrize(
    "body",
    [
        {"tier": "gold"},
        {"developer": "no"},
        {"disabled": 0},
        {"monthly_token_limit": -5},
        {"monthly_token_limit": 1.5},
        {"monthly_token_limit": "10"},
        {"monthly_token_limit": True},
        {"requests_per_minute": 0},
        # Past what the scripts' Lua numbers hold: 2**64 - 1 requests a minute went out as
        # `x-ratelimit-limit-requests: -9223372036854775808`.
        {"monthly_token_limit": MAX_LIMIT + 1},
        {"monthly_token_limit": 2**64 - 1},
        {"requests_per_minute": MAX_LIMIT + 1},
        {"requests_per_minute": 2**63},
        {"requests_per_minute": 2**64 - 1},
        {"id": "acct_other"},
        {"created_at": 1},
        {"disabled": True, "nope": 1},  # one bad field: nothing is applied
        b"null",
    ],
)
async def test_patch_validation(gw, http, body):
    path = f"/accounts/{gw.account_id}"
    before = await admin(http, gw, "GET", path)
    status, answer = await call(http, gw, "PATCH", path, body)
    assert status == 400
    assert isinstance(answer["error"], str)
    assert await admin(http, gw, "GET", path) == before


async def test_largest_overrides_hold(gw, http):
    path = f"/accounts/{gw.account_id}"
    await admin(
        http,
        gw,
        "PATCH",
        path,
        {"monthly_token_limit": MAX_LIMIT, "requests_per_minute": MAX_LIMIT},
    )
    status, _, headers = await chat(http, gw)
    assert status == 200
    assert headers["x-ratelimit-limit-requests"] == str(MAX_LIMIT)
    assert headers["x-ratelimit-remaining-requests"] == str(MAX_LIMIT - 1)
    usage = await admin(http, gw, "GET", path + "/usage")
    assert (usage["limit"], usage["remaining"]) == (MAX_LIMIT, MAX_LIMIT - PER_REQUEST)


async def test_disable_and_developer_act_at_once(gw, http):
    path = f"/accounts/{gw.account_id}"
    assert (await chat(http, gw))[0] == 200

    await admin(http, gw, "PATCH", path, {"disabled": True})
    status, answer, _ = await chat(http, gw)
    assert status == 403
    assert "disabled" in answer["error"]
    for sub in ("/usage", "/models"):
        async with http.get(gw.api + sub, headers=gw.auth()) as resp:
            assert resp.status == 403

    await admin(http, gw, "PATCH", path, {"disabled": False})
    assert (await chat(http, gw))[0] == 200

    await admin(http, gw, "PATCH", path, {"developer": False})
    status, answer, _ = await chat(http, gw)
    assert status == 403
    assert "developer" in answer["error"]

    await admin(http, gw, "PATCH", path, {"developer": True})
    assert (await chat(http, gw))[0] == 200

    # Refused requests were not charged, and did not reach the provider.
    usage = await admin(http, gw, "GET", path + "/usage")
    assert (usage["requests"], usage["used"]) == (3, 3 * PER_REQUEST)


async def test_requests_per_minute_override(gw, http, fake_openai: FakeUpstream):
    path = f"/accounts/{gw.account_id}"
    status, _, headers = await chat(http, gw)
    assert status == 200
    assert headers["x-ratelimit-limit-requests"] == str(PREMIUM_RPM)

    # A fresh key, so that the request above does not count against the override.
    key = (await admin(http, gw, "POST", path + "/keys", {"name": "rpm"}))["key"]
    await admin(http, gw, "PATCH", path, {"requests_per_minute": 2})
    sent = len(fake_openai.record.requests)
    results = await asyncio.gather(*(chat(http, gw, key) for _ in range(8)))
    assert sorted(r[0] for r in results) == [200, 200] + [429] * 6
    assert len(fake_openai.record.requests) == sent + 2
    admitted = [r[2] for r in results if r[0] == 200]
    assert {h["x-ratelimit-limit-requests"] for h in admitted} == {"2"}
    assert sorted(h["x-ratelimit-remaining-requests"] for h in admitted) == ["0", "1"]
    for status, answer, headers in results:
        if status == 429:
            assert answer["error"] != QUOTA_MESSAGE
            assert "rate limit" in answer["error"].lower()
            assert 1 <= int(headers["Retry-After"]) <= 60
            assert headers["x-ratelimit-limit-requests"] == "2"
            assert headers["x-ratelimit-remaining-requests"] == "0"
            assert re.fullmatch(r"\d+(\.\d+)?m?s", headers["x-ratelimit-reset-requests"])

    # null: back to the tier's rate, at once.
    await admin(http, gw, "PATCH", path, {"requests_per_minute": None})
    status, _, headers = await chat(http, gw, key)
    assert status == 200
    assert headers["x-ratelimit-limit-requests"] == str(PREMIUM_RPM)


async def test_monthly_token_limit_override(gw, http):
    path = f"/accounts/{gw.account_id}"
    assert (await chat(http, gw))[0] == 200
    await admin(http, gw, "PATCH", path, {"monthly_token_limit": PER_REQUEST})
    status, answer, _ = await chat(http, gw)
    assert status == 429
    assert answer == {"error": QUOTA_MESSAGE}
    usage = await admin(http, gw, "GET", path + "/usage")
    assert (usage["limit"], usage["used"], usage["remaining"]) == (PER_REQUEST, PER_REQUEST, 0)

    await admin(http, gw, "PATCH", path, {"monthly_token_limit": 0})
    status, answer, _ = await chat(http, gw)
    assert (status, answer) == (429, {"error": QUOTA_MESSAGE})

    await admin(http, gw, "PATCH", path, {"monthly_token_limit": None})  # premium: unlimited
    assert (await chat(http, gw))[0] == 200
    usage = await admin(http, gw, "GET", path + "/usage")
    assert (usage["limit"], usage["used"], usage["remaining"]) == (None, 2 * PER_REQUEST, None)


# -- keys --------------------------------------------------------------------------------


async def test_key_is_shown_once_and_stored_only_as_digest(gw, http, redis_url):
    before = int(time.time())
    status, created = await call(
        http, gw, "POST", f"/accounts/{gw.account_id}/keys", {"name": "Production Server"}
    )
    assert status == 201
    assert set(created) == {"id", "name", "key", "prefix", "created_at"}
    secret = created["key"]
    assert re.fullmatch(r"woozlit_[A-Za-z0-9_-]+", secret)
    assert len(secret) - len("woozlit_") >= 32  # 32 URL-safe characters carry 192 bits
    assert secret.startswith(created["prefix"]) and len(created["prefix"]) < len(secret) - 16
    assert created["name"] == "Production Server"
    assert before <= created["created_at"] <= time.time() + 1
    other = await admin(http, gw, "POST", f"/accounts/{gw.account_id}/keys", {"name": "b"})
    assert other["key"] != secret and other["id"] != created["id"]

    listing = await admin(http, gw, "GET", f"/accounts/{gw.account_id}/keys")
    assert sorted(k["name"] for k in listing["data"]) == ["Production Server", "b", "test"]
    for item in listing["data"]:
        assert set(item) == {"id", "name", "prefix", "created_at", "last_used_at", "revoked"}
        assert item["revoked"] is False
    mine = next(k for k in listing["data"] if k["id"] == created["id"])
    assert mine["prefix"] == created["prefix"]
    assert mine["created_at"] == created["created_at"]
    assert mine["last_used_at"] is None

    text = orjson.dumps(listing).decode()
    for key in (secret, other["key"], gw.api_key):
        assert key not in text
        assert hashlib.sha256(key.encode()).hexdigest() not in text
    assert "digest" not in text

    used_at = int(time.time())
    assert (await chat(http, gw, secret))[0] == 200
    listing = await admin(http, gw, "GET", f"/accounts/{gw.account_id}/keys")
    last_used = {k["id"]: k["last_used_at"] for k in listing["data"]}
    assert used_at <= last_used[created["id"]] <= time.time() + 1
    assert last_used[other["id"]] is None

    contents = await redis_contents(redis_url)
    assert contents  # the scan saw the store
    for key in (secret, other["key"], gw.api_key):
        body = key.removeprefix("woozlit_")
        assert not any(body in value for value in contents)


@pytest.mark.parametrize("body", [{}, {"name": ""}, {"name": "  "}, {"name": 5}, b"[]"])
async def test_key_name_is_required(gw, http, body):
    status, answer = await call(http, gw, "POST", f"/accounts/{gw.account_id}/keys", body)
    assert status == 400
    assert isinstance(answer["error"], str)


async def test_revoke_acts_at_once_on_every_instance(
    gw, gateway: GatewayFactory, fake_openai: FakeUpstream, redis_url: str, http
):
    second = await gateway(
        {"openai": openai_provider(fake_openai.url)},
        MODELS,
        redis_url=redis_url,
        same_account_as=gw,
    )
    spare = await admin(http, gw, "POST", f"/accounts/{gw.account_id}/keys", {"name": "spare"})
    # Both instances have seen (and may have cached) the key.
    assert (await chat(http, gw))[0] == 200
    assert (await chat(http, second))[0] == 200
    key_id = next(
        k["id"]
        for k in (await admin(http, gw, "GET", f"/accounts/{gw.account_id}/keys"))["data"]
        if k["name"] == "test"
    )

    async with http.delete(f"{gw.base_url}/admin/v1/keys/{key_id}", headers=ADMIN) as resp:
        assert resp.status == 204
        assert await resp.read() == b""
    for instance in (gw, second):
        status, answer, _ = await chat(http, instance)
        assert status == 401
        assert isinstance(answer["error"], str)
        async with http.get(instance.api + "/usage", headers=instance.auth()) as resp:
            assert resp.status == 401
    # Other keys of the account keep working.
    assert (await chat(http, second, spare["key"]))[0] == 200

    listing = await admin(http, gw, "GET", f"/accounts/{gw.account_id}/keys")
    assert {k["name"]: k["revoked"] for k in listing["data"]} == {"test": True, "spare": False}

    status, answer = await call(http, gw, "DELETE", "/keys/key_nope")
    assert status == 404
    assert isinstance(answer["error"], str)


# -- usage -------------------------------------------------------------------------------


async def test_usage_adds_up(gw, http):
    path = f"/accounts/{gw.account_id}"
    key2 = await admin(http, gw, "POST", path + "/keys", {"name": "second"})
    key1_id = next(
        k["id"]
        for k in (await admin(http, gw, "GET", path + "/keys"))["data"]
        if k["name"] == "test"
    )
    results = await asyncio.gather(
        chat(http, gw, model=MODEL_A),
        chat(http, gw, model=MODEL_A, stream=True),
        chat(http, gw, key2["key"], model=MODEL_B),
    )
    assert [r[0] for r in results] == [200, 200, 200]
    assert results[1][1].rstrip().endswith("data: [DONE]")

    month = this_month()
    usage = await admin(http, gw, "GET", path + "/usage")
    assert {"month", "limit", "used", "remaining", "requests", "by_model", "by_key"} <= set(usage)
    assert usage["month"] == month
    assert (usage["limit"], usage["remaining"]) == (None, None)  # premium
    assert usage["used"] == 3 * PER_REQUEST
    assert usage["requests"] == 3
    assert usage["by_model"] == {MODEL_A: 2 * PER_REQUEST, MODEL_B: PER_REQUEST}
    assert usage["by_key"] == {key1_id: 2 * PER_REQUEST, key2["id"]: PER_REQUEST}
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (
        3 * PROMPT_TOKENS,
        3 * COMPLETION_TOKENS,
    )
    assert await admin(http, gw, "GET", path + f"/usage?month={month}") == usage

    old = await admin(http, gw, "GET", path + "/usage?month=2020-01")
    assert old["month"] == "2020-01"
    assert (old["used"], old["requests"], old["by_model"], old["by_key"]) == (0, 0, {}, {})


BAD_MONTHS = {
    "past-the-last": ("9999-12", "'9999-12'"),  # its reset_at, in year 10000, was a 500
    "year-0": ("0000-01", "'0000-01'"),
    "before-1970": ("1969-12", "'1969-12'"),
    "month-13": ("2026-13", "'2026-13'"),
    "month-0": ("2026-00", "'2026-00'"),
    "one-digit-month": ("2026-1", "'2026-1'"),  # strptime takes it: a key never written
    "two-digit-year": ("26-01", "'26-01'"),
    "five-digit-year": ("10000-01", "'10000-01'"),
    "a-day": ("2026-01-01", "'2026-01-01'"),
    "a-word": ("now", "'now'"),
    "empty": ("", "''"),
    "fullwidth-digits": ("\uff12\uff10\uff12\uff16-11", "'\uff12\uff10\uff12\uff16-11'"),
    "arabic-indic-digits": ("\u0662\u0660\u0662\u0666-11", "'\u0662\u0660\u0662\u0666-11'"),
    "trailing-newline": ("2026-11\n", "'2026-11\n'"),
    "signed": ("+2026-11", "'+2026-11'"),
    "very-long": ("9" * 5000, "'" + "9" * 32 + "...'"),
}


@pytest.mark.parametrize("month, shown", BAD_MONTHS.values(), ids=BAD_MONTHS)
async def test_usage_bad_month(gw, http, month, shown):
    path = f"/accounts/{gw.account_id}/usage?month={quote(month)}"
    assert await call(http, gw, "GET", path) == (400, {"error": MONTH_ERROR.format(shown)})


@pytest.mark.parametrize(
    "month, reset_at", [("1970-01", "1970-02-01T00:00:00Z"), ("9999-11", "9999-12-01T00:00:00Z")]
)
async def test_usage_first_and_last_month(gw, http, month, reset_at):
    usage = await admin(http, gw, "GET", f"/accounts/{gw.account_id}/usage?month={month}")
    assert (usage["month"], usage["used"], usage["reset_at"]) == (month, 0, reset_at)


async def test_charged_usage_counts_against_the_quota(gw, http):
    path = f"/accounts/{gw.account_id}"
    await admin(http, gw, "PATCH", path, {"monthly_token_limit": 10_000})
    assert (await chat(http, gw))[0] == 200

    answer = await admin(
        http, gw, "POST", path + "/usage", {"tokens": 10_000 - PER_REQUEST - 1, "source": "web"}
    )
    assert answer["used"] == 10_000 - 1
    answer = await admin(http, gw, "POST", path + "/usage", {"tokens": 1, "source": "web"})
    assert answer["used"] == 10_000

    status, answer, _ = await chat(http, gw)
    assert (status, answer) == (429, {"error": QUOTA_MESSAGE})
    usage = await admin(http, gw, "GET", path + "/usage")
    assert (usage["used"], usage["remaining"], usage["requests"]) == (10_000, 0, 1)
    assert usage["by_model"] == {MODEL_A: PER_REQUEST}
    async with http.get(gw.api + "/usage", headers=gw.auth()) as resp:
        assert (await resp.json())["remaining"] == 0

    # An unlimited account is charged too.
    await admin(http, gw, "PATCH", path, {"monthly_token_limit": None})
    answer = await admin(http, gw, "POST", path + "/usage", {"tokens": 500, "source": "web"})
    assert answer["used"] == 10_500
    assert (await chat(http, gw))[0] == 200


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"tokens": -1, "source": "web"},
        {"tokens": "10", "source": "web"},
        {"tokens": 1.5, "source": "web"},
        {"tokens": True, "source": "web"},
        {"tokens": 10, "source": ""},
        {"tokens": 10, "source": 7},
        {"tokens": 10, "source": "a:b"},
        {"tokens": 10, "source": "web", "month": "2026-01"},  # not a choice: this month's
        {"tokens": 10**12 + 1, "source": "web"},
        b'{"tokens": 18446744073709551616, "source": "web"}',  # past what orjson reads
        b"[]",
    ],
)
async def test_charge_validation(gw, http, body):
    path = f"/accounts/{gw.account_id}/usage"
    status, answer = await call(http, gw, "POST", path, body)
    assert status == 400
    assert isinstance(answer["error"], str)
    assert (await admin(http, gw, "GET", path))["used"] == 0


async def test_key_holder_sees_the_month(gw, http):
    month = this_month()
    free_id, free_key = await new_account(http, gw, tier="free")
    assert (await chat(http, gw))[0] == 200
    assert (await chat(http, gw, free_key))[0] == 200
    await admin(http, gw, "POST", f"/accounts/{free_id}/usage", {"tokens": 100, "source": "web"})

    for prefix in ("/api/woozlit/v1", "/v1"):
        for key, limit, used in [
            (gw.api_key, None, PER_REQUEST),
            (free_key, FREE_TOKENS, PER_REQUEST + 100),
        ]:
            url = gw.base_url + prefix + "/usage"
            async with http.get(url, headers=gw.auth(key)) as resp:
                assert resp.status == 200
                assert resp.content_type == "application/json"
                assert "x-ratelimit-limit-requests" in resp.headers
                body = await resp.json()
            assert body == {
                "month": month,
                "limit": limit,
                "used": used,
                "remaining": None if limit is None else limit - used,
                "reset_at": month_after(month),
            }
        async with http.get(gw.base_url + prefix + "/usage") as resp:
            assert resp.status == 401
            error = (await resp.json())["error"]
            if prefix == "/v1":  # the OpenAI-compatible profile
                assert error["code"] == "invalid_api_key"
                error = error["message"]
            assert isinstance(error, str)


# -- the CLI -----------------------------------------------------------------------------


async def cli(*args: str, redis_url: str | None, **env: str) -> tuple[int, Any, str]:
    """(exit status, JSON stdout or None, stderr) of `python -m proxy ARGS`."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("WOOZLIT_")}
    if redis_url:
        environ["WOOZLIT_REDIS_URL"] = redis_url
    environ.update(env)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        *args,
        cwd=ROOT,
        env=environ,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, orjson.loads(out) if out.strip() else None, err.decode()


async def test_cli_round_trip(gw, http, redis_url):
    config = str(ROOT / "config" / "woozlit.yaml")
    by_flag = {"redis_url": redis_url}
    by_env = {"redis_url": redis_url, "WOOZLIT_CONFIG": config}

    (rc, account, err), missing, no_store = await asyncio.gather(
        cli(
            *("account", "create", "--tier", "free", "--developer", "true", "--disabled", "false"),
            *("--email", "dev@example.com", "--requests-per-minute", "5", "--config", config),
            **by_flag,
        ),
        cli("account", "show", "acct_nope", **by_env),
        cli("usage", gw.account_id, redis_url=None, WOOZLIT_CONFIG=config),
    )
    assert rc == 0, err
    assert set(account) == ACCOUNT_FIELDS
    assert (account["tier"], account["developer"], account["disabled"]) == ("free", True, False)
    assert (account["email"], account["requests_per_minute"]) == ("dev@example.com", 5)
    assert await admin(http, gw, "GET", f"/accounts/{account['id']}") == account

    rc, out, err = missing
    assert rc != 0 and out is None
    assert orjson.loads(err) == {"error": "No account 'acct_nope'."}

    rc, out, err = no_store
    assert rc != 0 and out is None
    assert "WOOZLIT_REDIS_URL" in err

    account_id = account["id"]
    (rc1, shown, err1), (rc2, key, err2) = await asyncio.gather(
        cli("account", "show", account_id, **by_env),
        cli("key", "create", account_id, "--name", "x", **by_env),
    )
    assert (rc1, rc2) == (0, 0), err1 + err2
    assert shown == account
    assert set(key) == {"id", "name", "key", "prefix", "created_at"}
    assert key["name"] == "x" and key["key"].startswith("woozlit_")

    # The CLI's key works on the gateway, and its use shows in the CLI's usage.
    assert (await chat(http, gw, key["key"]))[0] == 200
    (
        (rc1, usage, err1),
        (rc2, old, err2),
        (rc3, keys, err3),
        (rc4, updated, err4),
    ) = await asyncio.gather(
        cli("usage", account_id, **by_env),
        cli("usage", account_id, "--month", "2026-01", **by_env),
        cli("key", "list", account_id, **by_env),
        cli(
            *("account", "update", account_id, "--disabled", "true"),
            *("--requests-per-minute", "-1"),  # -1: back to the tier's value
            **by_env,
        ),
    )
    assert (rc1, rc2, rc3, rc4) == (0, 0, 0, 0), err1 + err2 + err3 + err4
    assert usage["month"] == this_month()
    assert (usage["limit"], usage["used"], usage["requests"]) == (FREE_TOKENS, PER_REQUEST, 1)
    assert usage["remaining"] == FREE_TOKENS - PER_REQUEST
    assert usage["by_key"] == {key["id"]: PER_REQUEST}
    assert (old["month"], old["used"], old["requests"]) == ("2026-01", 0, 0)
    assert [(k["id"], k["name"], k["revoked"]) for k in keys["data"]] == [(key["id"], "x", False)]
    assert keys["data"][0]["last_used_at"] is not None
    assert key["key"] not in orjson.dumps(keys).decode()
    assert updated == {**account, "disabled": True, "requests_per_minute": None}
    assert (await chat(http, gw, key["key"]))[0] == 403

    rc, out, err = await cli("key", "revoke", key["id"], **by_env)
    assert rc == 0, err
    assert out is not None
    await admin(http, gw, "PATCH", f"/accounts/{account_id}", {"disabled": False})
    assert (await chat(http, gw, key["key"]))[0] == 401
    listing = await admin(http, gw, "GET", f"/accounts/{account_id}/keys")
    assert [k["revoked"] for k in listing["data"]] == [True]


async def test_cli_bad_input_is_an_error_not_a_traceback(gw, redis_url):
    config = str(ROOT / "config" / "woozlit.yaml")
    env = {"redis_url": redis_url, "WOOZLIT_CONFIG": config}
    account = gw.account_id
    cases = {
        ("usage", account, "--month", "9999-12"): MONTH_ERROR.format("'9999-12'"),
        ("usage", account, "--month", "1969-12"): MONTH_ERROR.format("'1969-12'"),
        ("usage", account, "--month", ""): MONTH_ERROR.format("''"),
        ("account", "update", account, "--monthly-token-limit", str(10**30)): (
            f"'monthly_token_limit' must be an integer from 0 to {MAX_LIMIT}, or null."
        ),
        ("account", "create", "--requests-per-minute", str(2**64 - 1)): (
            f"'requests_per_minute' must be an integer from 1 to {MAX_LIMIT}, or null."
        ),
    }
    results = await asyncio.gather(*(cli(*args, **env) for args in cases))
    for (args, message), (rc, out, err) in zip(cases.items(), results, strict=True):
        assert (rc, out) == (1, None), (args, err)
        assert orjson.loads(err) == {"error": message}, args

    bad_urls = ["redis://127.0.0.1:99999/0", "http://127.0.0.1/0", "redis+cluster://"]
    results = await asyncio.gather(
        *(cli("usage", account, redis_url=url, WOOZLIT_CONFIG=config) for url in bad_urls)
    )
    for url, (rc, out, err) in zip(bad_urls, results, strict=True):
        assert rc != 0 and out is None, url
        assert "WOOZLIT_REDIS_URL is not a Redis URL" in err and "Traceback" not in err, err


@pytest.mark.parametrize(
    "args",
    [["--port", "70000"], ["--port", "-1"], ["--port", "http"], ["--workers", "0"]],
    ids=["port-past-65535", "port-negative", "port-word", "no-workers"],
)
def test_serve_refuses_bad_numbers(args, capsys):
    """Refused by the parser: uvloop bound port 70000 as 4464, and -1 was a traceback."""
    with pytest.raises(SystemExit) as exc:
        parser().parse_args(["serve", *args])
    assert exc.value.code == 2
    assert "expected an integer" in capsys.readouterr().err
