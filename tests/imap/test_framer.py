"""Framing the byte stream into commands: literals, LITERAL+, limits."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mxd.imap.errors import FramingError
from mxd.imap.framer import BlobLiteral, Framer, Literal, NeedContinuation, RawCommand


class Sink:
    def __init__(self) -> None:
        self.data = b""
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.data += data

    def abort(self) -> None:
        self.aborted = True


def events(fr: Framer) -> list[object]:
    out = []
    while True:
        ev = fr.next_event()
        if ev is None:
            return out
        out.append(ev)


def test_synchronising_literal_asks_for_continuation() -> None:
    """{n} yields a NeedContinuation before the literal's bytes are awaited."""
    fr = Framer(lambda h, n, ns: None)
    fr.feed(b"a LOGIN {5}\r\n")
    assert events(fr) == [NeedContinuation()]
    fr.feed(b"alice x\r\n")
    assert events(fr) == [RawCommand((b"a LOGIN ", Literal(b"alice"), b" x"))]


def test_nonsync_literal_needs_no_continuation() -> None:
    """{n+} (RFC 7888) is read without a continuation request."""
    fr = Framer(lambda h, n, ns: None)
    fr.feed(b"a LOGIN {5+}\r\nalice x\r\nb NOOP\r\n")
    evs = events(fr)
    assert evs == [RawCommand((b"a LOGIN ", Literal(b"alice"), b" x")), RawCommand((b"b NOOP",))]


def test_large_literal_goes_to_sink() -> None:
    """The sink chooser can route a literal into a file-like sink."""
    sink = Sink()
    fr = Framer(lambda h, n, ns: sink if n > 3 else None)
    fr.feed(b"a APPEND INBOX {10+}\r\n0123456789\r\n")
    (ev,) = events(fr)
    assert isinstance(ev, RawCommand) and isinstance(ev.parts[1], BlobLiteral)
    assert sink.data == b"0123456789"


def test_refused_sync_literal_is_recoverable() -> None:
    """A refused {n} literal gives a non-fatal tagged error; the next command still frames."""
    def chooser(h: bytes, n: int, ns: bool) -> None:
        if n > 100:
            raise FramingError("[TOOBIG] too large")

    fr = Framer(chooser)
    fr.feed(b"a1 APPEND INBOX {1000}\r\n")
    with pytest.raises(FramingError) as e:
        fr.next_event()
    assert not e.value.fatal and e.value.tag == "a1"
    fr.feed(b"a2 NOOP\r\n")
    assert events(fr) == [RawCommand((b"a2 NOOP",))]


def test_refused_nonsync_literal_is_fatal() -> None:
    """A refused {n+} literal cannot be skipped safely: the error is fatal (RFC 7888 §4)."""
    def chooser(h: bytes, n: int, ns: bool) -> None:
        raise FramingError("[TOOBIG] too large")

    fr = Framer(chooser)
    fr.feed(b"a1 APPEND INBOX {1000+}\r\n")
    with pytest.raises(FramingError) as e:
        fr.next_event()
    assert e.value.fatal


def test_line_length_limit() -> None:
    """A line beyond max_line without a newline is a fatal error, bounding the buffer."""
    fr = Framer(lambda h, n, ns: None, max_line=100)
    fr.feed(b"a NOOP " + b"x" * 200)
    with pytest.raises(FramingError) as e:
        fr.next_event()
    assert e.value.fatal
    assert fr.buffered == 0


def test_reset_aborts_sinks() -> None:
    """Dropping a half-read command aborts its literal sinks (no orphan temp files)."""
    sink = Sink()
    fr = Framer(lambda h, n, ns: sink)
    fr.feed(b"a APPEND INBOX {10+}\r\n01234")
    assert events(fr) == []
    fr.reset()
    assert sink.aborted


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=30), max_size=10))
def test_framer_only_raises_framing_error(chunks: list[bytes]) -> None:
    """Arbitrary input in arbitrary chunks never raises anything but FramingError."""
    fr = Framer(lambda h, n, ns: None, max_line=64, max_command=256)
    for c in chunks:
        fr.feed(c)
        try:
            events(fr)
        except FramingError:
            fr.reset()


def test_after_literal_marks_the_wait_for_the_line_end() -> None:
    """``after_literal`` holds from the last octet of a literal until its command line
    ends (the moment the server must ACK promptly for Nagle-bound clients)."""
    fr = Framer(lambda h, n, ns: None)
    fr.feed(b"a APPEND INBOX {5}\r\n")
    assert events(fr) == [NeedContinuation()]
    assert not fr.after_literal
    fr.feed(b"Hel")
    assert events(fr) == [] and not fr.after_literal
    fr.feed(b"lo")
    assert events(fr) == [] and fr.after_literal
    fr.feed(b"\r\n")
    assert len(events(fr)) == 1 and not fr.after_literal
