"""A Messages API request body, checked as Anthropic's API reference describes it.

Every rule raises BadRequest naming the field in Anthropic's own dotted style
(`messages.0.content.1.text`), so a client sees at once what to fix. What is checked is what
every path needs: the types of the fields the gateway reads or translates, the required
fields, and the ranges Anthropic documents. What only Anthropic can judge (a beta's fields,
the order of tool results, a model's output limit) is left to it on the native path, and to
the translation on the others (translate.py).

- `model` (string) and `max_tokens` (integer >= 1) are required (`max_tokens` not for
  count_tokens); `messages` a non-empty array of `{role, content}` with role `user`,
  `assistant`, or `system` (a system turn mid-conversation, which Claude Code's default
  models send under a beta); content a string or an array of blocks, each an object with a
  string `type`: `text` needs `text`, `image` and `document` a `source` object, `tool_use`
  (assistant only) `id`, `name` and an object `input`, `tool_result` (user only)
  `tool_use_id`, `thinking` `thinking` and `signature`, `redacted_thinking` `data`; other
  block types (server tool results, search results...) pass as they are.
- `system`: a string or an array of text blocks. `stop_sequences`: an array of strings.
  `temperature` and `top_p` 0..1, `top_k` an integer >= 0. `metadata` an object whose
  `user_id` is a string or null. `stream` a boolean (absent: false, on both prefixes).
- `tools`: an array of objects with a `name`; a custom tool (no `type`, or "custom") needs
  an object `input_schema`; a server tool (`web_search_20250305`, `bash_20250124`,
  `text_editor_...`, `code_execution_...`, `computer_...`) has its versioned `type`.
  `tool_choice`: `{type: auto|any|tool|none}`, `name` for "tool" (one of `tools`),
  `disable_parallel_tool_use` a boolean.
- `thinking`: an object with a string `type`; "enabled" needs `budget_tokens`, an integer
  >= 1,024 and below `max_tokens`, unless the `interleaved-thinking-2025-05-14` beta is on
  (then the budget may exceed `max_tokens`, as the extended thinking guide says).

Unknown top-level fields are not refused here: a Claude deployment gets them as sent (and
Anthropic refuses what it does not know); a translation ignores them.

Sources (platform.claude.com/docs/en/...): the Messages API reference (`api/messages`), the
token counting reference (`api/messages-count-tokens`), extended thinking
(`build-with-claude/extended-thinking`: the 1,024 minimum, budget below max_tokens,
interleaved thinking), tool use (`agents-and-tools/tool-use/overview`: client and server
tools, `tool_choice`).
"""

from __future__ import annotations

from typing import Any

from proxy.errors import BadRequest

ROLES = frozenset({"user", "assistant", "system"})
TOOL_CHOICES = frozenset({"auto", "any", "tool", "none"})
INTERLEAVED_THINKING = "interleaved-thinking-2025-05-14"
MIN_THINKING_BUDGET = 1024
MAX_INT = 2**31 - 1  # as validate_chat bounds max_tokens: a hold must fit Redis's 64 bits


def fail(message: str, param: str) -> BadRequest:
    return BadRequest(f"{param}: {message}", param=param)


def check_body(body: dict[str, Any], *, counting: bool = False, betas: str = "") -> None:
    """Check a Messages (or, `counting`, a count_tokens) body; BadRequest naming the field.
    `betas`: the request's `anthropic-beta` header."""
    if "model" not in body:
        raise fail("Field required", "model")
    if not isinstance(body["model"], str):
        raise fail("Input should be a valid string", "model")
    if not counting:
        _check_max_tokens(body.get("max_tokens"))
    _check_messages(body.get("messages"))
    _check_system(body.get("system"))
    _check_sampling(body)
    _check_tools(body.get("tools"), body.get("tool_choice"))
    _check_thinking(body.get("thinking"), body.get("max_tokens"), betas)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise fail("Input should be a valid boolean", "stream")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_max_tokens(value: Any) -> None:
    if value is None:
        raise fail("Field required", "max_tokens")
    if not _is_int(value) or not 1 <= value <= MAX_INT:
        raise fail(f"Input should be an integer from 1 to {MAX_INT}", "max_tokens")


def _check_messages(messages: Any) -> None:
    if messages is None:
        raise fail("Field required", "messages")
    if not isinstance(messages, list) or not messages:
        raise fail("Input should be a non-empty array of messages", "messages")
    for i, message in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(message, dict):
            raise fail("Input should be an object", where)
        role = message.get("role")
        if role not in ROLES:
            raise fail("Input should be 'user' or 'assistant'", f"{where}.role")
        content = message.get("content")
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            raise fail("Input should be a string or an array of content blocks", f"{where}.content")
        for j, block in enumerate(content):
            check_block(block, role, f"{where}.content.{j}")


# block type -> (field, the type it must have, its name in the message)
_REQUIRED: dict[str, tuple[tuple[str, type, str], ...]] = {
    "text": (("text", str, "a valid string"),),
    "image": (("source", dict, "an object"),),
    "document": (("source", dict, "an object"),),
    "tool_use": (("id", str, "a valid string"), ("name", str, "a valid string")),
    "tool_result": (("tool_use_id", str, "a valid string"),),
    "thinking": (("thinking", str, "a valid string"), ("signature", str, "a valid string")),
    "redacted_thinking": (("data", str, "a valid string"),),
}


def check_block(block: Any, role: str, where: str) -> None:
    """One content block: an object with a `type`, and the fields its type requires."""
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        raise fail("Input should be an object with a 'type'", where)
    kind = block["type"]
    for name, required, what in _REQUIRED.get(kind, ()):
        if name not in block:
            raise fail("Field required", f"{where}.{name}")
        if not isinstance(block[name], required):
            raise fail(f"Input should be {what}", f"{where}.{name}")
    if kind == "tool_use":
        if role != "assistant":
            raise fail("tool_use blocks may only appear in assistant messages", where)
        if not isinstance(block.get("input"), dict):
            raise fail("Input should be an object", f"{where}.input")
    elif kind == "tool_result":
        if role != "user":
            raise fail("tool_result blocks may only appear in user messages", where)
        content = block.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise fail("Input should be a string or an array of blocks", f"{where}.content")
        for k, part in enumerate(content if isinstance(content, list) else ()):
            check_block(part, role, f"{where}.content.{k}")


def _check_system(system: Any) -> None:
    if system is None or isinstance(system, str):
        return
    if not isinstance(system, list):
        raise fail("Input should be a string or an array of text blocks", "system")
    for i, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise fail("Input should be a text block", f"system.{i}")
        if not isinstance(block.get("text"), str):
            raise fail("Input should be a valid string", f"system.{i}.text")


def _check_sampling(body: dict[str, Any]) -> None:
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and (not _is_number(value) or not 0 <= value <= 1):
            raise fail("Input should be a number from 0 to 1", name)
    top_k = body.get("top_k")
    if top_k is not None and (not _is_int(top_k) or top_k < 0):
        raise fail("Input should be an integer of at least 0", "top_k")
    stops = body.get("stop_sequences")
    if stops is not None and (
        not isinstance(stops, list) or not all(isinstance(s, str) for s in stops)
    ):
        raise fail("Input should be an array of strings", "stop_sequences")
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise fail("Input should be an object", "metadata")
        user = metadata.get("user_id")
        if user is not None and not isinstance(user, str):
            raise fail("Input should be a valid string", "metadata.user_id")


def _check_tools(tools: Any, choice: Any) -> None:
    names: set[str] = set()
    if tools is not None:
        if not isinstance(tools, list):
            raise fail("Input should be an array of tools", "tools")
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
                raise fail("Input should be a tool with a string 'name'", f"tools.{i}")
            kind = tool.get("type")
            if kind is not None and not isinstance(kind, str):
                raise fail("Input should be a valid string", f"tools.{i}.type")
            if kind in (None, "custom") and not isinstance(tool.get("input_schema"), dict):
                raise fail("Input should be an object (a JSON schema)", f"tools.{i}.input_schema")
            names.add(tool["name"])
    if choice is None:
        return
    if not isinstance(choice, dict) or choice.get("type") not in TOOL_CHOICES:
        raise fail("Input should be an object of type auto, any, tool or none", "tool_choice")
    if choice["type"] == "tool" and choice.get("name") not in names:
        raise fail(f"Tool '{choice.get('name')}' not found in tools", "tool_choice.name")
    parallel = choice.get("disable_parallel_tool_use")
    if parallel is not None and not isinstance(parallel, bool):
        raise fail("Input should be a valid boolean", "tool_choice.disable_parallel_tool_use")


def _check_thinking(thinking: Any, max_tokens: Any, betas: str) -> None:
    if thinking is None:
        return
    if not isinstance(thinking, dict) or not isinstance(thinking.get("type"), str):
        raise fail("Input should be an object with a 'type'", "thinking")
    if thinking["type"] != "enabled":
        return
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < MIN_THINKING_BUDGET:
        raise fail(
            f"Input should be an integer of at least {MIN_THINKING_BUDGET}",
            "thinking.budget_tokens",
        )
    if _is_int(max_tokens) and budget >= max_tokens and INTERLEAVED_THINKING not in betas:
        raise fail("`max_tokens` must be greater than `thinking.budget_tokens`", "max_tokens")
