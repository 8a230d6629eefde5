"""Function calls across the two APIs: their names, and the thought signatures they carry.

Names: OpenAI's pattern for a function name allows a digit or a dash first; Gemini's wants a
letter or `_` first. Such a name is sent with a `_` in front (cut to 64) and mapped back in
the answer (`ToolNames`).

Thought signatures (Gemini 2.5 and 3): a functionCall part may carry a `thoughtSignature`
that Gemini 3 wants back on the first functionCall of every step of the current turn
(parallel calls: only the first has one). OpenAI has no field for it, but clients echo a tool
call's `id` back (assistant `tool_calls`, tool `tool_call_id`), so the signature rides in the
id: `call_<hex>~<signature>`, read back only from ids of exactly that shape. The first call
of a step that has none (history from another model, ids the client made) gets Google's
documented dummy, DUMMY_SIGNATURE. Signatures on text parts (the last part of an answer
without calls) are not enforced and have no OpenAI carrier: they are dropped.

Sources: Gemini API reference, FunctionDeclaration (ai.google.dev/api/caching#FunctionDeclaration:
the name's pattern, 64 characters at most); thought signatures
(ai.google.dev/gemini-api/docs/thought-signatures: which parts carry one, what Gemini 3
validates, the dummy signature); OpenAI's function name pattern, [a-zA-Z0-9_-]{1,64}
(platform.openai.com/docs/api-reference/chat/create, `tools[].function.name`).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from typing import Any

from proxy.errors import BadRequest

# Google's documented stand-in for a function call whose signature was never seen (history
# written by another model, or by the client): Gemini 3 then skips the signature check.
DUMMY_SIGNATURE = "skip_thought_signature_validator"
# A tool call id we minted around a thoughtSignature: `call_<32 hex>~<signature>`. `~` is in
# neither alphabet of base64, so only ids of this exact shape are read back as signatures.
_SIGNED_ID = re.compile(r"call_[0-9a-f]{32}~([A-Za-z0-9+/=_-]+)")
_GEMINI_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,63}")
_OPENAI_NAME = re.compile(r"[A-Za-z0-9_\-]{1,64}")


class ToolNames:
    """OpenAI function names <-> Gemini's. OpenAI takes names that start with a digit or a
    dash; Gemini wants a letter or an underscore first, so those get a `_` in front (cut to
    64) and get their own name back in the answer."""

    def __init__(self) -> None:
        self.to_gemini: dict[str, str] = {}
        self.to_openai: dict[str, str] = {}

    def gemini(self, name: str, where: str) -> str:
        known = self.to_gemini.get(name)
        if known is not None:
            return known
        if _GEMINI_NAME.fullmatch(name):
            mapped = name
        elif _OPENAI_NAME.fullmatch(name):
            mapped = ("_" + name)[:64]
        else:
            raise BadRequest(
                f"{where} {short(name)!r} must be 1 to 64 letters, digits, underscores or dashes.",
                param=where,
            )
        other = self.to_openai.setdefault(mapped, name)
        if other != name:
            raise BadRequest(
                f"{where}: functions {short(other)!r} and {short(name)!r} have the same "
                "name for this model.",
                param=where,
            )
        self.to_gemini[name] = mapped
        return mapped

    def openai(self, name: str) -> str:
        return self.to_openai.get(name, name)


def tool_names(body: Mapping[str, Any]) -> ToolNames:
    """The names of the request's tools (already checked by `build_body`), for its answer."""
    names = ToolNames()
    for tool in body.get("tools") or ():
        function = tool.get("function") if isinstance(tool, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if isinstance(name, str):
            try:
                names.gemini(name, "tools")
            except BadRequest:
                pass
    return names


def short(text: str) -> str:
    """A client's name as an error message shows it: a hostile one can be megabytes long."""
    return text if len(text) <= 80 else text[:80] + "..."


def call_id(signature: Any) -> str:
    """A fresh tool call id, carrying the call's thoughtSignature when it has one: clients
    echo the id back (assistant tool_calls, tool_call_id), which brings the signature back
    to the functionCall part it came on."""
    fresh = f"call_{uuid.uuid4().hex}"
    if isinstance(signature, str) and _SIGNED_ID.fullmatch(f"{fresh}~{signature}"):
        return f"{fresh}~{signature}"
    return fresh


def signature_in(call_id: str) -> str | None:
    """The thoughtSignature a tool call id we minted carries (`call_id`), or None."""
    signed = _SIGNED_ID.fullmatch(call_id)
    return signed.group(1) if signed else None
