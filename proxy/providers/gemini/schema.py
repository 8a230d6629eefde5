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
    return _convert(schema, defs, where, 0, [_MAX_SCHEMA_NODES])


def _short(name: Any) -> str:
    """A property name as shown in an error's path: a hostile schema's can be megabytes long,
    and its path repeats it once per level."""
    text = str(name)
    return text if len(text) <= 40 else text[:40] + "..."


def _convert(
    node: Any, defs: dict[str, Any], where: str, depth: int, budget: list[int]
) -> dict[str, Any]:
    if depth > _MAX_SCHEMA_DEPTH:
        raise BadRequest(f"{where} is recursive or nested too deeply for this model.")
    budget[0] -= 1
    if budget[0] < 0:
        raise BadRequest(f"{where} is too large for this model once its $refs are inlined.")
    if not isinstance(node, dict):
        return {}
    ref = node.get("$ref")
    if isinstance(ref, str):
        name = ref.rsplit("/", 1)[-1]
        if not ref.startswith(("#/$defs/", "#/definitions/")) or name not in defs:
            raise BadRequest(f"{where}: cannot resolve $ref {ref!r}.")
        if not isinstance(defs[name], dict):
            raise BadRequest(f"{where}: $ref {ref!r} is not a schema object.")
        rest = {k: v for k, v in node.items() if k != "$ref"}
        return _convert({**defs[name], **rest}, defs, where, depth + 1, budget)

    out: dict[str, Any] = {}
    all_of = node.get("allOf")
    for sub in all_of if isinstance(all_of, list) else ():
        converted = _convert(sub, defs, where, depth + 1, budget)
        out.setdefault("properties", {}).update(converted.pop("properties", {}))
        out.setdefault("required", []).extend(converted.pop("required", []))
        for key, value in converted.items():
            out.setdefault(key, value)

    nullable = node.get("nullable") is True
    kind = node.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        nullable = nullable or len(kinds) < len(kind)
        if len(kinds) > 1:
            out["anyOf"] = [
                _convert({**node, "type": k}, defs, where, depth + 1, budget) for k in kinds
            ]
        kind = kinds[0] if len(kinds) == 1 else None
    variants = node.get("anyOf") or node.get("oneOf")
    if isinstance(variants, list):
        real = [v for v in variants if not (isinstance(v, dict) and v.get("type") == "null")]
        nullable = nullable or len(real) < len(variants)
        converted_variants = [_convert(v, defs, where, depth + 1, budget) for v in real]
        if len(converted_variants) == 1:
            out.update(converted_variants[0])
        elif converted_variants:
            out["anyOf"] = converted_variants

    if isinstance(kind, str):
        out["type"] = kind
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
    properties = node.get("properties")
    if isinstance(properties, dict):
        out["properties"] = {
            str(name): _convert(sub, defs, f"{where}.properties.{_short(name)}", depth + 1, budget)
            for name, sub in properties.items()
        }
    given = node.get("required")
    required = [*out.pop("required", []), *(given if isinstance(given, list) else ())]
    known = out.get("properties", {})
    required = [r for r in dict.fromkeys(r for r in required if isinstance(r, str)) if r in known]
    if required:
        out["required"] = required
    if not out.get("properties"):
        out.pop("properties", None)
    items = node.get("items")
    if isinstance(items, list):
        items = items[0] if items else None
    if isinstance(items, dict):
        out["items"] = _convert(items, defs, f"{where}.items", depth + 1, budget)
    if nullable:
        out["nullable"] = True
    return out
