"""`woozlit-proxy check-models`: does each provider still serve the models we route to it?

Providers retire models on their own schedule, and a retired model answers every request
with an error (which the gateway turns into a 503 and a fallback, but still). This asks each
configured provider's model list once, with the gateway's own key, and reports every
deployment whose upstream model is not on it:

- OpenAI-compatible: `GET {base_url}/models`, `Authorization: Bearer <key>`;
- Anthropic: `GET {base_url}/v1/models`, `x-api-key` and `anthropic-version`, paged with
  `after_id` while `has_more`;
- Gemini: `GET {base_url}/v1beta/models?pageSize=1000`, `x-goog-api-key`, paged with
  `nextPageToken`; names come as `models/<id>`.

A provider that needs a key and has none, or that cannot be asked (unreachable, an error
status, an answer of the wrong shape), is reported as not checked. Nothing printed carries
a key or a URL: the provider's name stands for both.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from proxy.config import Config, ProviderConfig
from proxy.providers.anthropic import API_VERSION as ANTHROPIC_VERSION

# An Anthropic alias (`claude-haiku-4-5`) is not listed; its dated snapshot is.
SNAPSHOT = re.compile(r"-\d{8}$")
MAX_PAGES = 100  # a provider paging forever is a provider we stop asking
MAX_LIST_BYTES = 16 << 20  # one page of a model list (OpenAI's whole list is ~30 KB)


class NotChecked(Exception):
    """The provider's model list could not be had; the message says why, without secrets."""


@dataclass(frozen=True, slots=True)
class Row:
    public: str
    provider: str
    model: str
    status: str  # "listed", "missing" or "not checked"
    detail: str = ""

    def line(self) -> str:
        detail = f" ({self.detail})" if self.detail else ""
        return f"{self.public}  {self.provider}/{self.model}  {self.status}{detail}"


async def _get(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    params: dict[str, str],
) -> dict[str, Any]:
    try:
        # Never followed: a redirect would take the key headers (x-api-key, x-goog-api-key)
        # to whatever host it names; aiohttp strips only Authorization.
        async with session.get(url, headers=headers, params=params, allow_redirects=False) as resp:
            if 300 <= resp.status < 400:
                raise NotChecked(f"the model list redirects elsewhere (HTTP {resp.status})")
            if resp.status != 200:
                raise NotChecked(f"the model list answered HTTP {resp.status}")
            body = await resp.content.read(MAX_LIST_BYTES + 1)
            while len(body) <= MAX_LIST_BYTES and not resp.content.at_eof():
                body += await resp.content.read(MAX_LIST_BYTES + 1 - len(body))
            if len(body) > MAX_LIST_BYTES:
                raise NotChecked(f"the model list is over {MAX_LIST_BYTES} bytes")
        payload = orjson.loads(body)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise NotChecked(f"unreachable: {type(exc).__name__}") from exc
    except orjson.JSONDecodeError as exc:  # not JSON, or nested past what orjson reads
        raise NotChecked("the model list is not JSON") from exc
    if not isinstance(payload, dict):
        raise NotChecked("the model list is not a JSON object")
    return payload


def _ids(items: Any, key: str, prefix: str = "") -> set[str]:
    if not isinstance(items, list):
        raise NotChecked("the model list has no list of models")
    return {
        item[key].removeprefix(prefix)
        for item in items
        if isinstance(item, dict) and isinstance(item.get(key), str)
    }


async def _openai(session: aiohttp.ClientSession, p: ProviderConfig) -> set[str]:
    headers = {**p.headers}
    if p.api_key:
        headers["Authorization"] = f"Bearer {p.api_key}"
    payload = await _get(session, f"{p.base_url}/models", headers, {})
    return _ids(payload.get("data"), "id")


async def _anthropic(session: aiohttp.ClientSession, p: ProviderConfig) -> set[str]:
    headers = {**p.headers, "anthropic-version": ANTHROPIC_VERSION}
    if p.api_key:
        headers["x-api-key"] = p.api_key
    models: set[str] = set()
    params = {"limit": "1000"}
    for _ in range(MAX_PAGES):
        payload = await _get(session, f"{p.base_url}/v1/models", headers, params)
        models |= _ids(payload.get("data"), "id")
        last = payload.get("last_id")
        if payload.get("has_more") is not True or not isinstance(last, str):
            return models
        params = {"limit": "1000", "after_id": last}
    raise NotChecked(f"the model list goes on past {MAX_PAGES} pages")


async def _gemini(session: aiohttp.ClientSession, p: ProviderConfig) -> set[str]:
    headers = {**p.headers}
    if p.api_key:
        headers["x-goog-api-key"] = p.api_key  # never `?key=`: URLs get logged
    models: set[str] = set()
    params = {"pageSize": "1000"}
    for _ in range(MAX_PAGES):
        payload = await _get(session, f"{p.base_url}/v1beta/models", headers, params)
        models |= _ids(payload.get("models"), "name", "models/")
        token = payload.get("nextPageToken")
        if not isinstance(token, str) or not token:
            return models
        params = {"pageSize": "1000", "pageToken": token}
    raise NotChecked(f"the model list goes on past {MAX_PAGES} pages")


LISTERS: dict[str, Callable[[aiohttp.ClientSession, ProviderConfig], Awaitable[set[str]]]] = {
    "openai": _openai,
    "anthropic": _anthropic,
    "gemini": _gemini,
}


async def _listing(
    session: aiohttp.ClientSession, p: ProviderConfig, deadline: float
) -> set[str] | str:
    """The provider's models, or why they could not be had within `deadline` seconds."""
    if not p.api_key and p.needs_key:
        return f"no API key: set {p.api_key_env or 'its api_key'}"
    try:
        async with asyncio.timeout(deadline):
            return await LISTERS[p.kind](session, p)
    except NotChecked as exc:
        return str(exc)
    except TimeoutError:
        return f"no whole model list within {deadline:g} s"


def _status(model: str, listed: set[str]) -> tuple[str, str]:
    name = model.removeprefix("models/")
    if name in listed:
        return "listed", ""
    snapshots = sorted(m for m in listed if SNAPSHOT.search(m) and SNAPSHOT.sub("", m) == name)
    if snapshots:
        return "listed", f"alias of {snapshots[-1]}"
    return "missing", "the provider does not list it"


async def check_models(config: Config, seconds: float = 30.0) -> list[Row]:
    """One row per deployment of every public model, in the config's order."""
    used = {d.provider for deployments in config.models.values() for d in deployments}
    client_timeout = aiohttp.ClientTimeout(total=seconds)  # per request
    async with aiohttp.ClientSession(timeout=client_timeout) as session:
        names = sorted(used)
        found = await asyncio.gather(
            *(_listing(session, config.providers[name], 4 * seconds) for name in names)
        )
    listings = dict(zip(names, found, strict=True))
    rows = []
    for public, deployments in config.models.items():
        for d in deployments:
            listing = listings[d.provider]
            if isinstance(listing, str):
                rows.append(Row(public, d.provider, d.model, "not checked", listing))
            else:
                rows.append(Row(public, d.provider, d.model, *_status(d.model, listing)))
    return rows


def report(rows: list[Row]) -> tuple[list[str], int]:
    """The lines to print and the exit status: 1 when a model is missing or unchecked."""
    lines = [row.line() for row in rows]
    bad = sum(row.status != "listed" for row in rows)
    lines.append(
        f"{len(rows) - bad} of {len(rows)} deployments listed by their provider"
        + (f"; {bad} missing or not checked" if bad else "")
    )
    return lines, 1 if bad else 0
