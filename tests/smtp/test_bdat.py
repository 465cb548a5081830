"""CHUNKING / BDAT (RFC 3030)."""

from __future__ import annotations

from tests.smtp.helpers import Session


def test_bdat_chunks_make_one_message() -> None:
    """Chunks are concatenated verbatim (no dot processing); LAST commits with 250."""
    s = Session()
    s.ehlo()
    part1 = b"Subject: chunked\r\n\r\n.not stuffed\r\n"
    part2 = b"end\r\n"
    s.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.test>\r\n"
           + f"BDAT {len(part1)}\r\n".encode() + part1
           + f"BDAT {len(part2)} LAST\r\n".encode() + part2 + b"NOOP\r\n")
    assert s.codes() == [250, 250, 250, 250, 250]
    assert s.store.delivered[0].body.endswith(b"\r\n\r\n.not stuffed\r\nend\r\n")


def test_bdat_zero_last() -> None:
    """BDAT 0 LAST ends a chunked message."""
    s = Session()
    s.ehlo()
    body = b"Subject: x\r\n\r\nb\r\n"
    s.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.test>\r\n"
           + f"BDAT {len(body)}\r\n".encode() + body + b"BDAT 0 LAST\r\n")
    assert s.codes() == [250, 250, 250, 250]
    assert len(s.store.delivered) == 1


def test_bdat_without_transaction_reads_and_refuses_chunk() -> None:
    """BDAT without RCPT: the chunk bytes are consumed (not run as commands), then 503."""
    s = Session()
    s.ehlo()
    s.send(b"BDAT 6\r\nQUIT\r\nNOOP\r\n")
    r = s.replies()
    assert r[0].startswith("503") and r[1].startswith("250")
    assert not s.transport.disconnecting


def test_data_after_bdat_is_refused() -> None:
    """DATA inside a BDAT transaction is 503."""
    s = Session()
    s.ehlo()
    s.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.test>\r\nBDAT 3\r\nabcDATA\r\n")
    assert s.replies()[-1].startswith("503")


def test_bdat_size_limit() -> None:
    """A chunked message past the size limit is 552 at LAST and not stored."""
    from mxd.smtp.server import SMTPServerSettings

    s = Session(settings=SMTPServerSettings(max_message_size=50))
    s.ehlo()
    body = b"Subject: x\r\n\r\n" + b"y" * 100 + b"\r\n"
    s.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.test>\r\n"
           + f"BDAT {len(body)} LAST\r\n".encode() + body)
    assert s.replies()[-1].startswith("552 5.3.4")
    assert s.store.delivered == []
