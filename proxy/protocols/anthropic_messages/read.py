"""A Messages request read into the gateway's `ChatRequest`: checked (request.py),
translated (translate.py), validated as chat completions, its own body kept as `native`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from proxy.app_state import CONFIG, ROUTER
from proxy.config import resolve_alias
from proxy.core import ChatRequest, Native
from proxy.errors import BadRequest, NotFound
from proxy.estimates import estimate_builtin_tool_tokens, estimate_prompt_tokens
from proxy.protocols.anthropic_messages.request import check_body
from proxy.protocols.anthropic_messages.translate import is_server_tool, to_chat
from proxy.protocols.openai_chat import validate_chat
from proxy.routing import Route

DIALECT = "anthropic-messages"
# The client's headers a Claude deployment reads.
FORWARDED_HEADERS = ("anthropic-version", "anthropic-beta")


def credentials(request: web.Request) -> str | None:
    """The key: `x-api-key: <key>` (as `Bearer <key>`), else (none, or an empty one) the
    `Authorization` header."""
    key = request.headers.get("x-api-key")
    if key:
        return f"Bearer {key}"
    return request.headers.get("Authorization")


def read_messages(
    request: web.Request, body: dict[str, Any], *, counting: bool = False
) -> ChatRequest:
    """A Messages (or, `counting`, a count_tokens) body checked and read into a ChatRequest
    whose `native` is the body as sent; BadRequest naming the field at fault."""
    app = request.app
    config = app[CONFIG]
    headers = {n: v for n in FORWARDED_HEADERS if (v := request.headers.get(n)) is not None}
    check_body(body, counting=counting, betas=headers.get("anthropic-beta", ""))
    routes = app[ROUTER].routes
    try:
        chat_body = to_chat(body)
    except BadRequest:
        if _translates(routes, config.aliases, body["model"]):
            raise
        # Every deployment speaks Messages: the translation is only for the checks.
        chat_body = {"model": body["model"], "messages": [{"role": "user", "content": ""}]}
        chat_body.update(max_tokens=body.get("max_tokens"), stream=body.get("stream") is True)
    if counting:
        chat_body.pop("stream", None)
        chat_body.pop("stream_options", None)
    try:
        chat = validate_chat(
            chat_body,
            models=routes,
            aliases=config.aliases,
            accept="",
            default_temperature=config.server.default_temperature,
            openai=True,
        )
    except BadRequest as exc:
        if exc.param != "model" or not isinstance(body.get("model"), str):
            raise
        # A name that is no model (unknown, or without the woozlit/ prefix and no alias):
        # Anthropic answers a 404 `not_found_error`, and Claude Code then says the model is
        # the problem, where a 400 has it retry without each of its betas first.
        name = body["model"]
        message = (
            exc.message
            if name in exc.message
            else (
                f"Unknown model '{name[:200]}': the models are named 'woozlit/...', and"
                " GET /v1/models lists them."
            )
        )
        raise NotFound(message, param=exc.param, code="model_not_found") from None
    chat.prompt_tokens_estimate = max(chat.prompt_tokens_estimate, estimate_prompt_tokens(body))
    # Server tools run by Anthropic bill their results as input: held too (estimates.py).
    chat.completion_extra += estimate_builtin_tool_tokens(server_tool_calls(body))
    chat.native = Native(DIALECT, body, headers)
    return chat


def server_tool_calls(body: dict[str, Any]) -> int:
    """How many calls of server tools (web search, web fetch, code execution...: a `tools`
    entry with a versioned `type`) the request allows: each tool's `max_uses`, else one."""
    tools = body.get("tools")
    if not isinstance(tools, list):
        return 0
    calls = 0
    for tool in tools:
        if isinstance(tool, dict) and is_server_tool(tool):
            uses = tool.get("max_uses")
            calls += min(uses, 100) if isinstance(uses, int) and uses > 0 else 1
    return calls


def _translates(routes: Mapping[str, Route], aliases: Mapping[str, str], model: str) -> bool:
    """Whether a deployment of `model` (a public name or an alias) would get a translation;
    an unknown model is validate_chat's to refuse."""
    route = routes.get(model) or routes.get(resolve_alias(aliases, model) or "")
    return route is None or any(DIALECT not in provider.natives for _, provider in route)
