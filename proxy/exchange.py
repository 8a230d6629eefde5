"""One request's exchange with the providers, whichever protocol its client speaks.

A client protocol (`protocols/`) reads the client's request into a `ChatRequest` and says
how the answer is written (`ClientProtocol`); from there, every request takes one path:

    admit: key, rate limit, quota hold    accounting.py (one Redis round trip)
    try the deployments in turn           routing.py (`Router.attempts`: the order, the
                                          backoff, the breaker; the next deployment on a
                                          `retryable` error, before the headers went out)
    forward to one: answer or stream      providers/*, upstream.py
    settle what was used                  accounting.py (one Redis round trip, always)
    record: metrics, the access log line  `Exchange.record`

Settlement starts in `finally`, as a task of its own: a client that disconnects (aiohttp
cancels the handler) or an upstream that fails still gets exactly what was produced charged,
and a successful answer goes out without waiting for it.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import orjson
from aiohttp import web

from proxy.accounting import Accountant, Admission
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
from proxy.providers.base import Provider, StreamTranslator
from proxy.relay import ClientStream, ProviderStream, StreamEncoder, StreamRelay
from proxy.upstream import Timing

Owner = tuple[str, str]  # (account id, key id) of the request's key
# The request's owner, set by `ClientProtocol.handle` before `read`: a protocol whose
# requests refer to what the account stored (Responses' `item_reference`) reads it there.
OWNER = web.RequestKey("owner", tuple)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ClientProtocol(ABC):
    """A protocol clients speak (one module of `protocols/` each): how its requests are read
    and its answers written. `handle` is its route's handler.

    An answer comes from a provider either translated to chat completions (every provider's
    `parse_response` and stream translator give OpenAI shapes), or, `native`, as the
    provider's own upstream wrote it, when that upstream speaks the client's protocol
    (`Provider.speaking`): `body` and `encoder` are told which.
    """

    name: str = ""  # the protocol's label in the metrics and the access log
    path: str = ""  # its route, below each API prefix (`/chat/completions`)

    def routes(self) -> list[tuple[str, str, Handler]]:
        """(method, path below each API prefix, handler) of every route of the protocol;
        errors on these paths take its shape (`error_response`)."""
        return [("POST", self.path, self.handle)]

    def credentials(self, request: web.Request) -> str | None:
        """The request's key, as an `Authorization` header's value (`Bearer <key>`)."""
        return request.headers.get("Authorization")

    @abstractmethod
    async def read(self, request: web.Request) -> ChatRequest:
        """The request's body, read and validated; BadRequest naming the field at fault."""

    @abstractmethod
    def body(
        self, payload: dict[str, Any], usage: Usage, chat: ChatRequest, rid: str, native: bool
    ) -> bytes:
        """A provider's answer as the client gets it: an OpenAI chat completion, or with
        `native` the answer in the client's protocol; `rid`: our id of the request."""

    @abstractmethod
    def encoder(self, chat: ChatRequest, rid: str, native: bool) -> StreamEncoder:
        """How a stream's answer is written to the client (the relay calls it once a read):
        from OpenAI chunks, or with `native` from the native stream translator's output."""

    def error_response(self, exc: GatewayError) -> web.Response | None:
        """`exc` in the protocol's own error shape, on every prefix; None: the shape of the
        path's profile (profiles.py)."""
        return None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Identify the key, read the request, answer it (once per Idempotency-Key)."""
        timing = Timing()
        request[REQUEST_LABELS] = (NONE, NONE, self.name)  # counted by edge_middleware
        request[ACCESS]["protocol"] = self.name
        # The key first, as OpenAI does: a caller without a valid key learns nothing more.
        # Known keys are cached: a Redis call only on a key's first use in this process.
        owner = await request.app[ACCOUNTANT].identify(self.credentials(request))
        request[OWNER] = owner
        try:
            chat = await self.read(request)
            idempotency_key = request.headers.get("Idempotency-Key")
            if idempotency_key and len(idempotency_key) > MAX_KEY_LENGTH:
                raise BadRequest(f"Idempotency-Key must be at most {MAX_KEY_LENGTH} characters.")
        except GatewayError as exc:
            # A bad request is a request of the key's minute too, and its answer carries the
            # rate-limit headers of every API answer.
            await refused(request, owner, exc)
        request[REQUEST_LABELS] = (chat.public_model, NONE, self.name)
        exchange = Exchange(owner, chat, self, timing)
        if not idempotency_key or chat.stream:
            return await serve(request, exchange, None)
        return await once(request, exchange, idempotency_key)


async def refused(request: web.Request, owner: Owner, exc: GatewayError) -> NoReturn:
    """Raise `exc`, a refusal of a known key's request, once it is counted against the key's
    rate limit and carries its rate-limit headers (or raise the rate limit's 429)."""
    admission = await request.app[ACCOUNTANT].admit(owner, request[REQUEST_ID], mode="rate")
    exc.headers = {**admission.headers, **exc.headers}
    raise exc


async def once(
    request: web.Request, exchange: Exchange, idempotency_key: str
) -> web.StreamResponse:
    """`serve` a non-stream request once per Idempotency-Key: a retry of the client gets
    the stored answer (idempotency.py), or 409 while the first is still running."""
    app = request.app
    owner = exchange.owner
    claim = Claim(
        app[STORE],
        owner[0],
        idempotency_key,
        orjson.dumps(exchange.fingerprint(), option=orjson.OPT_SORT_KEYS),
        app[CONFIG].accounting.idempotency_window_seconds,
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
        await refused(request, owner, exc)
    if stored is not None:
        # A replay costs no tokens, but passes the same key, account and rate checks as a
        # new request: a revoked key or a disabled account gets no stored answer either.
        admission = await app[ACCOUNTANT].admit(owner, request[REQUEST_ID], mode="rate")
        return web.Response(
            body=stored,
            content_type="application/json",
            headers={**admission.headers, "Idempotent-Replayed": "true"},
        )
    try:
        response = await serve(request, exchange, claim)
    except BaseException:
        if not claim.handed_over:  # else the answer still coming will be stored for it
            await asyncio.shield(claim.abandon())  # the client's retry must run for real
        raise
    assert isinstance(response, web.Response) and isinstance(response.body, bytes)
    await claim.finish(response.body)
    return response


async def serve(
    request: web.Request, exchange: Exchange, claim: Claim | None
) -> web.StreamResponse:
    """Admit, try the deployments in turn, settle, record. `claim`: the request's
    Idempotency-Key, which an answer still coming after its client left is stored for."""
    app = request.app
    chat, timing = exchange.chat, exchange.timing
    accountant, metrics = app[ACCOUNTANT], app[METRICS]
    since = time.perf_counter()
    admission = await accountant.admit(
        exchange.owner,
        request[REQUEST_ID],
        base=chat.base_tokens,
        choices=chat.choices,
        cap=chat.cap,
    )
    timing.store = time.perf_counter() - since
    exchange.admitted(admission, request[X_REQUEST_ID])
    metrics.in_flight.inc()
    try:
        for attempt in app[ROUTER].attempts(chat.public_model):
            exchange.begin(attempt.deployment, attempt.provider)
            try:
                response = await forward(request, exchange, attempt.deployment, attempt.provider)
            except GatewayError as exc:
                if await attempt.failed(exc, committed=timing.committed, started=timing.started):
                    continue  # the backoff is over: the next deployment
                raise
            attempt.succeeded()
            return response
        raise AssertionError("unreachable: the last attempt returns or raises")
    except GatewayError as exc:
        exchange.status = str(exc.status)
        exchange.sent = exchange.opened = False  # failed before any byte: nothing delivered
        exc.headers = {**exchange.headers, **exc.headers}
        raise
    except ConnectionResetError:
        raise  # the client went away (status 499): charged what was produced
    except Exception:
        exchange.status = "500"  # a bug of ours: the client is not charged for it
        raise
    finally:
        metrics.in_flight.dec()
        usage = exchange.settle(accountant, admission, request[REQUEST_ID], claim)
        exchange.record(request, usage)


async def forward(
    request: web.Request, exchange: Exchange, deployment: Deployment, provider: Provider
) -> web.StreamResponse:
    """One attempt: send the request to one deployment and answer the client from it, in
    the client's protocol if the deployment's upstream speaks it (`Provider.speaking`)."""
    upstream, metrics = request.app[UPSTREAM], request.app[METRICS]
    chat, timing, headers = exchange.chat, exchange.timing, exchange.headers
    request_id = request[REQUEST_ID]
    provider = provider.speaking(chat)
    exchange.native = native = provider.native
    upstream_request = provider.build_request(chat, deployment)
    if chat.stream:
        exchange.translator = translator = provider.stream_translator(chat)
        exchange.sent = True
        resp = await upstream.open(provider, upstream_request, timing, stream=True)
        exchange.opened = True
        source = ProviderStream(provider, resp, translator)
        encoder = exchange.protocol.encoder(chat, request_id, native)
        client = ClientStream(request, headers, encoder)
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
        body=exchange.protocol.body(payload, usage, chat, request_id, native),
        content_type="application/json",
        headers=headers,
    )


def estimate_completion(payload: dict[str, Any], chat: ChatRequest) -> Usage:
    """Usage of a non-stream chat completion whose upstream reported none (a native
    speaker's `parse_response` always returns a usage, estimating it if it must)."""
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
    """One request on its way through the deployments: what its current attempt has
    produced (what settling charges), and what its metrics and access log line say."""

    owner: Owner
    chat: ChatRequest
    protocol: ClientProtocol
    timing: Timing
    # The answer's headers: rate limits (from admission), ids, the deployment.
    headers: dict[str, str] = field(default_factory=dict)
    provider: str = NONE  # the provider of the current attempt, for the request's labels
    translator: StreamTranslator | None = None
    native: bool = False  # the current attempt's answer is in the client's protocol
    usage: Usage | None = None
    sent: bool = False  # the request went to the provider
    opened: bool = False  # the provider's stream began
    status: str = "499"  # until we know better: the client went away
    # A non-stream answer the client left before it came: the provider goes on and bills it.
    answer: asyncio.Future[tuple[dict[str, Any], Usage | None]] | None = None

    def admitted(self, admission: Admission, x_request_id: str) -> None:
        """The request is admitted: its answer carries the rate-limit headers, and its output
        cap may be lower than asked (only that much of the month's quota remains)."""
        self.chat.cap = admission.cap
        self.headers.update(admission.headers)
        self.headers["x-request-id"] = x_request_id

    def begin(self, deployment: Deployment, provider: Provider) -> None:
        """A new attempt, on `deployment`: a failed one delivered nothing, so nothing of it
        is charged."""
        self.provider = name = provider.config.name
        self.headers["x-woozlit-deployment"] = f"{name}/{deployment.model}"
        self.translator = self.usage = None
        self.sent = self.opened = self.native = False
        self.status = "499"

    def charge(self) -> Usage:
        """The usage to charge, once the request is over."""
        if self.translator is not None and self.opened:
            return self.translator.final_usage()
        if self.usage is None and self.sent and self.status == "499":
            # The client left while the provider was working on the prompt: that much was spent.
            return Usage(self.chat.prompt_tokens_estimate, 0, estimated=True)
        return self.usage or Usage(0, 0)

    def settle(
        self, accountant: Accountant, admission: Admission, request_id: str, claim: Claim | None
    ) -> Usage:
        """Settle the request in the background, and return the usage it is charged as of
        now (an answer still coming is settled once it is in, `billed`)."""
        usage = self.charge()
        model = self.chat.public_model
        if self.answer is not None:
            accountant.settle_when(admission, self.billed(request_id, claim), model)
            if claim is not None:
                claim.handed_over = True
        else:
            served = self.status == "200" or usage.total_tokens > 0  # a request of the month
            accountant.settle_soon(admission, usage, model, served=served)
        return usage

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
            body = self.protocol.body(payload, usage, self.chat, request_id, self.native)
            await claim.finish(body)
        return usage

    def fingerprint(self) -> dict[str, Any]:
        """What an Idempotency-Key's request is known by: the body the client sent (its
        translation to chat completions may be the same for two different requests)."""
        native = self.chat.native
        if native is None:
            return self.chat.body
        return {"protocol": self.protocol.name, "body": native.body}

    def record(self, request: web.Request, usage: Usage) -> None:
        """The request's labels, tokens and times in the metrics, and its access log line's
        fields, once it is over (`usage`: what it is charged)."""
        chat, timing = self.chat, self.timing
        model = chat.public_model
        protocol = self.protocol.name
        request[REQUEST_LABELS] = (model, self.provider, protocol)
        now = time.perf_counter()
        ttft = timing.first_chunk - timing.started if timing.first_chunk else None
        request.app[METRICS].request_done(
            model,
            chat.stream,
            protocol,
            usage.prompt_tokens,
            usage.completion_tokens,
            total=now - timing.started,
            ttft=ttft,
            overhead=max(now - timing.started - timing.upstream - timing.store, 0.0),
        )
        request[ACCESS].update(
            account=self.owner[0],
            model=model,
            deployment=self.headers.get("x-woozlit-deployment"),
            stream=chat.stream,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            estimated=usage.estimated,
            ttft_ms=None if ttft is None else round(ttft * 1000, 3),
            upstream_ms=round(timing.upstream * 1000, 3),
            store_ms=round(timing.store * 1000, 3),
        )
