"""POST /chat/completions: the path of one request, from the client to a provider and back.

    read and validate the body            validation.py
    admit: key, rate limit, quota hold    accounting.py (one Redis round trip)
    pick the deployment                   routing.py
    translate and send, answer or stream  providers/*, upstream.py
    settle what was used                  accounting.py (one Redis round trip, always)

Settlement starts in `finally`, as a task of its own: a client that disconnects (aiohttp
cancels the handler) or an upstream that fails still gets exactly what was produced charged,
and a successful answer goes out without waiting for it.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from proxy.appkeys import ACCOUNTANT, CONFIG, METRICS, REQUEST_ID, ROUTER, UPSTREAM
from proxy.errors import GatewayError
from proxy.metrics import Metrics
from proxy.providers.base import ChatRequest, StreamTranslator, Usage
from proxy.tokens import estimate_text_tokens
from proxy.upstream import Timing
from proxy.validation import read_json_object, validate_chat


def estimate_completion(payload: dict[str, Any], chat: ChatRequest) -> Usage:
    """Usage of a non-stream answer whose upstream reported none."""
    chars = 0
    for choice in payload.get("choices") or ():
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict):
            content = message.get("content")
            chars += len(content) if isinstance(content, str) else 0
            for call in message.get("tool_calls") or ():
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict):
                    chars += len(str(function.get("arguments") or ""))
    return Usage(chat.prompt_tokens_estimate, estimate_text_tokens(chars), estimated=True)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    app = request.app
    config, metrics, router = app[CONFIG], app[METRICS], app[ROUTER]
    accountant, upstream = app[ACCOUNTANT], app[UPSTREAM]
    timing = Timing()

    # The key first, as OpenAI does: a caller without a valid key learns nothing more. Known
    # keys are cached, so this costs a Redis call only on a key's first use in this process.
    owner = await accountant.identify(request.headers.get("Authorization"))
    body = await read_json_object(request, config.server.max_body_bytes)
    chat = validate_chat(
        body,
        models=router.routes,
        accept=request.headers.get("Accept", ""),
        default_temperature=config.server.default_temperature,
    )
    request_id = request[REQUEST_ID]
    hold = chat.prompt_tokens_estimate + (
        chat.max_tokens or config.accounting.default_completion_reserve
    )
    since = time.perf_counter()
    admission = await accountant.admit(owner, request_id, hold)
    timing.store = time.perf_counter() - since

    deployment, provider = router.route(chat.public_model)[0]
    model = chat.public_model
    headers = {**admission.headers, "x-woozlit-provider": provider.config.name}
    translator: StreamTranslator | None = None
    usage: Usage | None = None
    sent = False  # the request went to the provider
    opened = False  # the provider's stream began
    status = "499"  # until we know better: the client went away

    metrics.in_flight.inc()
    try:
        upstream_request = provider.build_request(chat, deployment)
        if chat.stream:
            translator = provider.stream_translator(chat)
            sent = True
            resp = await upstream.open(provider, upstream_request, timing)
            opened = True
            stamp = {
                "id": request_id,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
            }
            metrics.open_streams.inc()
            try:
                out = await upstream.pump(
                    request, provider, resp, translator, stamp, headers, timing
                )
            finally:
                metrics.open_streams.dec()
            status = "200"
            return out
        sent = True
        payload, usage = await upstream.complete(provider, upstream_request, chat, timing)
        if usage is None:
            usage = estimate_completion(payload, chat)
        payload["id"] = request_id
        payload["object"] = "chat.completion"
        payload["model"] = model
        payload["usage"] = {**(payload.get("usage") or {}), **usage.as_dict()}
        status = "200"
        timing.first_chunk = time.perf_counter()
        return web.Response(
            body=orjson.dumps(payload), content_type="application/json", headers=headers
        )
    except GatewayError as exc:
        status = str(exc.status)
        # A failure before any byte reached the client: nothing was delivered, nothing is charged.
        sent = opened = False
        exc.headers = {**headers, **exc.headers}
        raise
    finally:
        metrics.in_flight.dec()
        if translator is not None and opened:
            usage = translator.final_usage()
        elif usage is None and sent and status == "499":
            # The client left while the provider was working on the prompt: that much was spent.
            usage = Usage(chat.prompt_tokens_estimate, 0, estimated=True)
        usage = usage or Usage(0, 0)
        served = status == "200" or usage.total_tokens > 0  # counted as a request of the month
        accountant.settle_soon(admission, usage, model, served=served)
        record(metrics, model, provider.config.name, status, chat.stream, usage, timing)


def record(
    metrics: Metrics,
    model: str,
    provider: str,
    status: str,
    stream: bool,
    usage: Usage,
    timing: Timing,
) -> None:
    """The request's metrics, once it is over."""
    label = "true" if stream else "false"
    total = time.perf_counter() - timing.started
    metrics.requests.labels(model, provider, status).inc()
    if usage.total_tokens:
        metrics.tokens.labels(model, "prompt").inc(usage.prompt_tokens)
        metrics.tokens.labels(model, "completion").inc(usage.completion_tokens)
    metrics.duration.labels(model, label).observe(total)
    if timing.first_chunk:
        metrics.ttft.labels(model, label).observe(timing.first_chunk - timing.started)
    metrics.overhead.labels(label).observe(max(total - timing.upstream - timing.store, 0.0))
