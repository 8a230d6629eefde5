"""Configuration: YAML in, frozen typed objects out, validated once at start.

`${VAR}` and `${VAR:-default}` are substituted from the environment in every string value.
Every problem is reported with the file and the path inside it, e.g.
`config/woozlit.yaml: models.woozlit/gpt-4o[0].provider: unknown provider 'opnai'`,
and all problems are reported at once rather than the first only.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import yaml

PUBLIC_PREFIX = "woozlit/"
PROVIDER_KINDS = ("openai", "anthropic", "gemini")
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

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


_T = TypeVar("_T")

DEFAULT_MAX_CONCURRENT = 64
MAX_TOKENS_PARAMETERS = ("max_tokens", "max_completion_tokens")


class ConfigError(Exception):
    """The config is invalid; `errors` lists every problem, each naming file and path."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("\n".join(errors))


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 5.0
    # From sending the request to the response headers: a whole non-stream answer of a
    # reasoning model can take minutes.
    first_byte: float = 300.0
    idle: float = 120.0  # longest silence between two chunks of a body or stream


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    name: str
    kind: str
    base_url: str
    api_key: str
    api_key_env: str | None  # the variable the key comes from, to name it in errors
    timeouts: Timeouts
    # The output cap of its deployments when the client sets none (None: the accounting's
    # default_completion_reserve); a deployment may set its own.
    default_max_tokens: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    # Where an OpenAI-compatible upstream reads the output cap: OpenAI's API takes
    # max_completion_tokens (its reasoning models refuse max_tokens); DeepSeek, vLLM and
    # Ollama read max_tokens.
    max_tokens_parameter: str = "max_tokens"

    @property
    def needs_key(self) -> bool:
        return (urlsplit(self.base_url).hostname or "") in PUBLIC_API_HOSTS


@dataclass(frozen=True, slots=True)
class Deployment:
    provider: str
    model: str
    weight: int = 1  # share of the traffic among deployments of the same priority
    priority: int = 0  # lower first; by default a deployment's place in the list
    # The output cap sent when the client sets none, and what such a request reserves of the
    # quota: the deployment's own, else its provider's, else the accounting's default.
    default_max_tokens: int = 4096
    # Fields an OpenAI-kind deployment adds to every request body where the client did not
    # set them, e.g. DeepSeek V4's `thinking: {type: disabled}` for a model that must not think.
    params: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True, slots=True)
class Tier:
    monthly_tokens: int | None  # None: unlimited
    requests_per_minute: int
    # Requests of one key admitted and not finished, on all instances together.
    max_concurrent_requests: int = DEFAULT_MAX_CONCURRENT


@dataclass(frozen=True, slots=True)
class ServerConfig:
    # None: chosen at start by the store (proxy/__main__.py): 127.0.0.1 with the embedded one.
    host: str | None = None
    port: int = 8080
    max_body_bytes: int = 4 * 1024 * 1024
    default_temperature: float = 0.7
    # On SIGTERM: /readyz answers 503 at once, new connections are still served for the grace
    # (so the load balancer can notice), then in-flight requests get up to drain_seconds.
    shutdown_grace_seconds: float = 3.0
    drain_seconds: float = 60.0
    # A request body must arrive within this time (slow senders hold a connection each).
    body_timeout_seconds: float = 30.0
    # A stream whose client has read nothing for this long (its socket is full and a write
    # waits) is ended and charged what was produced: a stalled client holds a provider's
    # connection, a quota hold and a slot of its key's concurrency.
    client_read_timeout_seconds: float = 120.0
    # Origins whose browser pages may call the API (CORS; never the admin API). "*" (the
    # default, as OpenAI's API answers) lets any page call it with a key it holds.
    cors_origins: tuple[str, ...] = ("*",)


@dataclass(frozen=True, slots=True)
class AccountingConfig:
    # Tokens reserved for the completion when the request sets no max_tokens.
    default_completion_reserve: int = 4096
    # A hold not settled within this time expires by itself: the instance that admitted the
    # request died. Instances renew the holds of their live requests every third of it, so
    # a request may last longer; this is how long a dead instance's holds (and slots of its
    # keys' concurrency) outlive it.
    hold_ttl_seconds: int = 300
    # Timeout of every Redis call: a down store answers 503 quickly instead of hanging.
    redis_timeout_seconds: float = 1.0
    # How long the answer to a non-stream request with an Idempotency-Key is kept for replay.
    idempotency_window_seconds: int = 86400


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    """Retries and fallbacks, before the first byte of an answer has gone out."""

    # All attempts of one request, backoffs included, end by this deadline.
    deadline_seconds: float = 30.0
    # Backoff before the next attempt: base * 2^(attempt-1), at most max, with full jitter.
    backoff_base_seconds: float = 0.05
    backoff_max_seconds: float = 1.0
    # A deployment failing this many times in a row is skipped for cooldown_seconds.
    cooldown_after_failures: int = 3
    cooldown_seconds: float = 30.0


@dataclass(frozen=True, slots=True)
class Config:
    path: str
    providers: Mapping[str, ProviderConfig]
    models: Mapping[str, tuple[Deployment, ...]]
    tiers: Mapping[str, Tier]
    server: ServerConfig = field(default_factory=ServerConfig)
    accounting: AccountingConfig = field(default_factory=AccountingConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    log_level: str = "INFO"
    access_log: bool = True  # one JSON line per request on stdout


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
    """Validate an already-parsed YAML document."""
    return _Parser(path, env).config(raw)


class _Parser:
    def __init__(self, path: str, env: Mapping[str, str]):
        self.path = path
        self.env = env
        self.errors: list[str] = []

    def error(self, where: str, message: str) -> None:
        self.errors.append(
            f"{self.path}: {where}: {message}" if where else f"{self.path}: {message}"
        )

    # -- scalars -------------------------------------------------------------------------

    def substitute(self, value: str, where: str) -> str:
        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            # As in the shell and docker compose, `:-` also replaces a variable set but empty.
            if default is not None and not self.env.get(name):
                return default
            if name in self.env:
                return self.env[name]
            self.error(where, f"environment variable {name} is not set")
            return ""

        return _VAR.sub(replace, value)

    def mapping(
        self, node: Any, where: str, allowed: set[str] | None, required: Collection[str] = ()
    ) -> dict[Any, Any]:
        """Check a mapping's keys; `allowed` None means any key (names chosen by the user)."""
        if not isinstance(node, dict):
            self.error(where, f"must be a mapping, got {_type_name(node)}")
            return {}
        for key in node:
            if allowed is not None and key not in allowed:
                self.error(_join(where, str(key)), "unknown key")
        for key in sorted(set(required) - node.keys()):
            self.error(_join(where, key), "is required")
        return node

    def string(self, node: Any, where: str) -> str:
        if isinstance(node, bool) or not isinstance(node, (str, int, float)):
            self.error(where, f"must be a string, got {_type_name(node)}")
            return ""
        return self.substitute(str(node), where)

    def number(self, node: Any, where: str, *, minimum: float, integer: bool = False) -> Any:
        if isinstance(node, str):
            node = self.substitute(node, where)
            try:
                node = int(node) if integer else float(node)
            except ValueError:
                self.error(where, f"must be a number, got {node!r}")
                return None
        ok_types = (int,) if integer else (int, float)
        if isinstance(node, bool) or not isinstance(node, ok_types) or node != node:  # NaN
            self.error(where, f"must be {'an integer' if integer else 'a number'}")
            return None
        if node < minimum:
            self.error(where, f"must be at least {minimum}")
            return None
        return node

    def url(self, node: Any, where: str) -> str:
        value = self.string(node, where).rstrip("/")
        try:
            parts = urlsplit(value)  # raises on a broken IPv6 literal
            valid = parts.scheme in ("http", "https") and bool(parts.hostname)
            valid = valid and (parts.port or 0) >= 0  # `port` raises on a bad one
        except ValueError:
            valid = False
        if not valid:
            self.error(where, f"must be an http(s) URL, got {value!r}")
        return value

    # -- sections ------------------------------------------------------------------------

    def config(self, raw: Any) -> Config:
        top = self.mapping(
            raw,
            "",
            {
                "providers",
                "models",
                "tiers",
                "server",
                "accounting",
                "routing",
                "log_level",
                "access_log",
            },
            {"providers", "models", "tiers"},
        )
        providers = self.providers(top.get("providers", {}))
        accounting = self.numbers(
            top.get("accounting", {}),
            "accounting",
            AccountingConfig(),
            integer={
                "default_completion_reserve",
                "hold_ttl_seconds",
                "idempotency_window_seconds",
            },
        )
        models = self.models(
            top.get("models", {}), providers, accounting.default_completion_reserve
        )
        tiers = self.tiers(top.get("tiers", {}))
        server = self.server(top.get("server", {}))
        routing = self.numbers(
            top.get("routing", {}),
            "routing",
            RoutingConfig(),
            integer={"cooldown_after_failures"},
        )
        log_level = self.string(top.get("log_level", "INFO"), "log_level").upper()
        if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            self.error("log_level", "must be one of DEBUG, INFO, WARNING, ERROR")
        access_log = top.get("access_log", True)
        if isinstance(access_log, str):
            access_log = self.substitute(access_log, "access_log").lower()
            access_log = {"true": True, "1": True, "false": False, "0": False}.get(access_log)
        if not isinstance(access_log, bool):
            self.error("access_log", "must be true or false")
            access_log = True
        if self.errors:
            raise ConfigError(self.errors)
        return Config(
            self.path, providers, models, tiers, server, accounting, routing, log_level, access_log
        )

    def providers(self, node: Any) -> dict[str, ProviderConfig]:
        out: dict[str, ProviderConfig] = {}
        for name, spec in self.mapping(node, "providers", None).items():
            where = f"providers.{name}"
            spec = self.mapping(
                spec,
                where,
                {
                    "kind",
                    "base_url",
                    "api_key",
                    "timeouts",
                    "default_max_tokens",
                    "max_tokens_parameter",
                    "headers",
                },
                {"kind", "base_url"},
            )
            kind = self.string(spec.get("kind", ""), f"{where}.kind")
            if "kind" in spec and kind not in PROVIDER_KINDS:
                self.error(
                    f"{where}.kind", f"unknown kind {kind!r} (one of {', '.join(PROVIDER_KINDS)})"
                )
            raw_key = spec.get("api_key", "")
            key_var = _VAR.search(raw_key) if isinstance(raw_key, str) else None
            headers = {
                str(k): self.string(v, f"{where}.headers.{k}")
                for k, v in self.mapping(spec.get("headers", {}), f"{where}.headers", None).items()
            }
            base_url = self.url(spec.get("base_url", ""), f"{where}.base_url")
            out[str(name)] = ProviderConfig(
                name=str(name),
                kind=kind,
                base_url=base_url,
                api_key=self.string(raw_key, f"{where}.api_key"),
                api_key_env=key_var.group(1) if key_var else None,
                timeouts=self.numbers(spec.get("timeouts", {}), f"{where}.timeouts", Timeouts()),
                default_max_tokens=self.cap(spec, where),
                headers=headers,
                max_tokens_parameter=self.max_tokens_parameter(spec, where, base_url),
            )
        if not out and not self.errors:
            self.error("providers", "at least one provider is required")
        return out

    def numbers(self, node: Any, where: str, defaults: _T, integer: Collection[str] = ()) -> _T:
        """A section of positive numbers (the fields of `defaults`, which gives their defaults)."""
        names = [f.name for f in fields(defaults)]  # type: ignore[arg-type]
        spec = self.mapping(node, where, set(names))
        values = {}
        for name in names:
            default = getattr(defaults, name)
            value = self.number(
                spec.get(name, default), f"{where}.{name}", minimum=0.001, integer=name in integer
            )
            values[name] = default if value is None else value
        return replace(defaults, **values)  # type: ignore[type-var]

    def cap(self, spec: Mapping[str, Any], where: str) -> int | None:
        """An optional `default_max_tokens`: a positive integer."""
        if "default_max_tokens" not in spec:
            return None
        value = self.number(
            spec["default_max_tokens"], f"{where}.default_max_tokens", minimum=1, integer=True
        )
        return int(value) if value is not None else None

    def max_tokens_parameter(self, spec: Mapping[str, Any], where: str, base_url: str) -> str:
        """OpenAI's own API by default takes max_completion_tokens; other servers max_tokens."""
        try:
            openai = (urlsplit(base_url).hostname or "") == "api.openai.com"
        except ValueError:  # a bad URL, reported by `url`
            openai = False
        default = "max_completion_tokens" if openai else "max_tokens"
        value = self.string(
            spec.get("max_tokens_parameter", default), f"{where}.max_tokens_parameter"
        )
        if value not in MAX_TOKENS_PARAMETERS:
            self.error(
                f"{where}.max_tokens_parameter",
                f"must be one of {', '.join(MAX_TOKENS_PARAMETERS)}, got {value!r}",
            )
        return value

    def models(
        self, node: Any, providers: Mapping[str, ProviderConfig], default_cap: int
    ) -> dict[str, tuple[Deployment, ...]]:
        out: dict[str, tuple[Deployment, ...]] = {}
        for public, deployments in self.mapping(node, "models", None).items():
            where = f"models.{public}"
            if (
                not isinstance(public, str)
                or not public.startswith(PUBLIC_PREFIX)
                or public == PUBLIC_PREFIX
            ):
                self.error(where, f"model names must start with {PUBLIC_PREFIX!r}")
            if not isinstance(deployments, list) or not deployments:
                self.error(where, "must be a non-empty list of deployments")
                continue
            parsed = []
            for i, dep in enumerate(deployments):
                dwhere = f"{where}[{i}]"
                dep = self.mapping(
                    dep,
                    dwhere,
                    {"provider", "model", "weight", "priority", "default_max_tokens", "params"},
                    {"provider", "model"},
                )
                provider = self.string(dep.get("provider", ""), f"{dwhere}.provider")
                if "provider" in dep and provider not in providers:
                    self.error(f"{dwhere}.provider", f"unknown provider {provider!r}")
                model = self.string(dep.get("model", ""), f"{dwhere}.model")
                if "model" in dep and not model:
                    self.error(f"{dwhere}.model", "must not be empty")
                weight = self.number(
                    dep.get("weight", 1), f"{dwhere}.weight", minimum=1, integer=True
                )
                priority = self.number(
                    dep.get("priority", i), f"{dwhere}.priority", minimum=0, integer=True
                )
                provider_cap = (
                    providers[provider].default_max_tokens if provider in providers else None
                )
                cap = self.cap(dep, dwhere) or provider_cap or default_cap
                params = dep.get("params", {})
                if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
                    self.error(f"{dwhere}.params", "must be a mapping of request fields")
                    params = {}
                elif params and provider in providers and providers[provider].kind != "openai":
                    self.error(f"{dwhere}.params", "is for deployments of kind openai only")
                parsed.append(
                    Deployment(
                        provider,
                        model,
                        weight or 1,
                        i if priority is None else priority,
                        cap,
                        params,
                    )
                )
            out[str(public)] = tuple(parsed)
        if not out and not self.errors:
            self.error("models", "at least one model is required")
        return out

    def tiers(self, node: Any) -> dict[str, Tier]:
        out: dict[str, Tier] = {}
        for name, spec in self.mapping(node, "tiers", None).items():
            where = f"tiers.{name}"
            spec = self.mapping(
                spec,
                where,
                {"monthly_tokens", "requests_per_minute", "max_concurrent_requests"},
                {"monthly_tokens", "requests_per_minute"},
            )
            monthly = spec.get("monthly_tokens")
            if monthly is not None:
                monthly = self.number(monthly, f"{where}.monthly_tokens", minimum=0, integer=True)
            rpm = self.number(
                spec.get("requests_per_minute", 1),
                f"{where}.requests_per_minute",
                minimum=1,
                integer=True,
            )
            concurrent = self.number(
                spec.get("max_concurrent_requests", DEFAULT_MAX_CONCURRENT),
                f"{where}.max_concurrent_requests",
                minimum=1,
                integer=True,
            )
            out[str(name)] = Tier(monthly, rpm or 1, concurrent or DEFAULT_MAX_CONCURRENT)
        for required in ("free", "premium"):
            if required not in out and isinstance(node, dict):
                self.error(f"tiers.{required}", "is required")
        return out

    def server(self, node: Any) -> ServerConfig:
        d = ServerConfig()
        names = [f.name for f in fields(ServerConfig)]
        spec = self.mapping(node, "server", set(names))
        values: dict[str, Any] = {
            "host": self.string(spec["host"], "server.host") if "host" in spec else d.host
        }
        origins = spec.get("cors_origins", list(d.cors_origins))
        if not isinstance(origins, list) or not all(isinstance(o, str) and o for o in origins):
            self.error("server.cors_origins", 'must be a list of origins (or ["*"])')
            origins = []
        values["cors_origins"] = tuple(o.rstrip("/") for o in origins)
        for name in names[1:]:
            if name == "cors_origins":
                continue
            default = getattr(d, name)
            value = self.number(
                spec.get(name, default),
                f"server.{name}",
                minimum=1 if name == "max_body_bytes" else 0,
                integer=isinstance(default, int),
            )
            values[name] = default if value is None else value
        if values["port"] > 65535:
            self.error("server.port", "must be at most 65535")
        return ServerConfig(**values)


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _type_name(node: Any) -> str:
    return "nothing" if node is None else type(node).__name__
