"""`POST /messages/count_tokens`: how many input tokens a Messages request would be billed.

The answer is Anthropic's, `{"input_tokens": N}`: exact, from Anthropic's own count_tokens
(`POST {base}/v1/messages/count_tokens`), when the model's first deployment is a Claude one;
else the gateway's estimate of the prompt (the one its quota holds, an upper estimate: no
other provider counts Messages requests). When Anthropic fails through no fault of the
request (the deployment's: overloaded, our key refused...), the estimate is the answer too;
a request Anthropic refuses gets its 400. A count is a request of the key's minute (the
rate limit, `mode="rate"`) and costs no tokens: the quota is neither held nor charged. It is
in the access log (protocol "messages"), not in `woozlit_requests_total`, which counts the
requests that produce an answer.

Source: token counting (platform.claude.com/docs/en/api/messages-count-tokens).
"""

from __future__ import annotations

import logging
import time

import orjson
from aiohttp import web

from proxy.app_state import ACCESS, ACCOUNTANT, CONFIG, REQUEST_ID, ROUTER, UPSTREAM
from proxy.core import ChatRequest
from proxy.errors import GatewayError
from proxy.exchange import refused
from proxy.protocols.anthropic_messages.read import credentials, read_messages
from proxy.protocols.body import read_json_object
from proxy.providers.anthropic import AnthropicProvider
from proxy.upstream import Timing

log = logging.getLogger("proxy")
_warned_at = 0.0  # monotonic time of the last warning (one a second at most)


async def count_tokens(request: web.Request) -> web.Response:
    """Identify the key, read the request, count against the rate limit, count the tokens."""
    app = request.app
    request[ACCESS]["protocol"] = "messages"
    accountant = app[ACCOUNTANT]
    owner = await accountant.identify(credentials(request))
    server = app[CONFIG].server
    try:
        body = await read_json_object(request, server.max_body_bytes, server.body_timeout_seconds)
        chat = read_messages(request, body, counting=True)
    except GatewayError as exc:
        await refused(request, owner, exc)
    admission = await accountant.admit(owner, request[REQUEST_ID], mode="rate")
    try:
        tokens = await _count(request, chat)
    except GatewayError as exc:
        exc.headers = {**admission.headers, **exc.headers}
        raise
    return web.Response(
        body=orjson.dumps({"input_tokens": tokens}),
        content_type="application/json",
        headers=admission.headers,
    )


async def _count(request: web.Request, chat: ChatRequest) -> int:
    """Anthropic's count when the model's first deployment is Claude, else the estimate."""
    app = request.app
    deployment, provider = app[ROUTER].routes[chat.public_model][0]
    if not isinstance(provider, AnthropicProvider):
        return chat.prompt_tokens_estimate
    counter = provider.counter
    try:
        payload, _ = await app[UPSTREAM].complete(
            counter, counter.build_request(chat, deployment), chat, Timing()
        )
    except GatewayError as exc:
        if not exc.retryable:
            raise
        _warn(provider.config.name, exc)
        return chat.prompt_tokens_estimate
    count: int = payload["input_tokens"]
    return count


def _warn(provider: str, exc: GatewayError) -> None:
    """A count answered by the estimate, logged at most once a second: while Anthropic is
    down every count falls back, and the failures are counted already
    (`woozlit_upstream_errors_total`)."""
    global _warned_at
    now = time.monotonic()
    if now - _warned_at >= 1.0:
        _warned_at = now
        log.warning("count_tokens: provider %r failed (%s); estimated", provider, exc)
