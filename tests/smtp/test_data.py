"""DATA decoding (RFC 5321 §4.5.2), bare CR/LF detection, header section splitting."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mxd.smtp.data import BareLineEndingScanner, DataReader, HeaderSection, has_bare_line_ending


def run(reader: DataReader, chunks: list[bytes]) -> tuple[bytes, bytes | None]:
    body = b""
    for ch in chunks:
        out, left = reader.feed(ch)
        body += out
        if left is not None:
            return body, left
    return body, None


def test_end_and_leftover() -> None:
    """DATA ends at CRLF.CRLF; bytes after it are returned as pipelined input."""
    body, left = run(DataReader(), [b"a\r\n..b\r\n.\r\nQUIT\r\n"])
    assert body == b"a\r\n.b\r\n" and left == b"QUIT\r\n"


def test_end_right_after_354() -> None:
    """An empty message (just the dot line) ends immediately."""
    assert run(DataReader(), [b".\r\n"]) == (b"", b"")


def test_bare_endings_do_not_end_data() -> None:
    """\\n.\\n, \\r.\\r and \\n.\\r\\n never end DATA but mark the message."""
    for seq in (b"\n.\n", b"\r.\r", b"\n.\r\n"):
        r = DataReader()
        body, left = run(r, [b"x" + seq + b"MAIL FROM:<a@b>\r\n"])
        assert left is None and r.bare_line_ending


def test_long_line_passes_through() -> None:
    """A line longer than the carry limit is passed on in pieces, unchanged."""
    line = b"." + b"y" * 20000 + b"\r\n"
    body, left = run(DataReader(), [line[:9000], line[9000:], b".\r\n"])
    assert body == line[1:] and left == b""


CLEAN_LINE = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


@given(st.lists(CLEAN_LINE, max_size=20), st.data())
def test_stuffing_round_trip_any_split(lines: list[bytes], data: st.DataObject) -> None:
    """Dot-stuffed lines, split anywhere, decode to the original lines, clean."""
    wire = b"".join((b"." + ln if ln.startswith(b".") else ln) + b"\r\n" for ln in lines)
    wire += b".\r\nNEXT"
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    chunks = [wire[i:j] for i, j in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
    r = DataReader()
    body, left = run(r, chunks)
    assert body == b"".join(ln + b"\r\n" for ln in lines)
    assert not r.bare_line_ending
    assert left is not None and left in (b"NEXT", b"NEX", b"NE", b"N", b"")


@given(st.binary(max_size=200), st.data())
def test_bdat_scanner_split_invariant(blob: bytes, data: st.DataObject) -> None:
    """The BDAT scanner's verdict does not depend on chunk boundaries."""
    cuts = sorted(data.draw(st.lists(st.integers(0, len(blob)), max_size=5)))
    s = BareLineEndingScanner()
    for i, j in zip([0, *cuts], [*cuts, len(blob)], strict=True):
        s.feed(blob[i:j])
    s.finish()
    assert s.bare_line_ending == has_bare_line_ending(blob)


def test_header_section() -> None:
    """The header section ends before the empty line; a message with no body is all header."""
    h = HeaderSection(1000)
    assert h.feed(b"A: 1\r\nB: 2\r\n") is None
    assert h.feed(b"\r\nbody\r\n") == (b"A: 1\r\nB: 2\r\n", b"\r\nbody\r\n")
    h2 = HeaderSection(1000)
    assert h2.feed(b"\r\nno headers\r\n") == (b"", b"\r\nno headers\r\n")
    h3 = HeaderSection(10)
    assert h3.feed(b"X: " + b"z" * 20) is not None and h3.overflow
