"""An OpenAI chat request -> a Gemini GenerateContentRequest (the conversation: contents.py).

OpenAI fields: mapped: messages, tools, tool_choice, temperature, top_p, max_tokens /
max_completion_tokens (the admitted cap), stop, n (candidateCount), seed, presence and
frequency penalties (only when non-zero: models without penalty support refuse the field
even at zero), response_format. Refused with a 400 naming the field, because the answer
would lack what they ask for: logprobs / top_logprobs, modalities other than text, audio,
web_search_options, functions / function_call. Ignored, because they do not change the
answer's shape: logit_bias, user, safety_identifier, prompt_cache_key, parallel_tool_calls
(Gemini has no switch: an answer may hold several calls), service_tier, store, metadata,
prediction, reasoning_effort and verbosity (Gemini's thinking budget differs per model, and
models without thinking refuse thinkingConfig).

- empty or repeated stop sequences are left out (whitespace ones are real); more than 5: 400;
- tool_choice 'auto', 'none', 'required' are the modes AUTO, NONE, ANY; a named function is
  ANY with that one allowed; a function without parameters is declared without any (Gemini
  refuses an OBJECT with no properties);
- JSON schemas (tool parameters, `response_format`) are narrowed to the OpenAPI subset that
  `parameters` and `responseSchema` accept on every Gemini model, 1.5 included
  (`responseJsonSchema` would take them whole, but only on newer models): schema.py.

Sources: Gemini API reference, GenerationConfig
(ai.google.dev/api/generate-content#generationconfig: `stopSequences` up to 5,
`candidateCount`, penalties, `seed`, `responseMimeType`, `responseSchema`), Tool and ToolConfig
(ai.google.dev/api/caching#Tool: functionDeclarations; #ToolConfig: functionCallingConfig
modes and `allowedFunctionNames`); structured output
(ai.google.dev/gemini-api/docs/structured-output).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from proxy.core import ChatRequest
from proxy.errors import BadRequest
from proxy.providers.gemini.calls import ToolNames, short
from proxy.providers.gemini.contents import contents_of
from proxy.providers.gemini.schema import gemini_schema

MAX_STOP_SEQUENCES = 5

_TOOL_CHOICE_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}
_PENALTIES = {"presence_penalty": "presencePenalty", "frequency_penalty": "frequencyPenalty"}


def build_body(chat: ChatRequest, cap: int) -> dict[str, Any]:
    """The Gemini GenerateContentRequest for an OpenAI chat request; `cap` is the output
    cap of each candidate (maxOutputTokens)."""
    body = chat.body
    for name in ("functions", "function_call"):
        if body.get(name):
            raise BadRequest(
                "functions and function_call are deprecated; use tools and tool_choice.",
                param=name,
            )
    _refuse_unsupported(body)
    names = ToolNames()
    declarations = []
    tools = body.get("tools")
    if tools:
        if not isinstance(tools, list):
            raise BadRequest("tools must be an array of function tools.", param="tools")
        declarations = [_declaration(tool, f"tools[{i}]", names) for i, tool in enumerate(tools)]
    system, contents = contents_of(body.get("messages") or [], names)
    request: dict[str, Any] = {"contents": contents}
    if system:
        request["systemInstruction"] = {"parts": system}
    request["generationConfig"] = _generation_config(chat, cap)
    if declarations:
        request["tools"] = [{"functionDeclarations": declarations}]
        choice = body.get("tool_choice")
        if choice is not None:
            request["toolConfig"] = {"functionCallingConfig": _calling_config(choice, names)}
    return request


def _refuse_unsupported(body: Mapping[str, Any]) -> None:
    """Refuse, naming it, a field that would change the answer's shape and that Gemini's
    generateContent cannot honour."""
    if body.get("logprobs") or body.get("top_logprobs"):
        name = "logprobs" if body.get("logprobs") else "top_logprobs"
        raise BadRequest(f"{name} is not supported for this model.", param=name)
    modalities = body.get("modalities")
    if isinstance(modalities, list) and any(m != "text" for m in modalities):
        raise BadRequest("modalities: this model answers text only.", param="modalities")
    for name in ("audio", "web_search_options"):
        if body.get(name) is not None:
            raise BadRequest(f"{name} is not supported for this model.", param=name)


def _generation_config(chat: ChatRequest, cap: int) -> dict[str, Any]:
    body = chat.body
    config: dict[str, Any] = {"maxOutputTokens": cap}
    if body.get("temperature") is not None:
        config["temperature"] = body["temperature"]
    if body.get("top_p") is not None:
        config["topP"] = body["top_p"]
    stop = body.get("stop")
    given = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if not isinstance(given, list) or not all(isinstance(s, str) for s in given):
        raise BadRequest("stop must be a string or an array of strings.", param="stop")
    # Gemini refuses an empty stop sequence; whitespace ones ("\n") are real and kept.
    stops = list(dict.fromkeys(s for s in given if s))
    if len(stops) > MAX_STOP_SEQUENCES:
        raise BadRequest(
            f"stop: this model takes at most {MAX_STOP_SEQUENCES} sequences.", param="stop"
        )
    if stops:
        config["stopSequences"] = stops
    for name, field in _PENALTIES.items():
        if body.get(name):
            config[field] = body[name]
    if body.get("seed") is not None:
        config["seed"] = body["seed"]
    n = candidate_count(body)
    if n != 1:
        config["candidateCount"] = n
    config.update(_response_format(body.get("response_format")))
    return config


def _response_format(spec: Any) -> dict[str, Any]:
    if spec is None:
        return {}
    if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
        raise BadRequest(
            "'response_format' must be an object with a 'type': text, json_object or json_schema.",
            param="response_format",
        )
    kind = spec["type"]
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"responseMimeType": "application/json"}
    if kind == "json_schema":
        json_schema = spec.get("json_schema")
        if not isinstance(json_schema, dict):
            raise BadRequest(
                "'response_format.json_schema' must be an object.",
                param="response_format.json_schema",
            )
        schema = json_schema.get("schema")
        out: dict[str, Any] = {"responseMimeType": "application/json"}
        if isinstance(schema, dict):
            out["responseSchema"] = gemini_schema(schema, "response_format.json_schema.schema")
        return out
    raise BadRequest(
        f"'response_format.type' {kind!r} is not supported: text, json_object or json_schema.",
        param="response_format.type",
    )


def candidate_count(body: Mapping[str, Any]) -> int:
    n = body.get("n")
    return n if isinstance(n, int) and n > 0 else 1


def _declaration(tool: Any, where: str, names: ToolNames) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type") != "function":
        raise BadRequest(f"{where}: only function tools are supported for this model.", param=where)
    function = tool.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise BadRequest(f"{where}.function.name is required.", param=f"{where}.function.name")
    if function["name"] in names.to_gemini:
        raise BadRequest(
            f"{where}.function.name {short(function['name'])!r} is declared twice.",
            param=f"{where}.function.name",
        )
    declaration: dict[str, Any] = {"name": names.gemini(function["name"], f"{where}.function.name")}
    if isinstance(function.get("description"), str) and function["description"]:
        declaration["description"] = function["description"]
    parameters = function.get("parameters")
    if isinstance(parameters, dict):
        schema = gemini_schema(parameters, f"{where}.function.parameters")
        # Gemini refuses an OBJECT with no properties; a function without arguments has none.
        if schema.get("type") != "object" or schema.get("properties"):
            declaration["parameters"] = schema
    return declaration


def _calling_config(choice: Any, names: ToolNames) -> dict[str, Any]:
    if isinstance(choice, str) and choice in _TOOL_CHOICE_MODES:
        return {"mode": _TOOL_CHOICE_MODES[choice]}
    function = choice.get("function") if isinstance(choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str):
        raise BadRequest(
            "tool_choice must be auto, none, required or a named function.", param="tool_choice"
        )
    if name not in names.to_gemini:
        raise BadRequest(
            f"tool_choice names function {short(name)!r}, which is not in tools.",
            param="tool_choice",
        )
    return {"mode": "ANY", "allowedFunctionNames": [names.to_gemini[name]]}
