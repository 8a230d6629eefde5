"""OpenAI messages -> Anthropic's `system` and `messages` (the Messages API's conversation).

Every conversation the gateway accepts becomes one Anthropic accepts, or a 400 that names the
client's own field, never one naming a field it did not send.
- `system`/`developer` messages go to `system`; when nothing else is left, the system prompt
  is the user turn. `tool` messages become `tool_result` blocks and assistant `tool_calls`
  `tool_use` blocks. Consecutive turns of one role merge; tool results come first in their user
  turn. A conversation that opens with the assistant gets a user turn before it.
- Empty and blank text parts are dropped (Anthropic refuses them); an empty assistant message
  is dropped (its neighbours merge); a user turn left empty says PLACEHOLDER ("..."), so that
  an empty last message does not leave the assistant's turn last. A final assistant turn is a
  prefill: its trailing whitespace is cut.
- Tool ids: characters Anthropic refuses become "_", and an id already used in an earlier turn
  gets a suffix (providers that number calls per turn repeat them); a result answers the
  assistant turn just before it. A result that answers no call there, a call left without a
  result, a repeated id in one turn, or a missing id is a 400 naming it (as OpenAI does).
- Function names outside [a-zA-Z0-9_-]{1,64}: 400. Images must be JPEG, PNG, GIF or WebP, told
  by their bytes whatever the data: URL says (image/jpg is JPEG); files PDF (base64) or plain
  text; else 400.

Sources (Anthropic's documentation, platform.claude.com/docs/en/...): the Messages API
reference (`api/messages`: roles, content blocks, the final assistant turn as a prefill);
tool use (`agents-and-tools/tool-use/implement-tool-use`: the name and id patterns, tool
results first in their user turn, one result per call); vision (`build-with-claude/vision`:
the four image types); PDF support (`build-with-claude/pdf-support`) and citations
(`build-with-claude/citations`: the plain-text document source).
"""

from __future__ import annotations

import base64
import re
from typing import Any

import orjson

from proxy.errors import BadRequest

_DATA_URL = re.compile(r"data:(?P<type>[\w.+-]+/[\w.+-]+)(?:;[^,;]*)*;base64,(?P<data>.*)", re.S)
_TOOL_ID_BAD_CHARS = re.compile(r"[^a-zA-Z0-9_-]")
_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")  # OpenAI's rule for function names; Anthropic's too
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_IMAGE_ALIASES = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg"}
_IMAGE_MAGIC = ((b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG", "image/png"), (b"GIF8", "image/gif"))
# What a user turn says when the client's was empty: Anthropic refuses empty turns and blank
# text, and dropping the turn would leave an assistant turn last (a prefill to continue).
PLACEHOLDER = "..."


def _tool_id(value: Any, where: str) -> str:
    """Anthropic wants ids matching [a-zA-Z0-9_-]+; ids made by other providers may not."""
    if not isinstance(value, str) or not value:
        raise BadRequest(f"'{where}' must be a non-empty string.", param=where)
    return _TOOL_ID_BAD_CHARS.sub("_", value)


def check_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise BadRequest(
            f"'{where}' must be 1 to 64 letters, digits, underscores or dashes.", param=where
        )
    return name


def _text_of(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadRequest(f"{where}.content must be a string or a list of parts.")
    texts = []
    for part in content:
        if isinstance(part, dict) and part.get("type") in ("text", "refusal"):
            text = part.get("text", part.get("refusal"))
            if isinstance(text, str):
                texts.append(text)
                continue
        raise BadRequest(f"{where} may only contain text parts for this model.")
    return "".join(texts)


def _sniff_image(data: str) -> str | None:
    """The image type its first bytes say, whatever the data: URL claims."""
    try:
        head = base64.b64decode(data[:24] + "=" * (-len(data[:24]) % 4))
    except ValueError:
        return None
    for magic, media_type in _IMAGE_MAGIC:
        if head.startswith(magic):
            return media_type
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def _media_block(kind: str, url: Any, where: str) -> dict[str, Any]:
    if not isinstance(url, str) or not url:
        raise BadRequest(f"{where} has no URL.", param=where)
    if url.startswith(("http://", "https://")):
        return {"type": kind, "source": {"type": "url", "url": url}}
    match = _DATA_URL.fullmatch(url) if url.startswith("data:") else None
    if not match:
        raise BadRequest(f"{where} must be a base64 data: URL or an http(s) URL.", param=where)
    media_type, data = match["type"].lower(), match["data"]
    if kind == "image":
        media_type = _sniff_image(data) or _IMAGE_ALIASES.get(media_type, media_type)
        if media_type not in IMAGE_TYPES:
            raise BadRequest(
                f"{where}: images must be JPEG, PNG, GIF or WebP for this model, not {media_type}.",
                param=where,
            )
    elif media_type == "text/plain":
        try:
            text = base64.b64decode(data, validate=True).decode("utf-8")
        except ValueError as exc:  # binascii.Error and UnicodeDecodeError both are
            raise BadRequest(
                f"{where}: the text/plain file is not base64 UTF-8.", param=where
            ) from exc
        return {"type": kind, "source": {"type": "text", "media_type": media_type, "data": text}}
    elif media_type != "application/pdf":
        raise BadRequest(
            f"{where}: files must be PDF or plain text for this model, not {media_type}.",
            param=where,
        )
    return {"type": kind, "source": {"type": "base64", "media_type": media_type, "data": data}}


def _user_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content.strip() else []
    if not isinstance(content, list):
        raise BadRequest(f"{where}.content must be a string or a list of parts.")
    blocks: list[dict[str, Any]] = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        at = f"{where}.content[{i}]"
        if kind == "text" and isinstance(part.get("text"), str):
            if part["text"].strip():  # Anthropic refuses empty and blank text blocks
                blocks.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            blocks.append(_media_block("image", url, f"{at}.image_url.url"))
        elif kind == "file" and isinstance(doc := part.get("file"), dict) and doc.get("file_data"):
            blocks.append(_media_block("document", doc["file_data"], f"{at}.file.file_data"))
        else:
            raise BadRequest(
                f"{at}: content part type {kind!r} is not supported for this model.", param=at
            )
    return blocks


Placed = list[tuple[dict[str, Any], str]]  # blocks of a turn, each with the field it came from


def _tool_use_blocks(calls: Any, where: str) -> Placed:
    blocks: Placed = []
    for i, call in enumerate(calls or ()):
        at = f"{where}.tool_calls[{i}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            raise BadRequest(f"{at} must be a function call with a name.", param=at)
        name = check_name(function.get("name"), f"{at}.function.name")
        arguments = function.get("arguments") or "{}"
        try:
            parsed = orjson.loads(arguments) if isinstance(arguments, str) else arguments
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"{at}.function.arguments is not JSON.", param=at) from exc
        if not isinstance(parsed, dict):
            raise BadRequest(f"{at}.function.arguments must be a JSON object.", param=at)
        block = {
            "type": "tool_use",
            "id": _tool_id(call.get("id"), f"{at}.id"),
            "name": name,
            "input": parsed,
        }
        blocks.append((block, f"{at}.id"))
    return blocks


def _tool_result_block(message: dict[str, Any], where: str) -> dict[str, Any]:
    block: dict[str, Any] = {
        "type": "tool_result",
        "tool_use_id": _tool_id(message.get("tool_call_id"), f"{where}.tool_call_id"),
    }
    content = message.get("content")
    if isinstance(content, list):
        if parts := _user_blocks(content, where):
            block["content"] = parts
    elif isinstance(content, str) and content.strip():
        block["content"] = content
    return block


def _pair_tool_calls(turns: list[tuple[str, Placed]]) -> None:
    """Give every tool_use an id unique in the request, and its result that id; refuse
    results that answer no call of the assistant turn just before, and calls left unanswered
    (as OpenAI does). Ids are the client's, scoped by turn: a provider that numbers its calls
    per turn repeats them, and Anthropic wants them unique."""
    used: set[str] = set()
    ids: dict[str, str] = {}  # the client's ids of the last assistant turn -> ours
    pending: dict[str, str] = {}  # our ids of calls still awaiting a result -> where from
    for role, blocks in turns:
        if role == "assistant":
            ids = {}
            for block, where in blocks:
                if block["type"] != "tool_use":
                    continue
                if block["id"] in ids:
                    raise BadRequest(f"'{where}' repeats an id of the same message.", param=where)
                unique, n = block["id"], 1
                while unique in used:
                    n += 1
                    unique = f"{block['id']}_{n}"
                used.add(unique)
                ids[block["id"]] = block["id"] = unique
                pending[unique] = where
            continue
        for block, where in blocks:
            if block["type"] == "tool_result":
                ours = ids.get(block["tool_use_id"])
                if ours is None or pending.pop(ours, None) is None:
                    raise BadRequest(
                        f"'{where}' answers no tool call of the assistant message before it.",
                        param=where,
                    )
                block["tool_use_id"] = ours
        if pending:
            break
    if pending:
        where = next(iter(pending.values()))
        raise BadRequest(
            f"'{where}': this tool call has no tool message answering it.", param=where
        )


def translate_messages(messages: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """OpenAI messages -> (Anthropic `system`, alternating Anthropic `messages`)."""
    system: list[str] = []
    turns: list[tuple[str, Placed]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if message.get("role") in ("system", "developer"):
            text = _text_of(message.get("content"), where)
            if text.strip():
                system.append(text)
            continue
        turn = _turn(message, where)
        if turn is None:
            continue  # an empty assistant message: the turns around it merge
        if turns and turns[-1][0] == turn[0]:
            turns[-1][1].extend(turn[1])
        else:
            turns.append(turn)
    if not turns and system:  # a system prompt alone is the request: it becomes the user turn
        turns.append(("user", [({"type": "text", "text": "\n\n".join(system)}, "messages")]))
        system = []
    if not turns or turns[0][0] != "user":
        turns.insert(0, ("user", []))
    _pair_tool_calls(turns)
    return "\n\n".join(system), _render(turns)


def _turn(message: dict[str, Any], where: str) -> tuple[str, Placed] | None:
    """The Anthropic role and blocks of a user, assistant or tool message; None for an
    assistant message with nothing in it."""
    role = message.get("role")
    if role == "user":
        return role, [(b, where) for b in _user_blocks(message.get("content"), where)]
    if role == "assistant":
        text = _text_of(message.get("content"), where)
        blocks: Placed = [({"type": "text", "text": text}, where)] if text.strip() else []
        blocks += _tool_use_blocks(message.get("tool_calls"), where)
        return (role, blocks) if blocks else None
    if role == "tool":
        return "user", [(_tool_result_block(message, where), f"{where}.tool_call_id")]
    raise BadRequest(
        f"{where}.role {role!r} is not supported for this model.", param=f"{where}.role"
    )


def _render(turns: list[tuple[str, Placed]]) -> list[dict[str, Any]]:
    """The turns as Anthropic messages: tool results first in a user turn, an empty turn
    said with PLACEHOLDER, a final assistant turn (a prefill) without trailing whitespace."""
    out: list[dict[str, Any]] = []
    for role, placed in turns:
        content = [block for block, _ in placed]
        if role == "user":
            # Tool results first, as Anthropic wants; each group keeps its order.
            content.sort(key=lambda block: block["type"] != "tool_result")
        out.append({"role": role, "content": content or [{"type": "text", "text": PLACEHOLDER}]})
    last = out[-1]["content"]
    if out[-1]["role"] == "assistant" and last[-1]["type"] == "text":
        # A final assistant turn is a prefill, and Anthropic refuses one ending in whitespace.
        last[-1]["text"] = last[-1]["text"].rstrip()
    return out
