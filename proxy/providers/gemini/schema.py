"""JSON Schema -> Gemini's Schema (the OpenAPI subset that `parameters` and `responseSchema`
accept on every Gemini model): local $refs inlined, nullable types folded, the rest dropped.

Kept: `type` (a list of types becomes `anyOf`, "null" in it `nullable`), `anyOf`/`oneOf`
(a null variant is `nullable`; one variant left is inlined), `allOf` (merged), string `enum`
and `const` (other enums keep just their type), the `format`s Gemini knows for the type,
`description`, `pattern`, the numeric bounds, `properties`, `required` (only properties that
exist), `items` (the first of a tuple's). A $ref must point into `$defs` or `definitions`;
recursion deeper than 32 levels, or more than 5000 nodes once inlined, is a 400.

Source: Gemini API reference, Schema (ai.google.dev/api/caching#Schema: its fields, the
formats of each type, `nullable`, `anyOf`).
"""

from __future__ import annotations

from typing import Any

from proxy.errors import BadRequest

_FORMATS = {
    "string": {"enum", "date-time"},
    "number": {"float", "double"},
    "integer": {"int32", "int64"},
}
_NUMBERS = (
    "minimum",
    "maximum",
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "minProperties",
    "maxProperties",
)
_MAX_SCHEMA_DEPTH = 32
# Inlining $refs can multiply a small schema: ten properties per level, each a $ref to the
# next level, make 10**n nodes from n small definitions. Past this many, refuse.
_MAX_SCHEMA_NODES = 5000


def gemini_schema(schema: dict[str, Any], where: str) -> dict[str, Any]:
    """A JSON Schema narrowed to Gemini's OpenAPI subset: local $refs inlined, the rest dropped."""
    defs: dict[str, Any] = {}
    for key in ("definitions", "$defs"):
        if isinstance(schema.get(key), dict):
            defs.update(schema[key])
    return _Converter(defs).convert(schema, where, 0)


def _short(name: Any) -> str:
    """A property name as shown in an error's path: a hostile schema's can be megabytes long,
    and its path repeats it once per level."""
    text = str(name)
    return text if len(text) <= 40 else text[:40] + "..."


class _Converter:
    """One schema's conversion: its definitions, and how many more nodes it may make."""

    __slots__ = ("budget", "defs")

    def __init__(self, defs: dict[str, Any]) -> None:
        self.defs = defs
        self.budget = _MAX_SCHEMA_NODES

    def convert(self, node: Any, where: str, depth: int) -> dict[str, Any]:
        if depth > _MAX_SCHEMA_DEPTH:
            raise BadRequest(f"{where} is recursive or nested too deeply for this model.")
        self.budget -= 1
        if self.budget < 0:
            raise BadRequest(f"{where} is too large for this model once its $refs are inlined.")
        if not isinstance(node, dict):
            return {}
        ref = node.get("$ref")
        if isinstance(ref, str):
            return self.convert(self._resolve(node, ref, where), where, depth + 1)
        all_of = node.get("allOf")
        out = self._merge_all_of(all_of, where, depth) if isinstance(all_of, list) else {}
        kind, nullable = self._fold_alternatives(node, out, where, depth)
        if isinstance(kind, str):
            out["type"] = kind
        _copy_keywords(node, out)
        self._properties(node, out, where, depth)
        items = node.get("items")
        if isinstance(items, list):
            items = items[0] if items else None
        if isinstance(items, dict):
            out["items"] = self.convert(items, f"{where}.items", depth + 1)
        if nullable:
            out["nullable"] = True
        return out

    def _resolve(self, node: dict[str, Any], ref: str, where: str) -> dict[str, Any]:
        """The node with its local $ref replaced by the definition (the node's own keys win)."""
        name = ref.rsplit("/", 1)[-1]
        if not ref.startswith(("#/$defs/", "#/definitions/")) or name not in self.defs:
            raise BadRequest(f"{where}: cannot resolve $ref {ref!r}.")
        if not isinstance(self.defs[name], dict):
            raise BadRequest(f"{where}: $ref {ref!r} is not a schema object.")
        rest = {k: v for k, v in node.items() if k != "$ref"}
        return {**self.defs[name], **rest}

    def _merge_all_of(self, all_of: list[Any], where: str, depth: int) -> dict[str, Any]:
        """An `allOf` merged into one schema: properties and required joined, the first of
        any other keyword kept."""
        out: dict[str, Any] = {}
        for sub in all_of:
            converted = self.convert(sub, where, depth + 1)
            out.setdefault("properties", {}).update(converted.pop("properties", {}))
            out.setdefault("required", []).extend(converted.pop("required", []))
            for key, value in converted.items():
                out.setdefault(key, value)
        return out

    def _fold_alternatives(
        self, node: dict[str, Any], out: dict[str, Any], where: str, depth: int
    ) -> tuple[Any, bool]:
        """A list of types and anyOf/oneOf into `out` as Gemini's `anyOf` (or the one
        alternative inlined); returns the single type left, if any, and whether null was one
        of the alternatives."""
        nullable = node.get("nullable") is True
        kind = node.get("type")
        if isinstance(kind, list):
            kinds = [k for k in kind if k != "null"]
            nullable = nullable or len(kinds) < len(kind)
            if len(kinds) > 1:
                out["anyOf"] = [self.convert({**node, "type": k}, where, depth + 1) for k in kinds]
            kind = kinds[0] if len(kinds) == 1 else None
        variants = node.get("anyOf") or node.get("oneOf")
        if isinstance(variants, list):
            real = [v for v in variants if not (isinstance(v, dict) and v.get("type") == "null")]
            nullable = nullable or len(real) < len(variants)
            converted = [self.convert(v, where, depth + 1) for v in real]
            if len(converted) == 1:
                out.update(converted[0])
            elif converted:
                out["anyOf"] = converted
        return kind, nullable

    def _properties(
        self, node: dict[str, Any], out: dict[str, Any], where: str, depth: int
    ) -> None:
        """`properties` converted, and `required` (allOf's and the node's own) narrowed to the
        properties that exist; no empty `properties`."""
        properties = node.get("properties")
        if isinstance(properties, dict):
            out["properties"] = {
                str(name): self.convert(sub, f"{where}.properties.{_short(name)}", depth + 1)
                for name, sub in properties.items()
            }
        given = node.get("required")
        required = [*out.pop("required", []), *(given if isinstance(given, list) else ())]
        known = out.get("properties", {})
        named = dict.fromkeys(r for r in required if isinstance(r, str))  # once each, in order
        required = [r for r in named if r in known]
        if required:
            out["required"] = required
        if not out.get("properties"):
            out.pop("properties", None)


def _copy_keywords(node: dict[str, Any], out: dict[str, Any]) -> None:
    """The keywords Gemini takes as they are: string enums (and const), the formats it knows
    for the type, description, pattern, numeric bounds."""
    enum = node.get("enum", [node["const"]] if "const" in node else None)
    if isinstance(enum, list) and enum and all(isinstance(v, str) for v in enum):
        out["enum"] = enum  # Gemini enums are strings only; others keep just their type
        out.setdefault("type", "string")
    fmt = node.get("format")
    if isinstance(fmt, str) and fmt in _FORMATS.get(out.get("type", ""), ()):
        out["format"] = fmt
    if isinstance(node.get("description"), str):
        out["description"] = node["description"]
    if isinstance(node.get("pattern"), str):
        out["pattern"] = node["pattern"]
    for key in _NUMBERS:
        value = node.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = value
