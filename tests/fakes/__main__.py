"""The fake upstream on a port: `python -m tests.fakes --port 9001 [--chunks 20]
[--chunk-delay-ms 0]` (from the repository's root).

The fake OpenAI upstream (openai_upstream.py) with the benchmarks' answers (`--chunks`
chunks a stream, encoded once; fast.py), serving any model name and recording nothing,
Anthropic's Messages API (`POST /v1/messages`) and OpenAI's Responses API
(`POST /v1/responses`, fast.py's) on the same port. The benchmarks and the
deploy check start it; a gateway with `OPENAI_BASE_URL=http://127.0.0.1:PORT/v1` (and
`ANTHROPIC_BASE_URL=http://127.0.0.1:PORT`) runs on it with no provider key.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from aiohttp import web

from tests.fakes.fast import serve
from tests.fakes.openai_upstream import FakeOpenAI, Record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--chunks", type=int, default=20, help="chunks per stream")
    parser.add_argument(
        "--chunk-delay-ms",
        type=float,
        default=0.0,
        help="time between chunks (a model ending in -paced<MS> overrides it)",
    )
    args = parser.parse_args(argv)
    if args.chunks < 1:
        parser.error("--chunks must be at least 1")
    record = Record(models=None, keep=False, chunks=args.chunks, chunk_delay_ms=args.chunk_delay_ms)
    fake = FakeOpenAI(record)
    openai, messages, responses = fake.handle, fake.fast.messages, fake.fast.responses
    count_tokens = fake.fast.count_tokens

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        if request.method == "POST":
            if request.path.endswith("/v1/messages"):
                return await messages(request)
            if request.path.endswith("/v1/messages/count_tokens"):
                return await count_tokens(request)
            if request.path.endswith("/v1/responses"):
                return await responses(request)
        return await openai(request)

    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        runner(serve(handle, args.host, args.port))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
