"""Config loading: the shipped file, substitution, and one bad-config fixture per rule."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from proxy.config import (
    ConfigError,
    Deployment,
    Kind,
    ProviderConfig,
    Timeouts,
    load_config,
    parse_config,
    resolve_alias,
)
from proxy.metrics import Metrics
from proxy.routing import Router

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "config" / "woozlit.yaml"
BAD = Path(__file__).resolve().parent / "configs"

# The twelve models of woozlit-api.md, with the provider kind each must reach.
SPEC_MODELS = {
    "woozlit/gpt-4o": "openai",
    "woozlit/gpt-4o-mini": "openai",
    "woozlit/gpt-4-turbo": "openai",
    "woozlit/gpt-3.5-turbo": "openai",
    "woozlit/claude-3-5-sonnet-20241022": "anthropic",
    "woozlit/claude-3-5-haiku-20241022": "anthropic",
    "woozlit/claude-3-opus-20240229": "anthropic",
    "woozlit/gemini-2.0-flash-exp": "gemini",
    "woozlit/gemini-1.5-pro": "gemini",
    "woozlit/gemini-1.5-flash": "gemini",
    "woozlit/deepseek-chat": "openai",
    "woozlit/deepseek-reasoner": "openai",
}
PUBLIC_BASE_URLS = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
    "google": "https://generativelanguage.googleapis.com",
    "deepseek": "https://api.deepseek.com",
}
TIERS = {
    "free": {"monthly_tokens": 1000, "requests_per_minute": 60},
    "premium": {"monthly_tokens": None, "requests_per_minute": 600},
}


def minimal(**provider: Any) -> dict[str, Any]:
    spec = {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", **provider}
    return {
        "providers": {"openai": spec},
        "models": {"woozlit/gpt-4o": [{"provider": "openai", "model": "gpt-4o"}]},
        "tiers": TIERS,
    }


def errors_of(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, env or {})
    assert str(info.value) == "\n".join(info.value.errors)
    return info.value.errors


# -- the shipped config -------------------------------------------------------------------


def test_shipped_config_routes_the_twelve_models():
    config = load_config(SHIPPED, {})
    assert set(config.models) == set(SPEC_MODELS)
    router = Router(config, Metrics())
    for public, kind in SPEC_MODELS.items():
        deployment, provider = router.plan(public)[0]
        assert provider.config.kind == kind, public
        # The upstream model is one its provider serves now, not always the seed's name
        # (test_model_check checks the table against the providers' lists).
        assert deployment.model, public
    assert router.plan("woozlit/deepseek-chat")[0][1].config.name == "deepseek"
    assert set(config.tiers) == {"free", "premium"}
    assert config.tiers["free"].monthly_tokens == 1_000_000
    assert config.tiers["premium"].monthly_tokens is None


def test_shipped_config_defaults_to_the_public_apis_without_keys():
    config = load_config(SHIPPED, {})
    for name, url in PUBLIC_BASE_URLS.items():
        provider = config.providers[name]
        assert provider.base_url == url
        assert provider.api_key == ""
        assert provider.needs_key
        assert provider.api_key_env == f"{'GEMINI' if name == 'google' else name.upper()}_API_KEY"


def test_shipped_config_takes_urls_and_keys_from_the_environment():
    env = {
        "OPENAI_BASE_URL": "http://127.0.0.1:8000/v1/",
        "OPENAI_API_KEY": "sk-from-env",
        "WOOZLIT_LOG_LEVEL": "debug",
    }
    config = load_config(SHIPPED, env)
    openai = config.providers["openai"]
    assert openai.base_url == "http://127.0.0.1:8000/v1"  # trailing slash dropped
    assert openai.api_key == "sk-from-env"
    assert not openai.needs_key  # a local server may run without one
    assert config.log_level == "DEBUG"


def test_config_objects_are_frozen():
    config = load_config(SHIPPED, {})
    with pytest.raises(AttributeError):
        config.server.port = 1  # type: ignore[misc]
    with pytest.raises(AttributeError):
        config.providers["openai"].api_key = "x"  # type: ignore[misc]


# -- substitution -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "env", "expected"),
    [
        ("${K}", {"K": "sk-1"}, "sk-1"),
        ("${K:-fallback}", {"K": "sk-1"}, "sk-1"),
        ("${K:-fallback}", {}, "fallback"),
        ("${K:-fallback}", {"K": ""}, "fallback"),  # as in the shell: set but empty
        ("${K:-}", {}, ""),
        ("${K}", {"K": ""}, ""),  # set, even if empty: no error
        ("pre-${A}-${B:-b}-post", {"A": "a"}, "pre-a-b-post"),
        ("no variables here", {}, "no variables here"),
        ("$K and $", {"K": "x"}, "$K and $"),  # only the braced form is substituted
    ],
)
def test_substitution(value, env, expected):
    config = parse_config(minimal(api_key=value), "t.yaml", env)
    assert config.providers["openai"].api_key == expected


def test_substitution_in_numbers_and_urls():
    raw = minimal(base_url="http://${HOST:-127.0.0.1}:${PORT}/v1")
    raw["server"] = {"port": "${WOOZLIT_PORT:-9090}", "max_body_bytes": "${MAX_BODY}"}
    config = parse_config(raw, "t.yaml", {"PORT": "8001", "MAX_BODY": "2048"})
    assert config.providers["openai"].base_url == "http://127.0.0.1:8001/v1"
    assert config.server.port == 9090
    assert config.server.max_body_bytes == 2048


def test_substitution_reaches_every_string_value():
    raw = minimal(headers={"x-team": "${TEAM}"})
    raw["models"]["woozlit/gpt-4o"][0]["params"] = {"user": "${TEAM}", "n": ["${TEAM}"]}
    raw["server"] = {"cors_origins": ["${ORIGIN}"]}
    raw["log_level"] = "${LEVEL:-warning}"
    config = parse_config(raw, "t.yaml", {"TEAM": "blue", "ORIGIN": "https://app.example/"})
    assert config.providers["openai"].headers == {"x-team": "blue"}
    assert config.models["woozlit/gpt-4o"][0].params == {"user": "blue", "n": ["blue"]}
    assert config.server.cors_origins == ("https://app.example",)  # trailing slash dropped
    assert config.log_level == "WARNING"


def test_key_variable_is_remembered_for_error_messages():
    config = parse_config(minimal(api_key="${MY_PROVIDER_KEY:-}"), "t.yaml", {})
    assert config.providers["openai"].api_key_env == "MY_PROVIDER_KEY"


# -- one fixture per rule -----------------------------------------------------------------

# fixture file -> the error lines it must give (after "<file>: "), all of them, in order: the
# order of the schema's fields (proxy/config.py), section by section.
RULES = {
    "unknown_top_level_key.yaml": ["log_levle: unknown key"],
    "unknown_provider_key.yaml": ["providers.openai.apikey: unknown key"],
    "unknown_deployment_key.yaml": ["models.woozlit/gpt-4o[0].wieght: unknown key"],
    "unknown_provider_kind.yaml": [
        "providers.openai.kind: unknown kind 'azure' (one of openai, anthropic, gemini)"
    ],
    "unknown_provider.yaml": ["models.woozlit/gpt-4o[0].provider: unknown provider 'opnai'"],
    "bad_url.yaml": [
        "providers.openai.base_url: must be an http(s) URL, got 'ftp://example.com/v1'",
        "providers.local.base_url: must be an http(s) URL, got 'localhost:8000'",
        "providers.ollama.base_url: must be an http(s) URL, got 'http://localhost:notaport/v1'",
    ],
    "model_without_prefix.yaml": ["models.gpt-4o: model names must start with 'woozlit/'"],
    "empty_deployments.yaml": ["models.woozlit/gpt-4o: must be a non-empty list of deployments"],
    "missing_section.yaml": ["models: is required"],
    "wrong_types.yaml": [
        "providers.openai.timeouts.connect: must be a number, got 'fast'",
        "providers.openai.headers: must be a mapping, got list",
        "models.woozlit/gpt-4o: must be a non-empty list of deployments",
        "server.host: must be a string, got list",
        "server.port: must be a number, got '8080.5'",
        "server.max_body_bytes: must be an integer",
        "server.default_temperature: must be a number",
    ],
    "negative_numbers.yaml": [
        "providers.openai.timeouts.first_byte: must be at least 0.001",
        "models.woozlit/gpt-4o[0].weight: must be at least 1",
        "tiers.free.monthly_tokens: must be at least 0",
        "server.max_body_bytes: must be at least 1",
    ],
    "unset_variable.yaml": [
        "providers.openai.api_key: environment variable WOOZLIT_TEST_NEVER_SET is not set"
    ],
    "invalid_yaml.yaml": [
        "line 4, column 1: invalid YAML: expected ',' or '}', but got '<scalar>'"
    ],
    "unknown_nested_keys.yaml": [
        "providers.openai.timeouts.conect: unknown key",
        "accounting.hold_ttl: unknown key",
        "tiers.free.requests_per_hour: unknown key",
        "server.prot: unknown key",
        "routing.retries: unknown key",
    ],
    "missing_keys.yaml": [
        "providers.openai.base_url: is required",
        "models.woozlit/gpt-4o[0].model: is required",
        "tiers.free.requests_per_minute: is required",
    ],
    "below_minimum_counts.yaml": [
        "providers.openai.default_max_tokens: must be at least 1",
        "accounting.hold_ttl_seconds: must be at least 1",
        "accounting.redis_timeout_seconds: must be at least 0.001",
        "models.woozlit/gpt-4o[0].priority: must be at least 0",
        "models.woozlit/gpt-4o[0].default_max_tokens: must be at least 1",
        "tiers.free.requests_per_minute: must be at least 1",
        "tiers.free.max_concurrent_requests: must be at least 1",
        "routing.deadline_seconds: must be at least 0.001",
        "routing.cooldown_after_failures: must be at least 1",
    ],
    "unknown_max_tokens_parameter.yaml": [
        "providers.openai.max_tokens_parameter: must be one of max_tokens, "
        "max_completion_tokens, got 'max_output_tokens'"
    ],
    "no_models.yaml": ["models: at least one model is required"],
    "bad_cors_origins.yaml": ['server.cors_origins: must be a list of origins (or ["*"])'],
    "bad_access_log.yaml": ["access_log: must be true or false"],
    "bad_aliases.yaml": [
        "aliases: 'claude-opus-*' names 'woozlit/claude-opus', which is not in 'models'; "
        "'woozlit/sonnet' starts with 'woozlit/', as public names do; "
        "'*' would match every name"
    ],
    "reserved_keys.yaml": [
        "providers.openai.name: unknown key",
        "providers.openai.api_key_env: unknown key",
        "path: unknown key",
    ],
}


def test_every_fixture_has_a_rule():
    assert {p.name for p in BAD.glob("*.yaml")} == set(RULES)


@pytest.mark.parametrize("name", sorted(RULES))
def test_bad_config(name):
    path = BAD / name
    assert errors_of(path) == [f"{path}: {line}" for line in RULES[name]]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, "t.yaml: must be a mapping, got nothing"),  # an empty file
        ([1, 2], "t.yaml: must be a mapping, got list"),
        ({"providers": {}, "models": {}, "tiers": TIERS}, "t.yaml: providers: at least one"),
        ({**minimal(), "tiers": {"free": TIERS["free"]}}, "t.yaml: tiers.premium: is required"),
        (minimal(kind="openai", base_url=None), "t.yaml: providers.openai.base_url: must be a"),
        (
            {**minimal(), "models": {"woozlit/": [{"provider": "openai", "model": "x"}]}},
            "t.yaml: models.woozlit/: model names must start with 'woozlit/'",
        ),
        (
            {**minimal(), "models": {"woozlit/a": [{"provider": "openai", "model": ""}]}},
            "t.yaml: models.woozlit/a[0].model: must not be empty",
        ),
        ({**minimal(), "server": {"port": 70000}}, "t.yaml: server.port: must be at most 65535"),
        ({**minimal(), "log_level": "LOUD"}, "t.yaml: log_level: must be one of"),
        (minimal(timeouts={"first_byte": float("nan")}), "t.yaml: providers.openai.timeouts."),
        (minimal(base_url="http://[::1/v1"), "t.yaml: providers.openai.base_url: must be an"),
    ],
)
def test_more_rules(raw, expected):
    with pytest.raises(ConfigError) as info:
        parse_config(raw, "t.yaml", {})
    assert any(e.startswith(expected) for e in info.value.errors), info.value.errors


def test_unreadable_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    assert errors_of(missing) == [f"{missing}: cannot read: No such file or directory"]


# -- woozlit-proxy check-config -----------------------------------------------------------


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("WOOZLIT_") and not k.endswith(("_API_KEY", "_BASE_URL"))
    }
    return subprocess.run(
        [sys.executable, "-m", "proxy", "check-config", str(path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_config_accepts_the_shipped_config():
    result = check_config(SHIPPED)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{SHIPPED}: ok")
    assert result.stderr == ""


def test_check_config_lists_every_error_on_stderr():
    path = BAD / "negative_numbers.yaml"
    result = check_config(path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [f"{path}: {line}" for line in RULES[path.name]]


def test_deployment_params_only_on_openai_kind():
    raw = {
        "providers": {
            "a": {"kind": "anthropic", "base_url": "http://x", "api_key": "k"},
            "o": {"kind": "openai", "base_url": "http://x", "api_key": "k"},
        },
        "models": {
            "woozlit/a": [{"provider": "a", "model": "m", "params": {"x": 1}}],
            "woozlit/o": [{"provider": "o", "model": "m", "params": ["x"]}],
        },
        "tiers": {
            "free": {"monthly_tokens": 1, "requests_per_minute": 1},
            "premium": {"monthly_tokens": None, "requests_per_minute": 1},
        },
    }
    with pytest.raises(ConfigError) as info:
        parse_config(raw, "t.yaml", {})
    assert any("models.woozlit/a[0].params" in e and "openai" in e for e in info.value.errors)
    assert any("models.woozlit/o[0].params" in e for e in info.value.errors)


# -- defaults that depend on other fields --------------------------------------------------


def test_deployment_defaults_come_from_its_place_its_provider_and_accounting():
    raw = minimal()
    raw["providers"]["capped"] = {
        "kind": "openai",
        "base_url": "http://x",
        "default_max_tokens": 100,
    }
    raw["accounting"] = {"default_completion_reserve": 2000}
    raw["models"]["woozlit/gpt-4o"] = [
        {"provider": "openai", "model": "a"},
        {"provider": "capped", "model": "b"},
        {"provider": "capped", "model": "c", "default_max_tokens": 7, "priority": 0},
    ]
    a, b, c = parse_config(raw, "t.yaml", {}).models["woozlit/gpt-4o"]
    assert [a.priority, b.priority, c.priority] == [0, 1, 0]  # by default, its place
    # Its own cap, else its provider's, else the accounting's reserve.
    assert [a.default_max_tokens, b.default_max_tokens, c.default_max_tokens] == [2000, 100, 7]


@pytest.mark.parametrize(
    ("base_url", "expected"),
    [
        ("https://api.openai.com/v1", "max_completion_tokens"),  # its reasoning models need it
        ("https://api.deepseek.com", "max_tokens"),
        ("http://127.0.0.1:8000/v1", "max_tokens"),  # vLLM, Ollama
    ],
)
def test_max_tokens_parameter_defaults_by_host(base_url, expected):
    config = parse_config(minimal(base_url=base_url), "t.yaml", {})
    assert config.providers["openai"].max_tokens_parameter == expected


@pytest.mark.parametrize(
    ("value", "expected"), [(False, False), ("false", False), ("0", False), ("TRUE", True)]
)
def test_access_log_reads_booleans_and_their_strings(value, expected):
    config = parse_config({**minimal(), "access_log": value}, "t.yaml", {})
    assert config.access_log is expected


def test_deployments_are_checked_even_when_a_provider_is_invalid():
    raw = minimal(base_url="ftp://x")
    raw["models"]["woozlit/gpt-4o"] = [{"provider": "opnai", "model": "m"}]
    with pytest.raises(ConfigError) as info:
        parse_config(raw, "t.yaml", {})
    assert info.value.errors == [
        "t.yaml: providers.openai.base_url: must be an http(s) URL, got 'ftp://x'",
        "t.yaml: models.woozlit/gpt-4o[0].provider: unknown provider 'opnai'",
    ]


def test_config_objects_are_built_in_python_as_dataclasses():
    provider = ProviderConfig("p", "openai", "http://127.0.0.1:1/v1/", "k", None, Timeouts())
    assert provider.kind == Kind.OPENAI == "openai"
    assert provider.base_url == "http://127.0.0.1:1/v1"
    assert provider.max_tokens_parameter == "max_tokens"
    # The router keys its breakers by deployment: params take no part in hash and equality.
    assert Deployment("p", "m", params={"x": 1}) == Deployment("p", "m")
    assert len({Deployment("p", "m", params={"x": 1}), Deployment("p", "m")}) == 1
    with pytest.raises(ValidationError):
        Deployment("p", "")


def test_aliases_resolve_exact_names_first_then_the_longest_prefix():
    aliases = {
        "claude-*": "woozlit/a",
        "claude-haiku-*": "woozlit/b",
        "claude-haiku-4-5": "woozlit/c",
    }
    assert resolve_alias(aliases, "claude-haiku-4-5") == "woozlit/c"
    assert resolve_alias(aliases, "claude-haiku-4-5-20251001") == "woozlit/b"
    assert resolve_alias(aliases, "claude-opus-4-8") == "woozlit/a"
    assert resolve_alias(aliases, "gpt-4o") is None
    assert resolve_alias({}, "claude-opus-4-8") is None


def test_shipped_aliases_route_claude_codes_model_names():
    config = load_config(SHIPPED)
    for name in ("claude-opus-4-8", "claude-sonnet-4-6", "claude-haiku-4-5-20251001"):
        target = resolve_alias(config.aliases, name)
        assert target in config.models, name
        assert config.models[target][0].provider == "anthropic"
