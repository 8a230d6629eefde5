"""Faults at random, for the chaos run (tests/test_chaos.py): the fake OpenAI upstream
given `faults` answers every request (every attempt of the gateway) with a normal answer
or, `rate` of the time, one of `FAULTS` picked at random, stream or not.

A normal answer is 2 to 12 random words and random usage (8 to 64 prompt tokens, one
completion token a word), so that an answer that completes reports what it really cost
and the accounting is checked against counts that differ from request to request. A
fault that cuts a stream strikes after a random number of its events (0: before any).
`counts` tells how many attempts got each outcome, by `"<fault> stream"` and
`"<fault> json"`.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.fakes import openai_wire as wire

FAULTS = (
    "reset",  # connection reset (RST) before any header
    "hang",  # no header for `hang` seconds (longer than the gateway's first_byte timeout)
    "stall",  # a pause of `stall` seconds (longer than idle) in the middle of the body
    "429",  # rate-limited, with Retry-After
    "500",  # server error
    "529",  # overloaded (Anthropic's status, also seen behind some OpenAI-compatible hosts)
    "garbage",  # a line that is not JSON in the middle of the stream (non-stream: the body)
    "truncated",  # the body ends early: a stream without [DONE] (cleanly or by a reset)
)
WORDS = ["Hello", " there", "!", " How", " can", " I", " help", " you", " today", "?"]
GARBAGE_EVENTS = (
    b'data: {"choices": [{"delta": {"content": "x"\n\n',
    b"data: \xff\xfe not json at all\n\n",
    b"data: [1, 2, 3]\n\n",
)


def reset(request: web.BaseRequest) -> None:
    """Close the client's connection with a TCP reset, not a FIN."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    transport.abort()


def _error(status: int) -> web.Response:
    if status == 529:
        error = {"type": "overloaded_error", "message": "Overloaded"}
        body = orjson.dumps({"type": "error", "error": error})
        return web.Response(status=status, body=body, content_type="application/json")
    kind = "rate_limit_error" if status == 429 else "server_error"
    headers = {"Retry-After": "1"} if status == 429 else None
    return wire.error(status, f"Injected {status}.", kind, headers=headers)


@dataclass
class Faults:
    """Which attempts fail, and how (see the module's docstring); seeded, so a run's
    sequence of picks is reproducible (not which request gets which: that is timing)."""

    seed: int
    rate: float = 0.5  # share of attempts that get a fault, spread evenly over FAULTS
    hang: float = 3.5  # seconds a "hang" keeps the headers back
    stall: float = 2.0  # seconds a "stall" pauses the body
    counts: Counter[str] = field(default_factory=Counter)
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def pick(self) -> str:
        if self.rng.random() >= self.rate:
            return "ok"
        return self.rng.choice(FAULTS)

    async def answer(self, request: web.BaseRequest, body: dict[str, Any]) -> web.StreamResponse:
        """One attempt: a normal answer or a fault."""
        stream = bool(body.get("stream"))
        model = str(body.get("model"))
        fault = self.pick()
        self.counts[f"{fault} {'stream' if stream else 'json'}"] += 1
        rng = self.rng
        words = [rng.choice(WORDS) for _ in range(rng.randint(2, 12))]
        usage = wire.usage(rng.randint(8, 64), len(words))
        ids: dict[str, Any] = {"id": "chatcmpl-chaos", "created": int(time.time())}

        if fault == "reset":
            reset(request)
            return web.Response()  # goes nowhere: the connection is gone
        if fault == "hang":
            await asyncio.sleep(self.hang)  # the gateway gave up long ago
        if fault in ("429", "500", "529"):
            return _error(int(fault))
        if not stream:
            return await self._json(request, fault, model, words, usage, ids)

        events = [wire.event(wire.chunk(model, {"role": "assistant", "content": ""},
                                        logprobs=False, fingerprint=None, **ids))]  # fmt: skip
        events += [
            wire.event(wire.chunk(model, {"content": w}, logprobs=False, fingerprint=None, **ids))
            for w in words
        ]
        events.append(wire.event(wire.chunk(model, {}, "stop", logprobs=False, fingerprint=None,
                                            **ids)))  # fmt: skip
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append(wire.event(wire.usage_chunk(model, usage, **ids)))
        events.append(wire.DONE)
        # Where the fault strikes: after `at` events (0: before any; len-1: all but [DONE]).
        at = rng.randint(0, len(events) - 1)

        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for i, data in enumerate(events):
                if i == at:
                    if fault == "stall":
                        await asyncio.sleep(self.stall)
                    elif fault == "garbage":
                        await resp.write(rng.choice(GARBAGE_EVENTS))
                    elif fault == "truncated":
                        if rng.random() < 0.5:
                            await resp.write_eof()  # a clean end, without [DONE]
                        else:
                            reset(request)
                        return resp
                await resp.write(data)
            await resp.write_eof()
        except ConnectionError:
            pass  # the gateway went away (it gave up on a stall, or saw garbage)
        return resp

    async def _json(
        self,
        request: web.BaseRequest,
        fault: str,
        model: str,
        words: list[str],
        usage: dict[str, int],
        ids: dict[str, Any],
    ) -> web.StreamResponse:
        answer = orjson.dumps(wire.completion(model, ["".join(words)], usage, fingerprint=None,
                                              **ids))  # fmt: skip
        rng = self.rng
        if fault == "garbage":
            garbage = rng.choice([answer[: len(answer) // 2], b"<html>Bad Gateway</html>"])
            return web.Response(body=garbage, content_type="application/json")
        if fault not in ("stall", "truncated"):
            return web.Response(body=answer, content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = len(answer)
        await resp.prepare(request)
        cut = rng.randint(1, len(answer) - 1)
        await resp.write(answer[:cut])
        if fault == "truncated":
            reset(request)
            return resp
        await asyncio.sleep(self.stall)
        await resp.write(answer[cut:])
        await resp.write_eof()
        return resp
