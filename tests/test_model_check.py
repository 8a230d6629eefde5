"""`woozlit-proxy check-models` against the fake OpenAI, DeepSeek, Anthropic and Gemini model
lists: every deployment listed, missing, or not checked (no key, unreachable, refused)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.config import parse_config
from proxy.model_check import Row, check_models, report
from tests.conftest import DEFAULT_TIERS, FakeUpstream, free_port
from tests.fakes.anthropic_upstream import create_fake_anthropic
from tests.fakes.gemini_upstream import create_fake_gemini

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-check-models-secret"
# More than one page (1,000) of each, the model asked for on the last page.
CLAUDES = [(f"claude-old-{i}", f"Old {i}", f"2025-01-01T00:{i // 60:02}:{i % 60:02}Z")
           for i in range(1000)]  # fmt: skip
CLAUDES += [
    ("claude-haiku-4-5-20251001", "Claude Haiku 4.5", "2020-01-01T00:00:00Z"),  # oldest: last
    ("claude-sonnet-4-6", "Claude Sonnet 4.6", "2026-02-17T00:00:00Z"),
]
GEMINIS = (*(f"gemini-old-{i}" for i in range(1000)), "gemini-3.5-flash")


async def serve(app: web.Application) -> AsyncIterator[str]:
    server = TestServer(app)
    await server.start_server()
    yield str(server.make_url("")).rstrip("/")
    await server.close()


@pytest.fixture
async def anthropic_url() -> AsyncIterator[str]:
    async for url in serve(create_fake_anthropic(KEY, CLAUDES)):
        yield url


@pytest.fixture
async def gemini_url() -> AsyncIterator[str]:
    async for url in serve(create_fake_gemini(KEY, 0.0, GEMINIS)):
        yield url


@pytest.fixture
def fake(fake_openai: FakeUpstream) -> FakeUpstream:
    fake_openai.record.models = ["gpt-4.1", "gpt-4o-mini", "deepseek-v4-flash"]
    fake_openai.record.api_key = KEY
    return fake_openai


def raw_config(fake: FakeUpstream, anthropic_url: str, gemini_url: str, **models: Any) -> dict:
    return {
        "providers": {
            "openai": {"kind": "openai", "base_url": fake.url, "api_key": KEY},
            "deepseek": {
                "kind": "openai",
                "base_url": fake.url.removesuffix("/v1"),
                "api_key": KEY,
            },
            "anthropic": {"kind": "anthropic", "base_url": anthropic_url, "api_key": KEY},
            "google": {"kind": "gemini", "base_url": gemini_url, "api_key": KEY},
        },
        "models": models
        or {
            "woozlit/gpt-4o": [
                {"provider": "openai", "model": "gpt-4.1"},
                {"provider": "deepseek", "model": "deepseek-v4-flash"},
            ],
            "woozlit/claude-3-5-haiku-20241022": [
                {"provider": "anthropic", "model": "claude-haiku-4-5"}  # an alias
            ],
            "woozlit/claude-3-5-sonnet-20241022": [
                {"provider": "anthropic", "model": "claude-sonnet-4-6"}
            ],
            "woozlit/gemini-1.5-flash": [{"provider": "google", "model": "gemini-3.5-flash"}],
        },
        "tiers": DEFAULT_TIERS,
    }


async def test_every_deployment_listed_is_exit_0(fake, anthropic_url, gemini_url):
    config = parse_config(raw_config(fake, anthropic_url, gemini_url), "t.yaml", {})
    rows = await check_models(config)
    assert [(r.public, r.provider, r.model, r.status) for r in rows] == [
        ("woozlit/gpt-4o", "openai", "gpt-4.1", "listed"),
        ("woozlit/gpt-4o", "deepseek", "deepseek-v4-flash", "listed"),
        ("woozlit/claude-3-5-haiku-20241022", "anthropic", "claude-haiku-4-5", "listed"),
        ("woozlit/claude-3-5-sonnet-20241022", "anthropic", "claude-sonnet-4-6", "listed"),
        ("woozlit/gemini-1.5-flash", "google", "gemini-3.5-flash", "listed"),
    ]
    assert rows[2].detail == "alias of claude-haiku-4-5-20251001"
    lines, status = report(rows)
    assert status == 0
    assert len(lines) == len(rows) + 1


async def test_models_the_providers_do_not_list_are_missing(fake, anthropic_url, gemini_url):
    models = {
        "woozlit/gpt-4-turbo": [{"provider": "openai", "model": "gpt-4-turbo"}],
        "woozlit/deepseek-chat": [{"provider": "deepseek", "model": "deepseek-chat"}],
        "woozlit/claude-3-opus-20240229": [
            {"provider": "anthropic", "model": "claude-3-opus-20240229"}
        ],
        "woozlit/gemini-1.5-pro": [{"provider": "google", "model": "gemini-1.5-pro"}],
        "woozlit/gpt-4o-mini": [{"provider": "openai", "model": "gpt-4o-mini"}],
    }
    raw = raw_config(fake, anthropic_url, gemini_url, **models)
    rows = await check_models(parse_config(raw, "t.yaml", {}))
    assert [r.status for r in rows] == ["missing"] * 4 + ["listed"]
    lines, status = report(rows)
    assert status == 1
    assert lines[0] == (
        "woozlit/gpt-4-turbo  openai/gpt-4-turbo  missing (the provider does not list it)"
    )


async def test_providers_that_cannot_be_asked_are_not_checked(fake, anthropic_url, gemini_url):
    raw = raw_config(fake, anthropic_url, gemini_url)
    providers = raw["providers"]
    providers["openai"] = {"kind": "openai", "base_url": "https://api.openai.com/v1",
                           "api_key": "${NO_SUCH_KEY:-}"}  # fmt: skip
    providers["deepseek"]["base_url"] = f"http://127.0.0.1:{free_port()}"
    providers["anthropic"]["api_key"] = "sk-wrong"
    providers["google"]["api_key"] = "wrong"
    rows = await check_models(parse_config(raw, "t.yaml", {}))
    assert [(r.status, r.detail) for r in rows] == [
        ("not checked", "no API key: set NO_SUCH_KEY"),
        ("not checked", "unreachable: ClientConnectorError"),
        ("not checked", "the model list answered HTTP 401"),
        ("not checked", "the model list answered HTTP 401"),
        ("not checked", "the model list answered HTTP 400"),
    ]
    assert report(rows)[1] == 1
    assert fake.record.requests == []  # the list only: no chat request was sent


SEEN = web.AppKey("seen", list)


def hostile_lists() -> web.Application:
    """Model lists that redirect elsewhere (with the keys, if followed), nest past what a
    parser reads, or never end."""
    seen: list[dict[str, str]] = []

    async def redirect(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        raise web.HTTPFound("http://127.0.0.2:1/steal")

    async def nested(request: web.Request) -> web.Response:
        return web.Response(body=b"[" * 100_000 + b"]" * 100_000)

    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        while True:
            await resp.write(b" " * 65536)

    app = web.Application()
    app[SEEN] = seen
    app.router.add_get("/redirect/v1/models", redirect)
    app.router.add_get("/redirect/v1beta/models", redirect)
    app.router.add_get("/nested/models", nested)
    app.router.add_get("/endless/models", endless)
    return app


async def test_hostile_model_lists_are_not_checked_and_keep_the_keys():
    app = hostile_lists()
    async for url in serve(app):
        raw = {
            "providers": {
                "a": {"kind": "anthropic", "base_url": url + "/redirect", "api_key": "sk-ant-x"},
                "g": {"kind": "gemini", "base_url": url + "/redirect", "api_key": "AIza-x"},
                "n": {"kind": "openai", "base_url": url + "/nested", "api_key": "sk-n"},
                "e": {"kind": "openai", "base_url": url + "/endless", "api_key": "sk-e"},
            },
            "models": {f"woozlit/{p}": [{"provider": p, "model": "m"}] for p in "agne"},
            "tiers": DEFAULT_TIERS,
        }
        rows = await check_models(parse_config(raw, "t.yaml", {}), seconds=5)
    details = {r.provider: (r.status, r.detail) for r in rows}
    assert details["a"] == ("not checked", "the model list redirects elsewhere (HTTP 302)")
    assert details["g"] == ("not checked", "the model list redirects elsewhere (HTTP 302)")
    assert details["n"] == ("not checked", "the model list is not JSON")
    assert details["e"][0] == "not checked" and "over" in details["e"][1]
    assert len(app[SEEN]) == 2  # asked once each, never followed


def test_a_row_is_one_line():
    row = Row("woozlit/m", "p", "m-1", "not checked", "no API key: set P_KEY")
    assert row.line() == "woozlit/m  p/m-1  not checked (no API key: set P_KEY)"


async def test_the_command_prints_a_line_per_deployment_and_no_secret(
    fake, anthropic_url, gemini_url, tmp_path
):
    raw = raw_config(fake, anthropic_url, gemini_url)
    raw["models"]["woozlit/gpt-4-turbo"] = [{"provider": "openai", "model": "gpt-4-turbo"}]
    for provider in raw["providers"].values():
        provider["api_key"] = "${CHECK_KEY}"
    path = tmp_path / "woozlit.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "check-models", "--config", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "CHECK_KEY": KEY}, cwd=ROOT,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1, err
    lines = out.decode().splitlines()
    assert len(lines) == 6 + 1
    assert "woozlit/gpt-4-turbo  openai/gpt-4-turbo  missing" in lines[-2]
    assert all(" listed" in line for line in lines[:5])
    assert KEY not in out.decode() + err.decode()
    assert "127.0.0.1" not in out.decode()  # providers are named, not their URLs


SHIPPED = ROOT / "config" / "woozlit.yaml"
# What the seed routed to, each retired by its provider by 2026-11-30.
RETIRED = {
    "gpt-4-turbo", "gpt-3.5-turbo", "claude-3-5-sonnet-20241022", "claude-3-5-haiku-20241022",
    "claude-3-opus-20240229", "gemini-2.0-flash-exp", "gemini-1.5-pro", "gemini-1.5-flash",
    "deepseek-chat", "deepseek-reasoner",
}  # fmt: skip


async def test_the_shipped_routing_table_routes_to_models_the_providers_list(fake_openai):
    """config/woozlit.yaml against fakes that list what the providers serve today."""
    from proxy.config import load_config

    config = load_config(SHIPPED, {})
    upstream = {d.model for deps in config.models.values() for d in deps}
    assert not upstream & RETIRED
    fake_openai.record.models = ["gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini"]
    fake_openai.record.models += ["deepseek-v4-flash", "deepseek-v4-pro"]
    claudes = [
        ("claude-sonnet-4-6", "Claude Sonnet 4.6", "2026-02-17T00:00:00Z"),
        ("claude-haiku-4-5-20251001", "Claude Haiku 4.5", "2025-10-01T00:00:00Z"),
        ("claude-opus-4-6", "Claude Opus 4.6", "2026-02-05T00:00:00Z"),
    ]
    geminis = ("gemini-3.8-flash", "gemini-3.5-flash-lite", "gemini-3.1-pro-preview")
    async for anthropic_url in serve(create_fake_anthropic(KEY, claudes)):
        async for gemini_url in serve(create_fake_gemini(KEY, 0.0, geminis)):
            env = {
                "OPENAI_BASE_URL": fake_openai.url,
                "DEEPSEEK_BASE_URL": fake_openai.url.removesuffix("/v1"),
                "ANTHROPIC_BASE_URL": anthropic_url,
                "GEMINI_BASE_URL": gemini_url,
                **{f"{name}_API_KEY": KEY for name in ("OPENAI", "DEEPSEEK", "ANTHROPIC")},
                "GEMINI_API_KEY": KEY,
            }
            rows = await check_models(load_config(SHIPPED, env))
    assert [row.status for row in rows] == ["listed"] * len(rows), report(rows)[0]
    assert {row.public for row in rows} == set(config.models)
    assert len(config.models) == 12
