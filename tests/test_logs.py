"""One JSON access line per request, with what operators need and no secret or prompt."""

from __future__ import annotations

import os
import tempfile

import aiohttp
import orjson

from proxy.app_state import ACCESS_LOG
from tests.conftest import FakeUpstream, GatewayFactory, openai_provider

PROMPT = "my secret prompt text"


async def test_access_log_lines(gateway: GatewayFactory, fake_openai: FakeUpstream):
    gw = await gateway(
        {"openai": openai_provider(fake_openai.url)},
        {"woozlit/m": [{"provider": "openai", "model": "gpt-4o-mini"}]},
    )
    with tempfile.TemporaryFile() as sink:
        gw.app[ACCESS_LOG].fd = sink.fileno()
        body = {"model": "woozlit/m", "messages": [{"role": "user", "content": PROMPT}]}
        async with aiohttp.ClientSession() as session:
            for stream in (False, True):
                async with session.post(
                    gw.api + "/chat/completions",
                    json={**body, "stream": stream},
                    headers={**gw.auth(), "x-request-id": f"trace-{stream}"},
                ) as resp:
                    assert resp.status == 200
                    await resp.read()
            async with session.post(
                gw.api + "/chat/completions", json=body, headers={"Authorization": "Bearer x"}
            ) as resp:
                assert resp.status == 401
            async with session.get(gw.base_url + "/no/such/path") as resp:
                assert resp.status == 404
        gw.app[ACCESS_LOG].flush()
        sink.seek(0)
        text = sink.read()

    for secret in (gw.api_key.encode(), b"sk-test-provider-key", PROMPT.encode()):
        assert secret not in text
    lines = [orjson.loads(line) for line in text.splitlines()]
    assert [line["status"] for line in lines] == [200, 200, 401, 404]
    plain, streamed, refused, missing = lines
    for line in (plain, streamed):
        assert line["request_id"].startswith("woozlit-")
        assert line["path"] == "/api/woozlit/v1/chat/completions"
        assert line["model"] == "woozlit/m"
        assert line["deployment"] == "openai/gpt-4o-mini"
        assert line["account"] == gw.account_id
        assert line["prompt_tokens"] == 11 and line["completion_tokens"] == 7
        assert line["duration_ms"] > 0 and line["upstream_ms"] > 0
        assert line["ttft_ms"] is not None
    assert plain["stream"] is False and streamed["stream"] is True
    assert streamed["x_request_id"] == "trace-True"
    assert "account" not in refused
    assert refused["error"] == "invalid_api_key"  # why, in the error's code
    assert "error" not in plain and "error" not in streamed
    assert missing["path"] == "-"  # an unknown path is not logged as sent
    assert os.linesep.encode() in text
