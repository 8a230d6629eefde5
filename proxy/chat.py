"""POST /chat/completions: the path of one request, from the client to a provider and back.

    read and validate the body            validation.py
    admit: key, rate limit, quota hold    accounting.py (one Redis round trip)
    plan the deployments to try           routing.py
    translate and send, answer or stream  providers/*, upstream.py (the next deployment
                                          on a `retryable` error, before the headers
                                          went out)
    settle what was used                  accounting.py (one Redis round trip, always)

Settlement starts in `finally`, as a task of its own: a client that disconnects (aiohttp
cancels the handler) or an upstream that fails still gets exactly what was produced charged,
and a successful answer goes out without waiting for it.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any, NoReturn

import orjson
from aiohttp import web

from proxy.app_state import (
    ACCESS,
    ACCOUNTANT,
    CONFIG,
    METRICS,
    REQUEST_ID,
    ROUTER,
    STORE,
    UPSTREAM,
    X_REQUEST_ID,
)
from proxy.config import Deployment
from proxy.core import ChatRequest, Usage
from proxy.errors import BadRequest, GatewayError
from proxy.estimates import estimate_text_tokens, text_weight
from proxy.idempotency import MAX_KEY_LENGTH, Claim
from proxy.metrics import NONE, REQUEST_LABELS
from proxy.profiles import openai_profile
from proxy.protocols.openai_chat_stream import OpenAIChatStream
from proxy.providers.base import Provider, StreamTranslator
from proxy.relay import ClientStream, ProviderStream, StreamRelay
from proxy.upstream import Timing
from proxy.validation import read_json_object, validate_chat

UNKNOWN = (NONE, NONE)  # the labels of a request refused before its model was known


def estimate_completion(payload: dict[str, Any], chat: ChatRequest) -> Usage:
    """Usage of a non-stream answer whose upstream reported none."""
    chars = 0
    for choice in payload.get("choices") or ():
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict):
            content = message.get("content")
            chars += text_weight(content) if isinstance(content, str) else 0
            for call in message.get("tool_calls") or ():
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict):
                    chars += text_weight(str(function.get("arguments") or ""))
    return Usage(chat.prompt_tokens_estimate, estimate_text_tokens(chars), estimated=True)


@dataclass(slots=True)
class Exchange:
    """What the current attempt of one request has produced: what settling charges."""

    chat: ChatRequest
    translator: StreamTranslator | None = None
    usage: Usage | None = None
    sent: bool = False  # the request went to the provider
    opened: bool = False  # the provider's stream began
    status: str = "499"  # until we know better: the client went away
    # A non-stream answer the client left before it came: the provider goes on and bills it.
    answer: asyncio.Future[tuple[dict[str, Any], Usage | None]] | None = None

    async def billed(self, request_id: str, claim: Claim | None) -> Usage:
        """The usage of the answer the client left before (`answer`), once it is in; and
        that answer stored for its Idempotency-Key (`claim`), for the client's retry."""
        assert self.answer is not None
        try:
            payload, usage = await self.answer
        except Exception:  # a failed answer is not charged, as when the client stays
            if claim is not None:
                await claim.abandon()
            return Usage(0, 0)
        usage = usage or estimate_completion(payload, self.chat)
        if claim is not None:
            await claim.finish(completion_body(payload, usage, self.chat, request_id))
        return usage

    def charge(self) -> Usage:
        """The usage to charge, once the request is over."""
        if self.translator is not None and self.opened:
            return self.translator.final_usage()
        if self.usage is None and self.sent and self.status == "499":
            # The client left while the provider was working on the prompt: that much was spent.
            return Usage(self.chat.prompt_tokens_estimate, 0, estimated=True)
        return self.usage or Usage(0, 0)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    app = request.app
    config, accountant = app[CONFIG], app[ACCOUNTANT]
    timing = Timing()
    request[REQUEST_LABELS] = UNKNOWN  # counted by edge_middleware, refused or not

    # The key first, as OpenAI does: a caller without a valid key learns nothing more. Known
    # keys are cached, so this costs a Redis call only on a key's first use in this process.
    owner = await accountant.identify(request.headers.get("Authorization"))
    try:
        body = await read_json_object(
            request, config.server.max_body_bytes, config.server.body_timeout_seconds
        )
        chat = validate_chat(
            body,
            models=app[ROUTER].routes,
            accept=request.headers.get("Accept", ""),
            default_temperature=config.server.default_temperature,
            openai=openai_profile(request),
        )
        idempotency_key = request.headers.get("Idempotency-Key")
        if idempotency_key and len(idempotency_key) > MAX_KEY_LENGTH:
            raise BadRequest(f"Idempotency-Key must be at most {MAX_KEY_LENGTH} characters.")
    except GatewayError as exc:
        # A bad request is a request of the key's minute too, and its answer carries the
        # rate-limit headers of every API answer.
        await _refused(request, owner, exc)
    request[REQUEST_LABELS] = (chat.public_model, NONE)
    if not idempotency_key or chat.stream:
        return await serve(request, owner, chat, timing, None)

    claim = Claim(
        app[STORE],
        owner[0],
        idempotency_key,
        orjson.dumps(chat.body, option=orjson.OPT_SORT_KEYS),
        config.accounting.idempotency_window_seconds,
        pending_seconds=app[ROUTER].longest_request(),
    )
    try:
        stored = await claim.begin()
    except asyncio.CancelledError:
        # The client left while the key was being taken: give it back, if it was taken.
        await asyncio.shield(claim.abandon())
        raise
    except GatewayError as exc:
        # 409 or 422 tell something of the key's requests: only to a key that may ask.
        await _refused(request, owner, exc)
    if stored is not None:
        # A replay costs no tokens, but passes the same key, account and rate checks as a
        # new request: a revoked key or a disabled account gets no stored answer either.
        admission = await accountant.admit(owner, request[REQUEST_ID], mode="rate")
        return web.Response(
            body=stored,
            content_type="application/json",
            headers={**admission.headers, "Idempotent-Replayed": "true"},
        )
    try:
        response = await serve(request, owner, chat, timing, claim)
    except BaseException:
        if not claim.handed_over:  # else the answer still coming will be stored for it
            await asyncio.shield(claim.abandon())  # the client's retry must run for real
        raise
    assert isinstance(response, web.Response) and isinstance(response.body, bytes)
    await claim.finish(response.body)
    return response


async def _refused(request: web.Request, owner: tuple[str, str], exc: GatewayError) -> NoReturn:
    """Raise `exc`, a refusal of a known key's request, once it is counted against the key's
    rate limit and carries its rate-limit headers (or raise the rate limit's 429)."""
    admission = await request.app[ACCOUNTANT].admit(owner, request[REQUEST_ID], mode="rate")
    exc.headers = {**admission.headers, **exc.headers}
    raise exc


async def serve(
    request: web.Request,
    owner: tuple[str, str],
    chat: ChatRequest,
    timing: Timing,
    claim: Claim | None,
) -> web.StreamResponse:
    """Admit, try the deployments in turn, settle. `claim`: the request's Idempotency-Key,
    which an answer still coming after its client left is stored for."""
    app = request.app
    config, metrics, router = app[CONFIG], app[METRICS], app[ROUTER]
    accountant = app[ACCOUNTANT]
    since = time.perf_counter()
    admission = await accountant.admit(
        owner, request[REQUEST_ID], base=chat.base_tokens, choices=chat.choices, cap=chat.cap
    )
    timing.store = time.perf_counter() - since
    chat.cap = admission.cap  # lower than asked when only that much of the month remains

    model = chat.public_model
    plan = router.plan(model)
    routing = config.routing
    deadline = timing.started + routing.deadline_seconds
    headers = {**admission.headers, "x-request-id": request[X_REQUEST_ID]}
    exchange = Exchange(chat)
    provider_name = plan[0][1].config.name
    metrics.in_flight.inc()
    try:
        for attempt, (deployment, provider) in enumerate(plan, 1):
            provider_name = provider.config.name
            exchange = Exchange(chat)  # a failed attempt delivered nothing: nothing to charge
            headers["x-woozlit-deployment"] = f"{provider_name}/{deployment.model}"
            try:
                response = await forward(request, exchange, deployment, provider, headers, timing)
            except GatewayError as exc:
                if not exc.retryable:
                    raise
                router.breaker.failed(deployment)
                # Nothing is retried once bytes have reached the client.
                if timing.committed or attempt == len(plan):
                    raise
                pause = random.uniform(
                    0,
                    min(
                        routing.backoff_max_seconds,
                        routing.backoff_base_seconds * 2 ** (attempt - 1),
                    ),
                )
                if time.perf_counter() + pause >= deadline:
                    raise
                metrics.retries.labels(provider_name).inc()
                await asyncio.sleep(pause)
                continue
            router.breaker.succeeded(deployment)
            return response
        raise AssertionError("unreachable: the last attempt returns or raises")
    except GatewayError as exc:
        exchange.status = str(exc.status)
        exchange.sent = exchange.opened = False  # failed before any byte: nothing delivered
        exc.headers = {**headers, **exc.headers}
        raise
    except ConnectionResetError:
        raise  # the client went away (status 499): charged what was produced
    except Exception:
        exchange.status = "500"  # a bug of ours: the client is not charged for it
        raise
    finally:
        metrics.in_flight.dec()
        request[REQUEST_LABELS] = (model, provider_name)
        usage = exchange.charge()
        served = exchange.status == "200" or usage.total_tokens > 0  # a request of the month
        if exchange.answer is not None:
            accountant.settle_when(admission, exchange.billed(request[REQUEST_ID], claim), model)
            if claim is not None:
                claim.handed_over = True
        else:
            accountant.settle_soon(admission, usage, model, served=served)
        now = time.perf_counter()
        metrics.request_done(
            model,
            chat.stream,
            usage.prompt_tokens,
            usage.completion_tokens,
            total=now - timing.started,
            ttft=timing.first_chunk - timing.started if timing.first_chunk else None,
            overhead=max(now - timing.started - timing.upstream - timing.store, 0.0),
        )
        request[ACCESS].update(
            account=owner[0],
            model=model,
            deployment=headers.get("x-woozlit-deployment"),
            stream=chat.stream,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            estimated=usage.estimated,
            ttft_ms=round((timing.first_chunk - timing.started) * 1000, 3)
            if timing.first_chunk
            else None,
            upstream_ms=round(timing.upstream * 1000, 3),
            store_ms=round(timing.store * 1000, 3),
        )


async def forward(
    request: web.Request,
    exchange: Exchange,
    deployment: Deployment,
    provider: Provider,
    headers: dict[str, str],
    timing: Timing,
) -> web.StreamResponse:
    """One attempt: send the request to one deployment and answer the client from it."""
    upstream, metrics = request.app[UPSTREAM], request.app[METRICS]
    chat = exchange.chat
    request_id = request[REQUEST_ID]
    upstream_request = provider.build_request(chat, deployment)
    if chat.stream:
        exchange.translator = translator = provider.stream_translator(chat)
        exchange.sent = True
        resp = await upstream.open(provider, upstream_request, timing, stream=True)
        exchange.opened = True
        source = ProviderStream(provider, resp, translator)
        client = ClientStream(request, headers, OpenAIChatStream(request_id, chat))
        metrics.open_streams.inc()
        try:
            out = await StreamRelay(upstream, source, client, timing).run()
        finally:
            metrics.open_streams.dec()
        exchange.status = "200"
        return out
    exchange.sent = True
    answer = asyncio.ensure_future(upstream.complete(provider, upstream_request, chat, timing))
    try:
        payload, usage = await asyncio.shield(answer)
    except asyncio.CancelledError:
        # The client left. Closing the connection would not stop every provider billing the
        # whole answer, so it is awaited, and charged (settle_when), in the background.
        exchange.answer = answer
        raise
    if usage is None:
        usage = estimate_completion(payload, chat)
    exchange.usage = usage
    exchange.status = "200"
    timing.first_chunk = time.perf_counter()
    return web.Response(
        body=completion_body(payload, usage, chat, request_id),
        content_type="application/json",
        headers=headers,
    )


def completion_body(payload: dict[str, Any], usage: Usage, chat: ChatRequest, rid: str) -> bytes:
    """A provider's answer, translated to OpenAI's shape, as the client gets it."""
    payload["id"] = rid
    payload["object"] = "chat.completion"
    if not isinstance(payload.get("created"), int):
        payload["created"] = int(time.time())
    payload["model"] = chat.public_model
    payload["usage"] = {**(payload.get("usage") or {}), **usage.as_dict()}
    return orjson.dumps(payload)
