"""A small pipelined Redis connection for the two script calls of every request.

Why: redis-py costs ~80 us of CPU per EVALSHA (connection checkout, command packing, a
parser in Python, a write per command). Every request makes two such calls, which on its
own took a third of the gateway's throughput. This connection does only EVALSHA/SCRIPT
LOAD, on one socket per process, auto-pipelined in the way of ioredis and rueidis:

- every command issued during one turn of the event loop goes out in one write;
- replies come back in order and are matched to a FIFO of futures (hiredis parses them);
- a caller that is cancelled leaves its future in the FIFO, so its reply is dropped when it
  comes and the next caller's is never mistaken for it: a cancelled call cannot poison the
  connection;
- one watchdog timer per connection, not one per call: when the oldest reply is later than
  the timeout, the connection is dropped and every pending call fails at once (Redis answers
  in order, so the later ones are late too). Not when the watchdog itself ran late: then our
  own event loop was blocked (a turn of thousands of callbacks), replies may be sitting
  unread in the socket, and blaming Redis would turn a stall of ours into an outage;
- a lost connection fails every pending call at once, and the next call reconnects; a
  restarted Redis has an empty script cache, which NOSCRIPT reloads transparently.

Everything else (admin commands, Redis Cluster, TLS, the embedded store) uses redis-py.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from functools import partial
from typing import Any

import hiredis


class RedisConnectionError(ConnectionError):
    """The connection failed or was lost; the call may or may not have run."""


class RedisReplyError(Exception):
    """Redis answered an error (a script error, NOSCRIPT, WRONGPASS...)."""


def encode(*parts: Any) -> bytes:
    """A command in RESP: an array of bulk strings."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        if isinstance(part, bytes):
            data = part
        elif isinstance(part, str):
            data = part.encode()
        else:
            data = str(part).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Protocol(asyncio.Protocol):
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader(encoding="utf-8", replyError=RedisReplyError)
        self.waiting: deque[tuple[asyncio.Future[Any], float]] = deque()  # (future, deadline)
        self.outgoing: list[bytes] = []
        self.closed = False
        self.watching = False
        self.watched_at = 0.0  # when the watchdog last ran

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiting = self.waiting
        while (reply := self.reader.gets()) is not False:
            future, _ = waiting.popleft()
            if not future.done():  # done: its caller timed out or was cancelled
                if isinstance(reply, RedisReplyError):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail("connection to Redis lost")

    def fail(self, why: str) -> None:
        self.close()
        while self.waiting:
            future, _ = self.waiting.popleft()
            if not future.done():
                future.set_exception(RedisConnectionError(why))

    def send(self, command: bytes) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self.outgoing:
            loop.call_soon(self.flush)
        self.outgoing.append(command)
        self.waiting.append((future, loop.time() + self.timeout))
        if not self.watching:
            self.watching = True
            self.watched_at = loop.time()
            loop.call_later(self.timeout / 2, self.watch)
        return future

    def watch(self) -> None:
        if self.closed or not self.waiting:
            self.watching = False
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        late = now - self.watched_at > self.timeout  # due after timeout / 2: the loop stalled
        self.watched_at = now
        if self.waiting[0][1] < now and not late:
            self.watching = False
            self.fail(f"Redis did not answer within {self.timeout} s")
            return
        loop.call_later(self.timeout / 2, self.watch)

    def flush(self) -> None:
        if self.outgoing and self.transport is not None and not self.closed:
            self.transport.write(b"".join(self.outgoing))
        self.outgoing.clear()

    def close(self) -> None:
        self.closed = True  # at once: the next call must not pick this connection
        if self.transport is not None:
            self.transport.close()


class PipelinedScripts:
    """EVALSHA of registered scripts over one auto-pipelined connection."""

    def __init__(self, params: dict[str, Any], scripts: dict[str, str], timeout: float):
        self.params = params
        self.timeout = timeout
        self.connect_timeout = max(5 * timeout, 5.0)
        self.sources = {name: source.encode() for name, source in scripts.items()}
        self.shas = {name: hashlib.sha1(src).hexdigest() for name, src in self.sources.items()}
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None

    async def _connection(self) -> _Protocol:
        protocol = self._protocol
        if protocol is not None and not protocol.closed:
            return protocol
        if self._connecting is None:
            self._connecting = connecting = asyncio.ensure_future(self._connect())
            connecting.add_done_callback(self._connect_done)
        # A caller waits `timeout` at most; the attempt itself goes on for `connect_timeout`,
        # so that a loop too busy to see the connection complete in time (thousands of
        # requests failing fast while Redis was away) still gets it for the next caller.
        try:
            async with asyncio.timeout(self.timeout):
                return await asyncio.shield(self._connecting)
        except TimeoutError as exc:
            raise RedisConnectionError(f"cannot connect to Redis within {self.timeout} s") from exc

    def _connect_done(self, connecting: asyncio.Future[_Protocol]) -> None:
        if self._connecting is connecting:
            self._connecting = None
        if not connecting.cancelled():
            connecting.exception()  # seen: the callers that waited had it raised

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        p = self.params
        try:
            async with asyncio.timeout(self.connect_timeout):
                factory = partial(_Protocol, self.timeout)
                if p.get("path"):
                    _, protocol = await loop.create_unix_connection(factory, p["path"])
                else:
                    _, protocol = await loop.create_connection(
                        factory, p.get("host", "localhost"), p.get("port", 6379)
                    )
                setup = []
                if p.get("password"):
                    auth = [p["username"], p["password"]] if p.get("username") else [p["password"]]
                    setup.append(protocol.send(encode("AUTH", *auth)))
                if p.get("db"):
                    setup.append(protocol.send(encode("SELECT", p["db"])))
                for reply in setup:
                    await reply
        except (OSError, TimeoutError, RedisReplyError) as exc:
            raise RedisConnectionError(f"cannot connect to Redis: {exc or 'timed out'}") from exc
        self._protocol = protocol
        return protocol

    async def evalsha(self, name: str, keys: list[str], args: list[Any]) -> Any:
        command = encode("EVALSHA", self.shas[name], len(keys), *keys, *args)
        protocol = self._protocol
        if protocol is None or protocol.closed:
            protocol = await self._connection()
        try:
            return await protocol.send(command)
        except RedisReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        # A Redis that restarted (or never saw our scripts): load, then run again.
        await self._call(encode("SCRIPT", "LOAD", self.sources[name]))
        return await self._call(command)

    async def connect(self) -> None:
        """Open the connection now, if it is not open; RedisConnectionError if it cannot."""
        await self._connection()

    def send_now(self, commands: list[bytes]) -> list[asyncio.Future[Any]] | None:
        """Send `commands` on the connection, with the next flush of everything else on it
        (the scripts of other requests): their replies' futures, in order; None, sending
        nothing, when the connection is not up (the caller then takes another way)."""
        protocol = self._protocol
        if protocol is None or protocol.closed:
            return None
        return [protocol.send(command) for command in commands]

    async def _call(self, command: bytes) -> Any:
        protocol = await self._connection()
        return await protocol.send(command)

    def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()  # an attempt going on must not connect after this
        if self._protocol is not None:
            self._protocol.close()
            self._protocol = None
