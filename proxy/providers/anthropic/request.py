"""The rest of an OpenAI request -> Anthropic's: the output cap, sampling, tools, the JSON answer.

- `max_tokens` is required there; it is always the reserved cap (`ChatRequest.cap_for`).
  `temperature` is clamped to Anthropic's 0..1 (OpenAI allows up to 2). `top_p` is sent only
  without a temperature: Claude models since Sonnet 4.5 refuse the two together. The gateway's
  default temperature is not added to a request that sets `top_p` (protocols/openai_chat.py), so the
  client's `top_p` is sent unless it set both, and then its temperature wins. Blank stop
  sequences are dropped (Anthropic refuses them). `user` is `metadata.user_id`, hashed when
  longer than 256 characters or not printable.
- Tools: function names outside [a-zA-Z0-9_-]{1,64}, repeated tool names, parameters that are
  not an object's schema: 400. `tool_choice` 'auto', 'none', 'required' (Anthropic's "any") or
  a named function; `parallel_tool_calls: false` is `disable_parallel_tool_use`.
- `response_format` json_object / json_schema: the answer comes as the input of a tool the
  model must call (named after the schema, or `json_answer`), and goes back as the message's
  content (finish reason "stop"), streamed as content deltas. This works on every Claude model,
  unlike the native `output_config.format` (GA on the 4.5 and later models only). The schema
  is not enforced by constrained decoding (`strict` is ignored). Beside the client's tools,
  `tool_choice` becomes "any" (a client tool or the answer); with 'required' or a named
  function, no answer tool is offered.
- Refused with a 400 naming the field, since the answer would not have the shape asked:
  `n` > 1, `logprobs: true`, `top_logprobs`, `modalities` other than text, `audio`, the legacy
  `functions`/`function_call`, `web_search_options`.
- Ignored, since they do not change the answer's shape: `seed`, `frequency_penalty`,
  `presence_penalty`, `logit_bias`, `prediction`, `store`, `metadata`, `service_tier`,
  `reasoning_effort`, `verbosity`, `prompt_cache_key`, `safety_identifier`, and `strict` on
  tools.

Sources (Anthropic's documentation, platform.claude.com/docs/en/...): the Messages API
reference (`api/messages`: `max_tokens` required, `temperature` 0..1, `stop_sequences`,
`metadata.user_id`, `tools`, `tool_choice` auto/any/tool/none and
`disable_parallel_tool_use`); the models' migration guide
(`about-claude/models/migration-guide`: `temperature` or `top_p`, not both, since Sonnet 4.5);
tool use (`agents-and-tools/tool-use/implement-tool-use`: `input_schema` an object's schema);
structured outputs (`build-with-claude/structured-outputs`: `output_config.format` and the
models that take it).
"""

from __future__ import annotations

import hashlib
from typing import Any

from proxy.core import ChatRequest
from proxy.errors import BadRequest
from proxy.providers.anthropic.messages import check_name, translate_messages


def build_body(chat: ChatRequest, model: str, cap: int) -> dict[str, Any]:
    """The Messages API request body for an OpenAI chat request; `cap` is its `max_tokens`.
    Raises BadRequest naming the client's field that Anthropic cannot take."""
    source = chat.body
    _refuse_unsupported(source, chat.public_model)
    system, messages = translate_messages(source.get("messages") or [])
    body: dict[str, Any] = {"model": model, "max_tokens": cap, "messages": messages}
    if system:
        body["system"] = system
    _add_sampling(body, source)
    tools, tool_choice = _tools(source)
    if tools:
        body["tools"] = tools
    if tool_choice is not None:
        body["tool_choice"] = tool_choice
    if chat.stream:
        body["stream"] = True
    return body


def _add_sampling(body: dict[str, Any], source: dict[str, Any]) -> None:
    """`temperature` (else `top_p`), `stop_sequences` and `metadata.user_id`, as Anthropic
    takes them."""
    temperature = source.get("temperature")
    if isinstance(temperature, (int, float)) and not isinstance(temperature, bool):
        body["temperature"] = min(max(float(temperature), 0.0), 1.0)
    elif isinstance(source.get("top_p"), (int, float)):
        body["top_p"] = source["top_p"]  # newer models refuse it beside temperature
    stop = source.get("stop")
    stops = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
    # Anthropic refuses blank stop sequences; a model rarely ends text on whitespace alone.
    stops = [s for s in stops if isinstance(s, str) and s.strip()]
    if stops:
        body["stop_sequences"] = stops
    user = source.get("user")
    if isinstance(user, str) and user:
        if len(user) > 256 or not user.isprintable():
            user = hashlib.sha256(user.encode()).hexdigest()
        body["metadata"] = {"user_id": user}


def _tools(source: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The tools to offer (the client's, and response_format's answer tool) and the
    `tool_choice`, None for Anthropic's default."""
    tools = translate_tools(source["tools"]) if source.get("tools") else []
    choice = source.get("tool_choice")
    if tools:
        names = {tool["name"] for tool in tools}
        anthropic_choice = translate_tool_choice(choice, source.get("parallel_tool_calls"), names)
    elif choice == "required" or isinstance(choice, dict):
        raise BadRequest(
            "tool_choice asks for a tool call, but tools is empty.", param="tool_choice"
        )
    else:
        anthropic_choice = None
    answer = response_tool(source)
    if answer is None:
        return tools, anthropic_choice
    return _offer_answer_tool(tools, answer, source)


def _offer_answer_tool(
    tools: list[dict[str, Any]], answer: dict[str, Any], source: dict[str, Any]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The tools with response_format's beside the client's, and the choice that makes the
    model call it (or one of the client's tools, when it may call them)."""
    if any(tool["name"] == answer["name"] for tool in tools):
        raise BadRequest(
            "response_format.json_schema.name is also the name of a tool.",
            param="response_format.json_schema.name",
        )
    only_answer = not tools or source.get("tool_choice") == "none"
    tools.append(answer)
    choice: dict[str, Any] = (
        {"type": "tool", "name": answer["name"]} if only_answer else {"type": "any"}
    )
    if source.get("parallel_tool_calls") is False:
        choice["disable_parallel_tool_use"] = True
    return tools, choice


def translate_tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise BadRequest("tools must be an array of function tools.", param="tools")
    out = []
    names: set[str] = set()
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or tool.get("type", "function") != "function":
            raise BadRequest(
                f"tools[{i}]: only function tools with a name are supported.", param=f"tools[{i}]"
            )
        name = check_name(function.get("name"), f"tools[{i}].function.name")
        if name in names:
            raise BadRequest(
                f"tools[{i}].function.name: {name!r} names two tools.",
                param=f"tools[{i}].function.name",
            )
        names.add(name)
        spec: dict[str, Any] = {"name": name}
        if isinstance(function.get("description"), str) and function["description"]:
            spec["description"] = function["description"]
        spec["input_schema"] = _object_schema(
            function.get("parameters"), f"tools[{i}].function.parameters"
        )
        out.append(spec)
    return out


def _object_schema(schema: Any, where: str) -> dict[str, Any]:
    """Anthropic wants every tool's input schema to be an object's."""
    if schema is None or schema == {}:
        return {"type": "object", "properties": {}}
    if not isinstance(schema, dict) or schema.get("type", "object") != "object":
        raise BadRequest(f"'{where}' must be a JSON schema of an object.", param=where)
    return {"type": "object", **schema}


def response_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    """The tool whose input is the answer when `response_format` asks for JSON, or None.

    It is offered only when the model may answer without calling one of the client's tools,
    i.e. not when `tool_choice` is 'required' or names a function.
    """
    fmt = body.get("response_format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    choice = body.get("tool_choice")
    if body.get("tools") and (choice == "required" or isinstance(choice, dict)):
        return None
    if kind == "json_object":
        return {
            "name": "json_answer",
            "description": "Give your whole answer as this tool's input: one JSON object.",
            "input_schema": {"type": "object"},
        }
    spec = fmt.get("json_schema") if kind == "json_schema" else None
    if not isinstance(spec, dict):
        raise BadRequest(
            "response_format must be {'type': 'text'}, {'type': 'json_object'} or "
            "{'type': 'json_schema', 'json_schema': {...}}.",
            param="response_format",
        )
    name = check_name(spec.get("name"), "response_format.json_schema.name")
    description = "Give your whole answer as this tool's input."
    if isinstance(spec.get("description"), str) and spec["description"]:
        description += " " + spec["description"]
    schema = _object_schema(spec.get("schema"), "response_format.json_schema.schema")
    return {"name": name, "description": description, "input_schema": schema}


def translate_tool_choice(choice: Any, parallel: Any, names: set[str]) -> dict[str, Any] | None:
    if choice is None or choice == "auto":
        out: dict[str, Any] = {"type": "auto"}
    elif choice == "required":
        out = {"type": "any"}
    elif choice == "none":
        return {"type": "none"}
    elif (
        isinstance(choice, dict)
        and isinstance(choice.get("function"), dict)
        and isinstance(choice["function"].get("name"), str)
    ):
        if choice["function"]["name"] not in names:
            raise BadRequest(
                "tool_choice names a function that is not in tools.", param="tool_choice"
            )
        out = {"type": "tool", "name": choice["function"]["name"]}
    else:
        raise BadRequest(
            "tool_choice must be 'auto', 'none', 'required' or a named function.",
            param="tool_choice",
        )
    if parallel is False:
        out["disable_parallel_tool_use"] = True
    elif choice is None:
        return None  # Anthropic's default is already auto
    return out


def _refuse_unsupported(body: dict[str, Any], model: str) -> None:
    """A 400 naming each field whose answer Anthropic cannot give in the shape asked."""
    n = body.get("n")
    if isinstance(n, int) and n > 1:
        raise BadRequest(f"n={n} is not supported for {model}; only n=1.", param="n")
    if body.get("logprobs") is True or body.get("top_logprobs"):
        param = "logprobs" if body.get("logprobs") is True else "top_logprobs"
        raise BadRequest(f"{param}: {model} does not return log probabilities.", param=param)
    modalities = body.get("modalities")
    if isinstance(modalities, list) and any(m != "text" for m in modalities):
        raise BadRequest(f"modalities: {model} answers in text only.", param="modalities")
    for name, why in (
        ("audio", "answers in text only"),
        ("functions", "takes `tools`, not the legacy `functions`"),
        ("function_call", "takes `tool_choice`, not the legacy `function_call`"),
        ("web_search_options", "does not search the web here"),
    ):
        if body.get(name) is not None:
            raise BadRequest(f"{name}: {model} {why}.", param=name)


def answer_tool_name(chat: ChatRequest) -> str | None:
    tool = response_tool(chat.body)
    return tool["name"] if tool is not None else None
