"""Logs as JSON lines: errors and events on stderr, one access line per request on stdout.

The access log is on the path of every request, so it does not go through `logging` (a
handler lock, a formatter and a write per line). Lines are built as bytes with orjson,
gathered in a buffer and written at most every 100 ms or 64 KiB, whole lines at a time.
Nothing secret is ever given to it: the request id, the public model, the deployment, the
status, tokens, durations and the account id; never an API key, a provider key or a prompt.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from typing import Any

import orjson

FLUSH_SECONDS = 0.1
FLUSH_BYTES = 64 * 1024


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the exception if any."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return orjson.dumps(line).decode()


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's own access log would be a second line per request: ours replaces it.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


class AccessLog:
    """Buffered JSON lines on a file descriptor (stdout by default)."""

    def __init__(self, fd: int | None = None, enabled: bool = True):
        self.fd = sys.stdout.fileno() if fd is None else fd
        self.enabled = enabled
        self.buffer = bytearray()
        self.scheduled = False

    def write(self, fields: dict[str, Any]) -> None:
        if not self.enabled:
            return
        fields["ts"] = round(time.time(), 3)
        self.buffer += orjson.dumps(fields)
        self.buffer += b"\n"
        if len(self.buffer) >= FLUSH_BYTES:
            self.flush()
        elif not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        self.scheduled = False
        data, self.buffer = bytes(self.buffer), bytearray()
        while data:
            try:
                written = os.write(self.fd, data)
            except BlockingIOError:  # a full pipe: keep the rest for the next flush
                self.buffer[:0] = data
                self.scheduled = True
                asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.flush)
                return
            except OSError:
                return  # stdout closed: nothing to log to
            data = data[written:]
