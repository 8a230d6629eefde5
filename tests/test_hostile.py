"""Hostile input: fuzzed bodies, raw-socket abuse and a replayed corpus, against a real gateway.

The gateway runs on loopback in front of the fake OpenAI, Anthropic and Gemini upstreams (each in
a scenario that answers normally, so any 5xx is the gateway's) and a real Redis. For every case:

- an answer is a 4xx with exactly `{"error": "<non-empty sentence>"}` as application/json, or a
  200 that a fake upstream really answered (a completion, or a stream that ends with [DONE]);
- never a 5xx, never a hang (each exchange has a deadline; a request that pins the event loop in
  a CPU-bound loop, as the Gemini schema $ref fan-out once did, defeats any deadline inside the
  loop: pytest's `faulthandler_timeout` + `faulthandler_exit_on_timeout` would catch it), and
  nothing logged at ERROR by the `proxy` loggers;
- afterwards the gateway still serves a normal request on a new connection.

What aiohttp answers itself. Its HTTP parser refuses malformed requests (header flood, an
oversized header or request line, a bogus Content-Length, chunked framing garbage, a
Content-Encoding it cannot decode) with its own `text/plain` 400 and a close, and `Expect:` is
answered (417) before any middleware; those cases pass the 4xx-or-close property here and are
checked by `test_protocol_errors_in_the_error_format` (proxy/server.py makes them JSON).

Slow clients. aiohttp bounds a client that is slow to *send its headers* only by
`keepalive_timeout`, counted from the connection's start (3630 s by default in aiohttp 3.14;
`test_slow_headers_are_cut_off_by_keepalive_timeout` shows the mechanism with 0.5 s). Once the
headers are in and our handler runs, nothing bounds a slow *body*: `keepalive_timeout` only runs
between requests and `lingering_time` only after the answer, so the gateway bounds the body's
read itself (`server.body_timeout_seconds`, 408): `test_slow_body_is_cut_off`.

The corpus (`tests/corpus/`) keeps one file per interesting case: `*.json` is a body POSTed to
/v1/chat/completions with a valid key, `*.http` a raw request (`@KEY@` stands for the key) sent
as is. Every case that once failed is there; when hypothesis finds a new one, add its body.
"""

from __future__ import annotations

import asyncio
import gc
import gzip
import io
import logging
import warnings
import zlib
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.compression_utils import HAS_BROTLI
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.app import create_app
from proxy.config import parse_config
from tests.conftest import DEFAULT_TIERS, FakeUpstream, Gateway, GatewayFactory, openai_provider
from tests.fakes.anthropic_upstream import create_fake_anthropic
from tests.fakes.gemini_upstream import create_fake_gemini

with warnings.catch_warnings():
    # On a failure, hypothesis's pytest plugin imports libcst to suggest a patch, and libcst's
    # import warns (mypy_extensions.TypedDict): with filterwarnings=error that turns the report
    # of a falsifying example into an INTERNALERROR. Import it now, quietly.
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import hypothesis.extra._patching  # noqa: F401
    except ImportError:
        pass

CORPUS = Path(__file__).parent / "corpus"
UPSTREAM_KEY = "test-key"
GPT = "woozlit/gpt-4o-mini"
CLAUDE = "woozlit/claude-3-5-sonnet-20241022"
GEMINI = "woozlit/gemini-1.5-pro"
MODELS = {
    GPT: [{"provider": "openai", "model": "gpt-4o-mini"}],
    CLAUDE: [{"provider": "anthropic", "model": "claude-3-5-sonnet-20241022"}],
    # The fake's "multi" scenario answers `n` candidates, so any valid `n` streams to the end.
    GEMINI: [{"provider": "google", "model": "multi"}],
}
# A metered tier, so that holds (prompt estimate + max_tokens) really go through the scripts.
TIERS = {
    **DEFAULT_TIERS,
    "free": {
        "monthly_tokens": 10**12,
        "requests_per_minute": 1_000_000,
        "max_concurrent_requests": 100_000,
    },
}
MAX_BODY = 4 * 1024 * 1024  # the default server.max_body_bytes
REQUEST_TIMEOUT = 10.0  # far above any honest answer here; reaching it is a hang
FUZZ = settings(
    deadline=None,
    max_examples=100,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)


# -- the gateway under attack -------------------------------------------------------------


@pytest.fixture
async def providers(fake_openai: FakeUpstream) -> AsyncIterator[dict[str, Any]]:
    anthropic = TestServer(create_fake_anthropic(api_key=UPSTREAM_KEY))
    gemini = TestServer(create_fake_gemini(api_key=UPSTREAM_KEY))
    await anthropic.start_server()
    await gemini.start_server()
    yield {
        "openai": openai_provider(fake_openai.url),
        "anthropic": {
            "kind": "anthropic",
            "base_url": str(anthropic.make_url("")).rstrip("/"),
            "api_key": UPSTREAM_KEY,
        },
        "google": {
            "kind": "gemini",
            "base_url": str(gemini.make_url("")).rstrip("/"),
            "api_key": UPSTREAM_KEY,
        },
    }
    await anthropic.close()
    await gemini.close()


@pytest.fixture
async def gw(gateway: GatewayFactory, providers: dict[str, Any], redis_url: str) -> Gateway:
    return await gateway(
        providers,
        MODELS,
        tiers=TIERS,
        redis_url=redis_url,
        account={"tier": "free", "developer": True},
    )


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    # A new connection for every request: what one hostile request does to its connection
    # (aiohttp closes it after a protocol error) must not leak into the next case.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        yield session


@pytest.fixture
async def still_serving(gw: Gateway, client: aiohttp.ClientSession) -> AsyncIterator[None]:
    """After the test, however hostile, a normal request to every provider is answered."""
    yield
    await assert_serves(client, gw)


@pytest.fixture
def proxy_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """ERROR records of the `proxy` loggers (a traceback there is a crash, whatever the status)."""
    caplog.set_level(logging.ERROR, logger="proxy")
    yield
    records = [
        r
        for when in ("setup", "call")
        for r in caplog.get_records(when)
        if r.name.startswith("proxy") and r.levelno >= logging.ERROR
    ]
    assert not records, [r.getMessage() for r in records]


# -- answers and the property ---------------------------------------------------------------


@dataclass
class Answer:
    status: int
    content_type: str
    body: bytes
    sent: int = 0  # bytes of the request body


def check(answer: Answer, what: object = "") -> None:
    """The property: a 4xx in our error format, or a 200 a fake upstream really answered."""
    where = f"{what!r:.300}: {answer.status} {answer.body[:300]!r}"
    if answer.status == 200:
        if answer.content_type.startswith("text/event-stream"):
            events = answer.body.rstrip(b"\n").split(b"\n\n")
            assert events[-1] == b"data: [DONE]", where
            assert not any(e.startswith(b'data: {"error"') for e in events), where
        else:
            assert answer.content_type.startswith("application/json"), where
            completion = orjson.loads(answer.body)
            assert completion["object"] == "chat.completion" and completion["choices"], where
        return
    assert 400 <= answer.status < 500, where
    assert answer.content_type.startswith("application/json"), where
    body = orjson.loads(answer.body)
    assert list(body) == ["error"], where
    error = body["error"]
    if isinstance(error, dict):  # the OpenAI-compatible profile (/v1)
        assert sorted(error) == ["code", "message", "param", "type"], where
        error = error["message"]
    assert isinstance(error, str) and error.strip(), where
    # A message may quote the request, but is never bigger than it (plus a sentence).
    assert len(error) <= 500 + answer.sent, where


async def post(
    client: aiohttp.ClientSession,
    gw: Gateway,
    data: bytes,
    headers: dict[str, str] | None = None,
) -> Answer:
    base = {
        **gw.auth(),
        "Content-Type": "application/json",
        "Accept": "application/json",
    }
    # aiohttp warns when a big body is given as bytes (a copy in the loop); a file object it is.
    payload = io.BytesIO(data) if len(data) > 1 << 20 else data
    async with (
        asyncio.timeout(REQUEST_TIMEOUT),
        client.post(
            gw.api + "/chat/completions", data=payload, headers={**base, **(headers or {})}
        ) as resp,
    ):
        return Answer(
            resp.status, resp.headers.get("Content-Type", ""), await resp.read(), len(data)
        )


async def assert_serves(
    client: aiohttp.ClientSession, gw: Gateway, models: Iterable[str] = tuple(MODELS)
) -> None:
    """A normal request to every provider (or to `models`) still gets its answer."""
    for model in models:
        body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "stream": False}
        answer = await post(client, gw, orjson.dumps(body))
        assert answer.status == 200, answer.body
        check(answer)


# -- bodies -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """JSON text spliced in verbatim: what no serializer writes (1e309, "\\ud800", deep nesting)."""

    name: str
    data: bytes

    def __repr__(self) -> str:
        return f"Raw({self.name})"


def encode(value: Any) -> bytes:
    """JSON for `value`, with every Raw spliced in verbatim."""
    if isinstance(value, Raw):
        return value.data
    if isinstance(value, dict):
        items = (orjson.dumps(str(k)) + b":" + encode(v) for k, v in value.items())
        return b"{" + b",".join(items) + b"}"
    if isinstance(value, list):
        return b"[" + b",".join(encode(v) for v in value) + b"]"
    return orjson.dumps(value)


def nested(depth: int, open_: bytes = b"[", close: bytes = b"]", core: bytes = b"") -> bytes:
    return open_ * depth + core + close * depth


DEEP_OBJECTS = nested(1000, b'{"a":', b"}", b"1")
RAW_TOKENS = [
    Raw("1e309", b"1e309"),
    Raw("-1e309", b"-1e309"),
    Raw("1e-400", b"1e-400"),
    Raw("-0", b"-0"),
    Raw("-0.0", b"-0.0"),
    Raw("2**64", b"18446744073709551616"),
    Raw("10**40", b"1" + b"0" * 40),
    Raw("-(2**63)-1", b"-9223372036854775809"),
    Raw("NaN", b"NaN"),
    Raw("Infinity", b"Infinity"),
    Raw("leading zero", b"012"),
    Raw("bare dot", b"1."),
    Raw("hex", b"0x1F"),
    Raw("plus", b"+1"),
    Raw("lone high surrogate", b'"\\ud800"'),
    Raw("lone low surrogate", b'"x\\udfffy"'),
    Raw("surrogate pair", b'"\\ud83d\\ude00"'),
    Raw("escaped NUL", b'"a\\u0000b"'),
    Raw("raw NUL", b'"a\x00b"'),
    Raw("raw newline", b'"a\nb"'),
    Raw("invalid UTF-8", b'"\xff\xfe"'),
    Raw("overlong UTF-8", b'"\xc0\xaf"'),
    Raw("UTF-8 surrogate", b'"\xed\xa0\x80"'),
    Raw("truncated UTF-8", b'"\xe2\x82"'),
    Raw("bad escape", b'"\\x41"'),
    Raw("unterminated string", b'"abc'),
    Raw("single quotes", b"'abc'"),
    Raw("trailing comma", b"[1,]"),
    Raw("comment", b"/* hi */ 1"),
    Raw("depth 253", nested(253)),
    Raw("depth 254", nested(254)),
    Raw("depth 300", nested(300)),
    Raw("depth 1000 objects", DEEP_OBJECTS),
    Raw("depth 1025", nested(1025)),
    Raw("depth 10000", nested(10_000)),
    Raw("JSON text nested 1000 deep", orjson.dumps(DEEP_OBJECTS.decode())),
    Raw("64 KiB string", b'"' + b"x" * 65536 + b'"'),
    Raw("10k element array", b"[" + b",".join([b"0"] * 10_000) + b"]"),
]
WORDS = [
    "",
    " ",
    "\x00",
    "\u202e",
    "\ufeff",
    "\U0001f600",
    GPT,
    CLAUDE,
    GEMINI,
    "woozlit/",
    "gpt-4o-mini",
    "data:",
    "data:image/png;base64,",
    "data:;base64,AAAA",
    "data:image/png,AAAA",
    "http://",
    "https://example.com/cat.png",
    "ftp://example.com/x",
    "#/$defs/unit",
    "#/$defs/",
    "#/definitions/missing",
    "call_1",
    "{}",
    "[]",
    "{",
    '{"a": [1, 2',
    "1e309",
    "x" * 5000,
    *(
        "user assistant system developer tool function robot text image_url input_audio file "
        "refusal auto none required json_schema json_object object string array null enum "
        "date-time get_weather"
    ).split(),
]
KEYS = (
    "type role content text name arguments function tool_calls tool_call_id image_url url "
    "file file_data input_audio data format parameters properties items required anyOf oneOf "
    "allOf $ref $defs enum const nullable schema json_schema include_usage n stop tools "
    "tool_choice functions function_call logit_bias max_completion_tokens response_format "
    "stream_options"
).split()
EDGE_INTS = [0, -1, 1, 2, 8, 128, 129, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, -(2**63)]
TEXT = st.text(st.characters(codec="utf-8"), max_size=20)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(EDGE_INTS),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    TEXT,
    st.sampled_from(WORDS),
    st.sampled_from(RAW_TOKENS),
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.sampled_from(KEYS) | TEXT, children, max_size=3),
    ),
    max_leaves=8,
)


def rich_request(model: str, stream: bool) -> dict[str, Any]:
    """A request that uses every field a translator looks at, valid for all three providers."""
    return {
        "model": model,
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is the weather in this picture?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": '{"celsius": 21}'},
            {"role": "user", "content": "And tomorrow?"},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "The weather in a city.",
                    "parameters": {
                        "type": "object",
                        "properties": {
                            "city": {"type": "string", "enum": ["Paris", "London"]},
                            "unit": {"$ref": "#/$defs/unit"},
                            "days": {"type": "array", "items": {"type": "integer", "minimum": 1}},
                        },
                        "required": ["city"],
                        "$defs": {"unit": {"type": ["string", "null"], "format": "enum"}},
                    },
                },
            }
        ],
        "tool_choice": "auto",
        "parallel_tool_calls": True,
        "temperature": 0.5,
        "top_p": 0.9,
        "frequency_penalty": 0.5,
        "presence_penalty": -0.5,
        "max_tokens": 64,
        "n": 1,
        "stop": ["\n\n"],
        "seed": 7,
        "user": "user-1234",
        "response_format": {
            "type": "json_schema",
            "json_schema": {
                "name": "weather",
                "schema": {"type": "object", "properties": {"celsius": {"type": "number"}}},
            },
        },
        "stream": stream,
        "stream_options": {"include_usage": True},
    }


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path below `value` (dict keys and list indexes), containers before their items."""
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, child in items:
        yield (*prefix, key)
        if isinstance(child, (dict, list)):
            yield from paths(child, (*prefix, key))


def at(value: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        value = value[key]
    return value


@st.composite
def mutated_requests(draw: st.DrawFn) -> tuple[dict[str, str], bytes]:
    """A rich request with one to three fields replaced, removed, or added, anywhere in it."""
    body = rich_request(draw(st.sampled_from(list(MODELS))), draw(st.booleans()))
    for _ in range(draw(st.integers(1, 3))):
        # Half the time a top-level field, so that every one of them is hit often; else any
        # path at all (most of which are inside `messages` and `tools`).
        everywhere = [(), *paths(body)]
        path = draw(
            st.sampled_from([p for p in everywhere if len(p) == 1]) | st.sampled_from(everywhere)
        )
        parent = at(body, path[:-1])
        operation = "add" if not path else draw(st.sampled_from(["replace", "delete", "add"]))
        if operation == "replace":
            parent[path[-1]] = draw(JSON_VALUES)
        elif operation == "delete":
            del parent[path[-1]]
        else:
            target = at(body, path)
            if isinstance(target, dict):
                target[draw(st.sampled_from(KEYS))] = draw(JSON_VALUES)
            elif isinstance(target, list):
                target.append(draw(JSON_VALUES))
            else:
                parent[path[-1]] = draw(JSON_VALUES)
    accept = draw(st.sampled_from(["application/json", "text/event-stream", "*/*", ""]))
    return {"Accept": accept}, encode(body)


@st.composite
def raw_bodies(draw: st.DrawFn) -> tuple[dict[str, str], bytes]:
    """Bytes that are not a request: garbage, cut or flipped JSON, other encodings, other types."""
    valid = orjson.dumps(rich_request(draw(st.sampled_from(list(MODELS))), False))
    kind = draw(
        st.sampled_from(
            ["bytes", "cut", "flip", "value", "wrapped", "encoded", "compressed", "headers"]
        )
    )
    headers: dict[str, str] = {}
    if kind == "bytes":
        data = draw(st.binary(max_size=300))
    elif kind == "cut":
        data = valid[: draw(st.integers(0, len(valid) - 1))]
    elif kind == "flip":
        i = draw(st.integers(0, len(valid) - 1))
        data = valid[:i] + bytes([draw(st.integers(0, 255))]) + valid[i + 1 :]
    elif kind == "value":
        data = encode(draw(JSON_VALUES))  # a JSON text that is not an object, mostly
    elif kind == "wrapped":
        before, after = draw(
            st.sampled_from(
                [
                    (b"\xef\xbb\xbf", b""),  # a UTF-8 byte order mark
                    (b"", b"garbage"),
                    (b"", b"{}"),
                    (b"[", b"]"),
                    (b" \t\r\n", b" \n"),
                    (b"", b"\x00"),
                    (b"", b"\n" + valid),  # two documents
                ]
            )
        )
        data = before + valid + after
    elif kind == "encoded":
        data = valid.decode().encode(draw(st.sampled_from(["utf-16", "utf-32", "utf-16-be"])))
    elif kind == "compressed":
        encoding, data = draw(
            st.sampled_from(
                [
                    ("gzip", gzip.compress(valid)),
                    ("deflate", zlib.compress(valid)),
                    ("gzip", valid),  # says gzip, is not
                    ("deflate", valid),
                    ("gzip", gzip.compress(valid)[:-9]),  # cut short
                    ("gzip", gzip.compress(gzip.compress(valid))),  # gzip twice, said once
                    ("identity", valid),
                    ("x-unknown", valid),
                    ("br", valid),  # aiohttp refuses it itself unless Brotli is installed
                    ("zstd", valid),
                    ("gzip, deflate", zlib.compress(gzip.compress(valid))),
                ]
            )
        )
        headers["Content-Encoding"] = encoding
    else:
        data = valid
        headers[draw(st.sampled_from(["Content-Type", "Authorization", "Accept"]))] = draw(
            st.sampled_from(
                [
                    "",
                    "application/json; charset=latin-1",
                    "application/json; charset=utf-16",
                    "application/json;;;",
                    "text/plain",
                    "multipart/form-data; boundary=x",
                    "Bearer",
                    "Bearer ",
                    "Basic dXNlcjpwYXNz",
                    "bearer woozlit_" + "A" * 43,
                    "Bearer woozlit_" + "\u00e9" * 43,
                    "Bearer " + "x" * 4000,
                    "*/*;q=0.1, text/event-stream;q=abc",
                ]
            )
        )
    return headers, data


# -- fuzzing ------------------------------------------------------------------------------------


async def test_rich_request_is_answered_by_every_provider(gw, client, proxy_errors):
    """The seed of the mutations is valid everywhere, so a refusal is the mutation's doing."""
    for model in MODELS:
        for stream in (False, True):
            answer = await post(client, gw, orjson.dumps(rich_request(model, stream)))
            assert answer.status == 200, (model, stream, answer.body)
            check(answer)


WRONG_TYPES = [None, False, -1, 2**64 - 1, 0.5, "", "x", [], [None], {}]


async def test_every_field_with_every_type(gw, client, proxy_errors, still_serving):
    """Each field of the rich request, at every depth, set to each JSON type in turn, for the
    three providers in rotation (and both stream modes): the systematic half of the fuzzing."""
    models = list(MODELS)
    for i, path in enumerate(paths(rich_request(GPT, False))):
        for j, value in enumerate(WRONG_TYPES):
            body = rich_request(models[(i + j) % len(models)], stream=bool(j % 2))
            at(body, path[:-1])[path[-1]] = value
            check(await post(client, gw, orjson.dumps(body)), (path, value))


@settings(FUZZ, max_examples=250)
@given(case=mutated_requests())
async def test_fuzz_every_field(gw, client, proxy_errors, still_serving, case):
    headers, data = case
    check(await post(client, gw, data, headers), data)


@settings(FUZZ, max_examples=200)
@given(case=raw_bodies())
async def test_fuzz_raw_bodies(gw, client, proxy_errors, still_serving, case):
    headers, data = case
    try:
        answer = await post(client, gw, data, headers)
    except aiohttp.ClientConnectionError:
        # Only aiohttp's own parser may refuse a request by closing (a Content-Encoding it
        # cannot decode); never our app.
        assert "Content-Encoding" in headers, (headers, data)
        return
    if answer.content_type.startswith("text/plain"):
        assert answer.status == 400 and "Content-Encoding" in headers, (headers, answer)
        return
    check(answer, (headers, data))


def _big(model: str, rest: bytes) -> bytes:
    return b'{"model": "' + model.encode() + b'", "stream": false, ' + rest + b"}"


HELLO = b'"messages": [{"role": "user", "content": "Hi"}]'
BIG_REFUSED = {
    "10000 levels": (nested(10_000), 400),
    "10000 levels in a message": (_big(GPT, b'"messages": [' + nested(10_000) + b"]"), 400),
    "1000 levels of objects in a content part": (
        _big(CLAUDE, b'"messages": [{"role": "user", "content": [' + DEEP_OBJECTS + b"]}]"),
        400,
    ),
    "2 MiB of numbers as messages": (_big(GPT, b'"messages": [' + b"0," * (1 << 20) + b"0]"), 400),
    "3 MiB of empty stop sequences": (
        _big(GEMINI, HELLO + b', "stop": [' + b'"",' * (1 << 20) + b'""]'),
        200,  # Gemini's translator drops empty stops: 3 MiB in, a small request out
    ),
    "a million tools": (_big(CLAUDE, HELLO + b', "tools": [' + b"1," * 1_000_000 + b"1]"), 400),
    "one byte over the limit": (
        _big(GPT, b'"messages": [{"role": "user", "content": "' + b"x" * (MAX_BODY - 95) + b'"}]'),
        413,
    ),
}


async def test_big_and_deep_bodies(gw, client, proxy_errors):
    """The sizes hypothesis is kept away from, to stay fast: each once, up to the limit and over."""
    for name, (data, status) in BIG_REFUSED.items():
        assert len(data) <= MAX_BODY or status == 413, (name, len(data))
        answer = await post(client, gw, data)
        assert answer.status == status, (name, answer.body[:200])
        check(answer, name)
    await assert_serves(client, gw)


BIG_FORWARDED = {
    "3 MiB string": _big(
        GPT, b'"messages": [{"role": "user", "content": "' + b"x" * (3 << 20) + b'"}]'
    ),
    "100k messages": _big(
        CLAUDE, b'"messages": [' + b",".join([b'{"role": "user", "content": "x"}'] * 100_000) + b"]"
    ),
}


@pytest.mark.parametrize("name", list(BIG_FORWARDED))
async def test_big_valid_bodies_are_forwarded(gw, client, name):
    answer = await post(client, gw, BIG_FORWARDED[name])
    assert answer.status == 200, answer.body[:200]
    check(answer, name)


async def test_huge_max_tokens_on_a_huge_quota(gateway, providers, redis_url, client, proxy_errors):
    """A hold past 2**63 once overflowed INCRBY in the admit script: a 503 "store unavailable"
    for what is the client's mistake. Only reachable with a tier limit that large."""
    tiers = {**TIERS, "free": {"monthly_tokens": 2**64 - 1, "requests_per_minute": 100}}
    gw = await gateway(
        providers,
        MODELS,
        tiers=tiers,
        redis_url=redis_url,
        account={"tier": "free", "developer": True},
    )
    for max_tokens in (2**31, 2**63 - 1, 2**64 - 1):
        body = {"model": GPT, "messages": [{"role": "user", "content": "Hi"}], "stream": False}
        answer = await post(client, gw, orjson.dumps({**body, "max_tokens": max_tokens}))
        assert answer.status == 400, answer.body
        check(answer)
    await assert_serves(client, gw)


# -- raw sockets ------------------------------------------------------------------------------


@dataclass
class RawAnswer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    @property
    def closes(self) -> bool:
        return "close" in self.headers.get("connection", "").lower()


async def read_answer(reader: asyncio.StreamReader) -> RawAnswer | None:
    """One HTTP/1.x response (after any 1xx), or None when the server closed first."""
    while True:
        line = await reader.readline()
        if not line:
            return None
        parts = line.split(b" ", 2)
        assert len(parts) >= 2 and parts[0].startswith(b"HTTP/"), line
        headers: dict[str, str] = {}
        while (field := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = field.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        status = int(parts[1])
        if status >= 200:
            break
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while size := int((await reader.readline()).split(b";")[0], 16):
            body += await reader.readexactly(size)
            await reader.readline()
        await reader.readline()
    else:
        body = await reader.read()
    return RawAnswer(status, headers, body)


async def exchange(port: int, data: bytes) -> list[RawAnswer]:
    """Send `data` on a new connection; the answers, until one says close or the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answers: list[RawAnswer] = []
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT):
            try:
                writer.write(data)
                await writer.drain()
                while (answer := await read_answer(reader)) is not None:
                    answers.append(answer)
                    if answer.closes:
                        break
            except ConnectionResetError:
                pass  # the server closed while we were still writing: a close, and clean enough
    finally:
        writer.close()
    return answers


# The corpus requests aiohttp's HTTP parser refuses before our app sees them: a text/plain 400
# (or 417 for Expect) and a close. Every other 4xx must be in our format.
ANSWERED_BY_AIOHTTP = (
    "chunked-data-longer-than-size chunked-extension-garbage chunked-negative-size "
    "chunked-size-not-hex chunked-size-overflow chunked-trailer-flood "
    "content-encoding-br-not-installed content-length-and-chunked content-length-negative "
    "content-length-not-a-number content-length-overflow content-length-shorter-than-body "
    "content-length-twice expect-unknown header-flood-500-headers header-folded-obs-fold "
    "header-name-with-space header-over-8-kib header-without-colon "
    "http-1.0-post-without-length http-2-preface http-version-9.9 lf-only-line-endings "
    "lowercase-method non-latin1-header-value no-host-header nul-in-method "
    "request-line-over-8-kib tls-client-hello transfer-encoding-gzip-only "
    "transfer-encoding-space-before-colon"
).split()
if HAS_BROTLI:  # then aiohttp tries to decode it, fails, and our app answers
    ANSWERED_BY_AIOHTTP.remove("content-encoding-br-not-installed")


def check_raw(name: str, answers: list[RawAnswer]) -> None:
    """The property for a raw exchange: 4xx (ours in our format) or 200 answers, or a close."""
    for answer in answers:
        where = f"{name}: {answer.status} {answer.headers} {answer.body[:200]!r}"
        assert answer.status == 200 or 400 <= answer.status < 500, where
        if answer.status == 200:
            continue  # /healthz, or a completion: the valid requests of the corpus
        if answer.content_type.startswith("application/json"):
            check(Answer(answer.status, answer.content_type, answer.body), name)
        else:
            assert name in ANSWERED_BY_AIOHTTP, where


def corpus_request(path: Path, key: str) -> bytes:
    return path.read_bytes().replace(b"@KEY@", key.encode())


CORPUS_BODIES = sorted(CORPUS.glob("*.json"))
CORPUS_REQUESTS = sorted(CORPUS.glob("*.http"))


@pytest.mark.parametrize("path", CORPUS_BODIES, ids=[p.stem for p in CORPUS_BODIES])
async def test_corpus_body(gw, client, proxy_errors, path):
    check(await post(client, gw, path.read_bytes()), path.name)
    await assert_serves(client, gw, models=[GPT])


@pytest.mark.parametrize("path", CORPUS_REQUESTS, ids=[p.stem for p in CORPUS_REQUESTS])
async def test_corpus_raw_request(gw, client, proxy_errors, path):
    check_raw(path.stem, await exchange(gw.server.port, corpus_request(path, gw.api_key)))
    await assert_serves(client, gw, models=[GPT])


@pytest.mark.parametrize("name", ANSWERED_BY_AIOHTTP)
async def test_protocol_errors_in_the_error_format(gw, name):
    answers = await exchange(gw.server.port, corpus_request(CORPUS / f"{name}.http", gw.api_key))
    assert answers
    for answer in answers:
        check(Answer(answer.status, answer.content_type, answer.body), name)


async def test_pipelined_requests_are_answered_in_order(gw, client, proxy_errors):
    one = orjson.dumps({"model": GPT, "messages": [{"role": "user", "content": "Hi"}]})
    chat = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + gw.api_key.encode()
        + b"\r\nContent-Type: application/json\r\nAccept: application/json\r\n"
        + b"Content-Length: %d\r\n\r\n" % len(one)
        + one
    )
    health = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    garbage = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n{{{"
    last = b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answers = await exchange(gw.server.port, (health + chat + garbage) * 20 + last)
    assert [a.status for a in answers] == [200, 200, 401] * 20 + [404]
    check_raw("pipelined", answers)


async def test_slow_clients_do_not_hold_up_others(gw, client, proxy_errors):
    """Fifty connections trickling headers or a body: everyone else is served as usual."""
    port = gw.server.port
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + gw.api_key.encode()
        + b"\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
    )

    async def trickle(at_once: bytes, slowly: bytes) -> None:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(at_once)
            for i in range(len(slowly)):
                writer.write(slowly[i : i + 1])
                await writer.drain()
                await asyncio.sleep(0.05)
        finally:
            writer.close()

    body = b'{"model": "' * 1000
    slow = [
        # Half still sending their headers; half with their handler waiting on the body.
        asyncio.create_task(trickle(b"", head + body) if i % 2 else trickle(head, body))
        for i in range(50)
    ]
    try:
        await asyncio.sleep(0.3)
        started = asyncio.get_running_loop().time()
        await assert_serves(client, gw)
        assert asyncio.get_running_loop().time() - started < 2.0
        assert not any(task.done() for task in slow)  # they really were still trickling
    finally:
        for task in slow:
            task.cancel()
        await asyncio.gather(*slow, return_exceptions=True)
    await assert_serves(client, gw)


async def test_slow_headers_are_cut_off_by_keepalive_timeout(redis_url, providers):
    """The only bound aiohttp puts on a client slow to send its headers: keepalive_timeout,
    counted from the connection's start and not reset by each byte. aiohttp 3.14's default is
    3630 s; `__main__` should set it far lower. Shown here with 0.5 s."""
    config = parse_config(
        {"providers": providers, "models": MODELS, "tiers": TIERS}, "test.yaml", {}
    )
    server = TestServer(create_app(config, redis_url=redis_url))
    await server.start_server(keepalive_timeout=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    loop = asyncio.get_running_loop()
    started = loop.time()

    async def trickle() -> None:
        for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"x" * 1000:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.05)

    sender = asyncio.create_task(trickle())
    try:
        async with asyncio.timeout(5):
            assert await reader.read() == b""  # closed, without an answer
        took = loop.time() - started
        assert 0.4 < took < 2.0, took
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        writer.close()
        await server.close()


async def test_slow_body_is_cut_off(gateway, providers, redis_url):
    gw = await gateway(
        providers, MODELS, tiers=TIERS, redis_url=redis_url, server={"body_timeout_seconds": 0.5}
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.server.port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + gw.api_key.encode()
        + b"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    )

    async def trickle() -> None:
        for _ in range(1000):
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(0.05)

    sender = asyncio.create_task(trickle())
    try:
        async with asyncio.timeout(3):
            answer = await read_answer(reader)
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        writer.close()
    assert answer is None or answer.status == 408


# -- memory -------------------------------------------------------------------------------------


def rss_bytes() -> int:
    """This process's resident set (the gateway runs in it), from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


async def test_hostile_requests_do_not_grow_memory(gw, client, proxy_errors):
    """Three hundred hostile requests (the corpus, three times): RSS grows by less than 50 MB."""
    bodies = [p.read_bytes() for p in CORPUS_BODIES]
    requests = [corpus_request(p, gw.api_key) for p in CORPUS_REQUESTS]
    bodies += [data for data, _ in BIG_REFUSED.values()]

    async def round_() -> None:
        for data in bodies:
            check(await post(client, gw, data))
        for path, data in zip(CORPUS_REQUESTS, requests, strict=True):
            check_raw(path.stem, await exchange(gw.server.port, data))

    await round_()  # warm up: caches, pools, first-use allocations
    gc.collect()
    before = rss_bytes()
    for _ in range(2):
        await round_()
    gc.collect()
    grown = rss_bytes() - before
    assert grown < 50 * 1024 * 1024, f"RSS grew by {grown / 2**20:.1f} MiB"
    await assert_serves(client, gw)
