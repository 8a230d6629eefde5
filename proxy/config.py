"""Configuration: YAML in, frozen typed objects out, validated once at start.

The frozen dataclasses below are the schema of the config file, and pydantic validates it:
a field's type, default and bounds are its rule; the few rules that look past one field are
validators next to the field they constrain. Reading a file goes:

1. `yaml.safe_load`;
2. `${VAR}` and `${VAR:-default}` are substituted from the environment in every string value
   of the document (keys are left as written); a `${VAR}` unset is an error;
3. pydantic validates the result into a `Config`: unknown keys are errors (extra="forbid"),
   numbers may be strings that read as numbers (a substituted `"${PORT}"`) but not booleans,
   and every problem is collected, not the first only;
4. each problem becomes one line naming the file and the path inside it, e.g.
   `config/woozlit.yaml: models.woozlit/gpt-4o[0].provider: unknown provider 'opnai'`
   (`_message` words pydantic's errors as ours), and `ConfigError` carries them all.

Three fields are facts about the file rather than keys in it: `Config.path`, a provider's
`name` (its key under `providers`) and its `api_key_env` (the variable its `api_key` was read
from). A file is validated by alias only (`by_name=False`), these fields' aliases are in
angle brackets and are filled in by the validators that know them, so a file that sets
`name:` gets "unknown key". Built in Python (tests), every class takes its fields by name or
position, as a plain dataclass does.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.dataclasses import dataclass
from pydantic_core import ErrorDetails, PydanticCustomError

PUBLIC_PREFIX = "woozlit/"
# The routing table shipped inside the package (config/woozlit.yaml in the repository is a
# link to it), so that every command finds it from any directory and in any install.
DEFAULT_CONFIG_PATH = str(resources.files("proxy") / "woozlit.yaml")

# Hosts of the public APIs: a provider pointed at one of these must have a key. A provider
# pointed elsewhere (a local vLLM or Ollama server, a test double) may run without one.
PUBLIC_API_HOSTS = frozenset(
    {
        "api.openai.com",
        "api.anthropic.com",
        "generativelanguage.googleapis.com",
        "api.deepseek.com",
    }
)

DEFAULT_MAX_CONCURRENT = 64
MAX_TOKENS_PARAMETERS = ("max_tokens", "max_completion_tokens")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
REQUIRED_TIERS = ("free", "premium")  # the tiers accounts are created in (proxy/admin/accounts.py)

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

_Loc = tuple[str | int, ...]  # a path inside the document


class Kind(StrEnum):
    """The upstream APIs the gateway speaks: a provider's `kind`.

    The one list of them. proxy/providers/__init__.py maps each to the class that speaks it
    (mypy fails on a kind without one); it lives here because the provider modules import
    this one, so this one cannot import them.
    """

    OPENAI = "openai"  # Chat Completions: OpenAI, DeepSeek, vLLM, Ollama
    ANTHROPIC = "anthropic"
    GEMINI = "gemini"


class ConfigError(Exception):
    """The config is invalid; `errors` lists every problem, each naming file and path."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("\n".join(errors))


def _invalid(message: str) -> PydanticCustomError:
    """One of our rules broken; `message` is the line's end (a template would read its braces)."""
    return PydanticCustomError("woozlit", "{message}", {"message": message})


# -- field rules ----------------------------------------------------------------------------


def _number(parse: Callable[[str], float]) -> BeforeValidator:
    """A number may be a string (a substituted variable), read as Python reads it; NaN is none."""

    def read(value: object) -> object:
        if isinstance(value, str):
            try:
                value = parse(value)
            except ValueError:
                raise _invalid(f"must be a number, got {value!r}") from None
        if isinstance(value, float) and value != value:
            raise _invalid("must be a number")
        return value

    return BeforeValidator(read)


# Strict: a boolean is not a number, nor 1.5 an integer.
_Float = Annotated[float, _number(float), Strict()]
_Int = Annotated[int, _number(int), Strict()]
_Positive = Annotated[_Float, Field(ge=0.001)]  # seconds that must pass: 0 would never wait
_NonNegative = Annotated[_Float, Field(ge=0)]
_Count = Annotated[_Int, Field(ge=1)]
_Natural = Annotated[_Int, Field(ge=0)]


def _http_url(value: str) -> str:
    """An http(s) URL with a host and a valid port, without its trailing slash."""
    value = value.rstrip("/")
    try:
        parts = urlsplit(value)  # raises on a broken IPv6 literal
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        valid = valid and (parts.port or 0) >= 0  # `port` raises on a bad one
    except ValueError:
        valid = False
    if not valid:
        raise _invalid(f"must be an http(s) URL, got {value!r}")
    return value


def _host(url: object) -> str:
    """The host of `url`, or "" (not a string, not a URL)."""
    try:
        return (urlsplit(url).hostname or "") if isinstance(url, str) else ""
    except ValueError:
        return ""


def _kind(value: object) -> Kind:
    if isinstance(value, str) and value in set(Kind):
        return Kind(value)
    raise _invalid(f"unknown kind {value!r} (one of {', '.join(Kind)})")


def _max_tokens_parameter(value: str) -> str:
    if value not in MAX_TOKENS_PARAMETERS:
        raise _invalid(f"must be one of {', '.join(MAX_TOKENS_PARAMETERS)}, got {value!r}")
    return value


def _log_level(value: str) -> str:
    if value.upper() not in LOG_LEVELS:
        raise _invalid(f"must be one of {', '.join(LOG_LEVELS)}")
    return value.upper()


def _true_or_false(value: object) -> object:
    """YAML's booleans, or a string (a substituted variable): true, 1, false or 0."""
    if isinstance(value, str):
        return {"true": True, "1": True, "false": False, "0": False}.get(value.lower(), value)
    return value


def _request_fields(value: object) -> object:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise _invalid("must be a mapping of request fields")
    return value


def _origins(value: object) -> object:
    if not isinstance(value, list | tuple) or not all(isinstance(o, str) and o for o in value):
        raise _invalid('must be a list of origins (or ["*"])')
    return tuple(o.rstrip("/") for o in value)


def _public_name(name: str) -> str:
    if not name.startswith(PUBLIC_PREFIX) or name == PUBLIC_PREFIX:
        raise _invalid(f"model names must start with {PUBLIC_PREFIX!r}")
    return name


def _deployment_list(value: object) -> object:
    if not isinstance(value, list | tuple) or not value:
        raise _invalid("must be a non-empty list of deployments")
    return value


def _at_least_one(what: str) -> AfterValidator:
    def check(value: Mapping[str, object]) -> Mapping[str, object]:
        if not value:
            raise _invalid(f"at least one {what} is required")
        return value

    return AfterValidator(check)


# Where a missing required tier goes, so that it is reported at its own path, `tiers.free`,
# along with the other tiers' problems.
_ABSENT = object()


def _required_tiers(tiers: object) -> object:
    if not isinstance(tiers, dict):
        return tiers
    return {**tiers, **{name: _ABSENT for name in REQUIRED_TIERS if name not in tiers}}


@dataclasses.dataclass
class _Source:
    """The validation context of one file: what validators need besides the value at hand."""

    path: str
    variables: Mapping[_Loc, str]  # where a value was substituted -> the first variable read
    # Provider name -> its kind as written, from the raw `providers` (None: not a mapping), so
    # that deployments are checked against it even when a provider has other problems.
    kinds: dict[str, object] | None = None


def _kinds(info: ValidationInfo) -> dict[str, object] | None:
    """The configured providers' kinds, when validating a file (not a Python call)."""
    return info.context.kinds if isinstance(info.context, _Source) else None


# -- the schema -----------------------------------------------------------------------------

_SCHEMA = ConfigDict(
    extra="forbid",
    coerce_numbers_to_str=True,  # `model: 3.5` is the string "3.5", not an error
    validate_by_name=True,  # Python calls; a file is validated by alias only (parse_config)
    validate_by_alias=True,
)


@dataclass(frozen=True, slots=True, config=_SCHEMA)
class Timeouts:
    """A provider's timeouts (`providers.<name>.timeouts`), in seconds, each at least 0.001."""

    connect: _Positive = 5.0
    # From sending the request to the response headers: a whole non-stream answer of a
    # reasoning model can take minutes.
    first_byte: _Positive = 300.0
    idle: _Positive = 120.0  # longest silence between two chunks of a body or stream


@dataclass(frozen=True, slots=True, config=_SCHEMA)
class ProviderConfig:
    """An upstream (`providers.<name>`): its API, where it is, its key, how long to wait."""

    name: Annotated[str, Field(validation_alias="<name>")]  # its key under `providers`
    kind: Annotated[Kind, BeforeValidator(_kind)]
    base_url: Annotated[str, AfterValidator(_http_url)]  # http(s), no trailing slash
    api_key: str = ""
    # The variable the key comes from, to name it in errors (read off `api_key`'s `${VAR}`).
    api_key_env: Annotated[str | None, Field(validation_alias="<api_key_env>")] = None
    timeouts: Timeouts = dataclasses.field(default_factory=Timeouts)
    # The output cap of its deployments when the client sets none (None: the accounting's
    # default_completion_reserve); a deployment may set its own.
    default_max_tokens: _Count | None = None
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)  # sent with each request
    # Where an OpenAI-compatible upstream reads the output cap: OpenAI's API takes
    # max_completion_tokens (its reasoning models refuse max_tokens), and a file's provider
    # at api.openai.com defaults to it; DeepSeek, vLLM and Ollama read max_tokens.
    max_tokens_parameter: Annotated[str, AfterValidator(_max_tokens_parameter)] = "max_tokens"
    # Whether an OpenAI-kind upstream also serves OpenAI's Responses API (`POST /responses`):
    # then Responses clients are answered natively (providers/openai_responses.py). OpenAI
    # does; DeepSeek, vLLM and Ollama-style upstreams do not.
    responses_api: bool = False

    @property
    def needs_key(self) -> bool:
        """Whether it is a public API (PUBLIC_API_HOSTS), which refuses requests without a key."""
        return _host(self.base_url) in PUBLIC_API_HOSTS

    @model_validator(mode="before")
    @classmethod
    def _max_tokens_parameter_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and "max_tokens_parameter" not in data:  # a file's provider
            openai = _host(data.get("base_url")) == "api.openai.com"
            return {
                **data,
                "max_tokens_parameter": "max_completion_tokens" if openai else "max_tokens",
            }
        return data


@dataclass(frozen=True, slots=True, config=_SCHEMA)
class Deployment:
    """One way to serve a public model (`models.<public>[i]`): a provider and its model.

    Hashable, `params` aside: the router keys its circuit breakers by deployment.
    """

    provider: str  # a key of `providers`
    model: Annotated[str, Field(min_length=1)]  # the upstream's name for it
    weight: _Count = 1  # share of the traffic among deployments of the same priority
    priority: _Natural = 0  # lower first; in a file, by default its place in the list
    # The output cap sent when the client sets none, and what such a request reserves of the
    # quota: the deployment's own, else its provider's, else the accounting's default.
    default_max_tokens: _Count = 4096
    # Fields an OpenAI-kind deployment adds to every request body where the client did not
    # set them, e.g. DeepSeek V4's `thinking: {type: disabled}` for a model that must not think.
    params: Annotated[Mapping[str, Any], BeforeValidator(_request_fields)] = dataclasses.field(
        default_factory=dict, hash=False, compare=False
    )

    @field_validator("provider")
    @classmethod
    def _configured(cls, provider: str, info: ValidationInfo) -> str:
        kinds = _kinds(info)
        if kinds is not None and provider not in kinds:
            raise _invalid(f"unknown provider {provider!r}")
        return provider

    @field_validator("params")
    @classmethod
    def _openai_only(cls, params: Mapping[str, Any], info: ValidationInfo) -> Mapping[str, Any]:
        # Only the OpenAI kind adds them (proxy/providers/openai.py); the others would drop them.
        kinds, provider = _kinds(info), info.data.get("provider")
        if params and kinds is not None and provider in kinds and kinds[provider] != Kind.OPENAI:
            raise _invalid("is for deployments of kind openai only")
        return params


@dataclass(frozen=True, slots=True, config=_SCHEMA)
class Tier:
    """An account tier (`tiers.<name>`): the limits of the accounts in it, unless overridden."""

    monthly_tokens: _Natural | None  # None: unlimited
    requests_per_minute: _Count
    # Requests of one key admitted and not finished, on all instances together.
    max_concurrent_requests: _Count = DEFAULT_MAX_CONCURRENT

    @model_validator(mode="before")
    @classmethod
    def _present(cls, data: Any) -> Any:
        if data is _ABSENT:
            raise _invalid("is required")
        return data


@dataclass(frozen=True, slots=True, config=_SCHEMA)
class ServerConfig:
    """The HTTP server (`server`); durations in seconds, each at least 0."""

    # None: chosen at start by the store (proxy/__main__.py): 127.0.0.1 with the embedded one.
    host: str | None = None
    port: Annotated[_Natural, Field(le=65535)] = 8080
    max_body_bytes: _Count = 4 * 1024 * 1024
    default_temperature: _NonNegative = 0.7
    # On SIGTERM: /readyz answers 503 at once, new connections are still served for the grace
    # (so the load balancer can notice), then in-flight requests get up to drain_seconds.
    shutdown_grace_seconds: _NonNegative = 3.0
    drain_seconds: _NonNegative = 60.0
    # A request body must arrive within this time (slow senders hold a connection each).
    body_timeout_seconds: _NonNegative = 30.0
    # A stream whose client has read nothing for this long (its socket is full and a write
    # waits) is ended and charged what was produced: a stalled client holds a provider's
    # connection, a quota hold and a slot of its key's concurrency.
    client_read_timeout_seconds: _NonNegative = 120.0
    # Origins whose browser pages may call the API (CORS; never the admin API). "*" (the
    # default, as OpenAI's API answers) lets any page call it with a key it holds.
    cors_origins: Annotated[tuple[str, ...], BeforeValidator(_origins)] = ("*",)
    # How long the output items of a Responses answer are kept for its account, for the
    # `item_reference`s of the client's next requests (protocols/openai_responses/items.py);
    # 0 keeps nothing, and every Responses answer says `"store": false`.
    responses_store_seconds: _NonNegative = 3600.0


@dataclass(frozen=True, slots=True, config=_SCHEMA)
class AccountingConfig:
    """Quota holds and the store (`accounting`); each value at least 1 (seconds: 0.001)."""

    # Tokens reserved for the completion when the request sets no max_tokens.
    default_completion_reserve: _Count = 4096
    # A hold not settled within this time expires by itself: the instance that admitted the
    # request died. Instances renew the holds of their live requests every third of it, so
    # a request may last longer; this is how long a dead instance's holds (and slots of its
    # keys' concurrency) outlive it.
    hold_ttl_seconds: _Count = 300
    # Timeout of every Redis call: a down store answers 503 quickly instead of hanging.
    redis_timeout_seconds: _Positive = 1.0
    # How long the answer to a non-stream request with an Idempotency-Key is kept for replay.
    idempotency_window_seconds: _Count = 86400


@dataclass(frozen=True, slots=True, config=_SCHEMA)
class RoutingConfig:
    """Retries and fallbacks, before the first byte of an answer has gone out (`routing`)."""

    # All attempts of one request, backoffs included, end by this deadline.
    deadline_seconds: _Positive = 30.0
    # Backoff before the next attempt: base * 2^(attempt-1), at most max, with full jitter.
    backoff_base_seconds: _Positive = 0.05
    backoff_max_seconds: _Positive = 1.0
    # A deployment failing this many times in a row is skipped for cooldown_seconds.
    cooldown_after_failures: _Count = 3
    cooldown_seconds: _Positive = 30.0


_PublicName = Annotated[str, AfterValidator(_public_name)]  # woozlit/...
_Deployments = Annotated[tuple[Deployment, ...], BeforeValidator(_deployment_list)]


# Keyword-only, so that the fields are in the order they are validated in: a deployment's
# default_max_tokens needs its provider and `accounting` validated first.
@dataclass(frozen=True, slots=True, kw_only=True, config=_SCHEMA)
class Config:
    """A whole config file: providers, the public models routed to them, tiers, settings."""

    path: Annotated[str, Field(validation_alias="<path>")]  # the file it was read from
    providers: Annotated[Mapping[str, ProviderConfig], _at_least_one("provider")]
    accounting: AccountingConfig = dataclasses.field(default_factory=AccountingConfig)
    models: Annotated[Mapping[_PublicName, _Deployments], _at_least_one("model")]
    # Other names clients send for public models (Claude Code sends its own model names):
    # name -> public name; a name ending in `*` matches every name it begins (`resolve_alias`).
    aliases: Mapping[str, str] = dataclasses.field(default_factory=dict)
    tiers: Annotated[Mapping[str, Tier], BeforeValidator(_required_tiers)]
    server: ServerConfig = dataclasses.field(default_factory=ServerConfig)
    routing: RoutingConfig = dataclasses.field(default_factory=RoutingConfig)
    log_level: Annotated[str, AfterValidator(_log_level)] = "INFO"  # one of LOG_LEVELS
    # One JSON line per request on stdout.
    access_log: Annotated[bool, BeforeValidator(_true_or_false), Strict()] = True

    @model_validator(mode="before")
    @classmethod
    def _from_file(cls, data: Any, info: ValidationInfo) -> Any:
        """Give the fields that are facts about the file, not keys in it."""
        source = info.context
        if not isinstance(source, _Source) or not isinstance(data, dict):
            return data
        data = {**data, "<path>": source.path}
        providers = data.get("providers")
        if isinstance(providers, dict):
            source.kinds = {
                str(name): spec.get("kind") if isinstance(spec, dict) else None
                for name, spec in providers.items()
            }
            data["providers"] = {
                name: {
                    **spec,
                    "<name>": str(name),
                    "<api_key_env>": source.variables.get(("providers", name, "api_key")),
                }
                if isinstance(spec, dict)
                else spec
                for name, spec in providers.items()
            }
        return data

    @field_validator("models", mode="before")
    @classmethod
    def _deployment_defaults(cls, models: Any, info: ValidationInfo) -> Any:
        """A deployment's defaults that depend on where it is: `priority`, its place in the
        list; `default_max_tokens`, its provider's, else accounting.default_completion_reserve.
        """
        if not isinstance(models, dict):
            return models
        providers: Mapping[str, ProviderConfig] = info.data.get("providers", {})
        accounting: AccountingConfig = info.data.get("accounting", AccountingConfig())

        def defaults(priority: int, spec: object) -> object:
            if not isinstance(spec, dict):
                return spec
            name = spec.get("provider")
            provider = providers.get(name) if isinstance(name, str) else None
            cap = provider and provider.default_max_tokens
            return {
                "priority": priority,
                "default_max_tokens": cap or accounting.default_completion_reserve,
                **spec,
            }

        return {
            public: [defaults(i, spec) for i, spec in enumerate(deployments)]
            if isinstance(deployments, list)
            else deployments
            for public, deployments in models.items()
        }

    @field_validator("aliases", mode="after")
    @classmethod
    def _alias_targets(cls, aliases: Mapping[str, str], info: ValidationInfo) -> Any:
        """An alias names a model of `models`, and is neither a public name nor `*` alone."""
        models = info.data.get("models")
        problems = []
        for name, target in aliases.items():
            if not name or name == "*":
                problems.append(f"{name!r} would match every name")
            elif name.startswith(PUBLIC_PREFIX):
                problems.append(f"{name!r} starts with {PUBLIC_PREFIX!r}, as public names do")
            elif models is not None and target not in models:
                problems.append(f"{name!r} names {target!r}, which is not in 'models'")
        if problems:
            raise _invalid("; ".join(problems))
        return aliases


_CONFIG = TypeAdapter(Config)


def resolve_alias(aliases: Mapping[str, str], name: str) -> str | None:
    """The public model `name` is an alias of: an exact alias first, else the longest
    prefix alias (`claude-haiku-*`) that `name` begins with; None if none matches."""
    target = aliases.get(name)
    if target is not None:
        return target
    best = ""
    for alias, public in aliases.items():
        if alias.endswith("*") and name.startswith(alias[:-1]) and len(alias) > len(best):
            best, target = alias, public
    return target


# -- reading a file -------------------------------------------------------------------------


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read, substitute and validate a config file; raise ConfigError listing every problem."""
    path = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # One line, like every other error: the position and the problem, not PyYAML's dump.
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or exc
        raise ConfigError([f"{path}: {where}invalid YAML: {problem}"]) from exc
    return parse_config(raw, path, os.environ if env is None else env)


def parse_config(raw: Any, path: str, env: Mapping[str, str]) -> Config:
    """Substitute and validate an already-parsed YAML document (`path` names it in errors)."""
    substitution = _Substitution(env)
    document = substitution(raw, ())
    errors = [
        _line(path, where, f"environment variable {name} is not set")
        for where, name in substitution.unset
    ]
    try:
        config = _CONFIG.validate_python(
            document, by_name=False, context=_Source(path, substitution.variables)
        )
    except ValidationError as exc:
        errors += [_line(path, e["loc"], _message(e)) for e in exc.errors()]
    if errors:
        raise ConfigError(errors)
    return config


class _Substitution:
    """`${VAR}` and `${VAR:-default}` replaced in every string value of a document."""

    def __init__(self, env: Mapping[str, str]):
        self.env = env
        self.variables: dict[_Loc, str] = {}  # where -> the first variable read there
        self.unset: list[tuple[_Loc, str]] = []

    def __call__(self, node: Any, where: _Loc) -> Any:
        if isinstance(node, dict):
            return {key: self(value, (*where, key)) for key, value in node.items()}
        if isinstance(node, list):
            return [self(value, (*where, i)) for i, value in enumerate(node)]
        if not isinstance(node, str):
            return node

        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            self.variables.setdefault(where, name)
            # As in the shell and docker compose, `:-` also replaces a variable set but empty.
            if default is not None and not self.env.get(name):
                return default
            if name in self.env:
                return self.env[name]
            self.unset.append((where, name))
            return ""

        return _VAR.sub(replace, node)


def _line(path: str, loc: _Loc, message: str) -> str:
    """`file: path.in[0].file: message`; pydantic's `[key]` (the error is in a key) dropped."""
    where = ""
    for part in loc:
        if isinstance(part, int):
            where += f"[{part}]"
        elif part != "[key]":
            where += f".{part}" if where else part
    return f"{path}: {where}: {message}" if where else f"{path}: {message}"


def _message(error: ErrorDetails) -> str:
    """Pydantic's error in our words; ours (PydanticCustomError) are worded already."""
    ctx = error.get("ctx", {})
    match error["type"]:
        case "missing" | "missing_argument" | "missing_keyword_only_argument":
            return "is required"
        case "extra_forbidden" | "unexpected_keyword_argument":
            return "unknown key"
        case "dict_type" | "dataclass_type" | "dataclass_args_type":
            return f"must be a mapping, got {_type_name(error['input'])}"
        case "string_type":
            return f"must be a string, got {_type_name(error['input'])}"
        case "int_type":
            return "must be an integer"
        case "float_type":
            return "must be a number"
        case "bool_type":
            return "must be true or false"
        case "greater_than_equal":
            return f"must be at least {ctx['ge']}"
        case "less_than_equal":
            return f"must be at most {ctx['le']}"
        case "string_too_short":
            return "must not be empty"
        case _:
            return error["msg"]


def _type_name(node: object) -> str:
    return "nothing" if node is None else type(node).__name__
