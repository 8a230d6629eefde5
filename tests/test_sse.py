"""The SSE parser: the same events however the bytes are cut, whatever the line endings."""

from __future__ import annotations

import pytest

from proxy.sse import DONE, SSEEvent, SSEParser, frame

# A stream with everything a provider sends: named events, comments, multi-line data, an
# unknown field, `id`/`retry` lines, a field without a colon, and [DONE].
STREAM = (
    b": connected\n"
    b"\n"
    b'data: {"a": 1}\n'
    b"\n"
    b"event: message_start\n"
    b'data: {"type": "message_start"}\n'
    b"\n"
    b"id: 7\n"
    b"retry: 1000\n"
    b"data: first line\n"
    b"data:second line, no space\n"
    b"data:  two spaces keep one\n"
    b"\n"
    b": keep-alive\n"
    b"\n"
    b"unknown: ignored\n"
    b"data\n"
    b"\n"
    b"data: caf\xc3\xa9 \xe2\x98\x95\n"
    b"\n"
    b"data: [DONE]\n"
    b"\n"
)
EXPECTED = [
    SSEEvent(b"connected", comment=True),
    SSEEvent(b'{"a": 1}'),
    SSEEvent(b'{"type": "message_start"}', "message_start"),
    SSEEvent(b"first line\nsecond line, no space\n two spaces keep one"),
    SSEEvent(b"keep-alive", comment=True),
    SSEEvent(b""),  # `data` alone is a data field with an empty value
    SSEEvent("café ☕".encode()),
    SSEEvent(b"[DONE]"),
]


def parse(*pieces: bytes) -> list[SSEEvent]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    for piece in pieces:
        events += parser.feed(piece)
    return events + parser.close()


def with_endings(stream: bytes, ending: bytes) -> bytes:
    return stream.replace(b"\n", ending)


def test_whole_stream():
    assert parse(STREAM) == EXPECTED


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_line_endings(ending):
    assert parse(with_endings(STREAM, ending)) == EXPECTED


MIXED = b"data: a\r\ndata: b\rdata: c\n\r\nevent: e\rdata: d\r\r: x\r\n\r\n\rdata: f\n\r"
MIXED_EVENTS = [
    SSEEvent(b"a\nb\nc"),
    SSEEvent(b"d", "e"),
    SSEEvent(b"x", comment=True),
    SSEEvent(b"f"),
]


def test_mixed_line_endings():
    assert parse(MIXED) == MIXED_EVENTS


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_every_split_point(ending):
    stream = with_endings(STREAM, ending)
    for i in range(len(stream) + 1):
        assert parse(stream[:i], stream[i:]) == EXPECTED, f"split at byte {i}"


def test_every_pair_of_split_points():
    n = len(MIXED)
    for i in range(n + 1):
        for j in range(i, n + 1):
            assert parse(MIXED[:i], MIXED[i:j], MIXED[j:]) == MIXED_EVENTS, f"split at {i}, {j}"


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_one_byte_at_a_time(ending):
    stream = with_endings(STREAM, ending)
    assert parse(*(stream[i : i + 1] for i in range(len(stream)))) == EXPECTED


def test_empty_feeds_change_nothing():
    stream = with_endings(STREAM, b"\r")
    pieces: list[bytes] = []
    for i in range(len(stream)):
        pieces += [stream[i : i + 1], b""]
    assert parse(*pieces) == EXPECTED


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_event_is_returned_as_soon_as_its_blank_line_is_in(ending):
    """Nothing is held back: each event comes out of the very feed that completes it."""
    parser = SSEParser()
    first, second = (f"data: {n}{ending.decode()}{ending.decode()}".encode() for n in (1, 2))
    assert parser.feed(first) == [SSEEvent(b"1")]
    assert parser.feed(second) == [SSEEvent(b"2")]
    assert parser.close() == []


def test_crlf_cut_between_cr_and_lf():
    """The CR ends the event at once; the LF that follows is its pair, not a blank line."""
    parser = SSEParser()
    assert parser.feed(b"data: 1\r\n\r") == [SSEEvent(b"1")]
    assert parser.feed(b"\ndata: 2\r") == []
    assert parser.feed(b"\n") == []
    assert parser.feed(b"\r\n") == [SSEEvent(b"2")]
    assert parser.close() == []


def test_comment_is_returned_at_once():
    parser = SSEParser()
    assert parser.feed(b": keep-alive\n") == [SSEEvent(b"keep-alive", comment=True)]
    assert parser.feed(b":\n") == [SSEEvent(b"", comment=True)]


def test_comment_inside_an_event_does_not_end_it():
    assert parse(b"data: a\n: ping\ndata: b\n\n") == [
        SSEEvent(b"ping", comment=True),
        SSEEvent(b"a\nb"),
    ]


def test_blank_lines_alone_make_no_events():
    assert parse(b"\n\n\r\n\r\r\n") == []


def test_event_name_resets_after_each_event():
    assert parse(b"event: ping\ndata: 1\n\ndata: 2\n\n") == [
        SSEEvent(b"1", "ping"),
        SSEEvent(b"2"),
    ]


@pytest.mark.parametrize(
    "tail",
    [b"data: last", b"data: last\n", b"data: last\r", b"data: last\r\n"],
    ids=["no-newline", "LF", "CR", "CRLF"],
)
def test_final_event_without_blank_line_comes_out_on_close(tail):
    parser = SSEParser()
    assert parser.feed(b"data: 1\n\n" + tail) == [SSEEvent(b"1")]
    assert parser.close() == [SSEEvent(b"last")]
    assert parser.close() == []  # and only once


def test_close_with_nothing_pending():
    parser = SSEParser()
    assert parser.feed(b"data: 1\n\n") == [SSEEvent(b"1")]
    assert parser.close() == []
    assert parser.pending_bytes == 0


def test_pending_bytes_is_the_partial_line():
    parser = SSEParser()
    parser.feed(b"data: 1\n\ndata: par")
    assert parser.pending_bytes == len(b"data: par")


def test_frame_and_done():
    assert frame(b'{"a":1}') == b'data: {"a":1}\n\n'
    assert parse(frame(b'{"a":1}') + DONE) == [SSEEvent(b'{"a":1}'), SSEEvent(b"[DONE]")]


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"])
def test_a_large_event_in_small_reads(ending):
    """A multi-megabyte event (a base64 image) in 8 KiB reads: one event, whole; the parser
    keeps a line still coming as its pieces (no rescanning of what came before)."""
    payload = b"x" * (3 << 20)
    body = b"data: " + payload + ending + b"data: tail" + ending + ending
    parser = SSEParser()
    events = []
    for i in range(0, len(body), 8192):
        events += parser.feed(body[i : i + 8192])
    assert events == [SSEEvent(payload + b"\ntail")]
    assert parser.pending_bytes == 0


def test_an_event_over_the_limit_is_an_upstream_error():
    from proxy.errors import UpstreamError

    parser = SSEParser(max_event=1000)
    parser.feed(b"data: " + b"x" * 500 + b"\n")
    with pytest.raises(UpstreamError, match="over 1000 bytes"):
        parser.feed(b"data: " + b"y" * 600 + b"\n")
    endless = SSEParser(max_event=1000)
    with pytest.raises(UpstreamError):
        for _ in range(10):
            endless.feed(b":" + b"A" * 200)  # a comment line that never ends


def test_the_limit_counts_one_event_at_a_time():
    parser = SSEParser(max_event=1000)
    for _ in range(50):
        assert parser.feed(b"data: " + b"x" * 900 + b"\n\n") == [SSEEvent(b"x" * 900)]
