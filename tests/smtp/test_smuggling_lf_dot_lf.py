"""Regression: SMTP smuggling (2023) with "\\n.\\n" (bare LF before and after the dot).

A sender hides a second message behind a sequence that some servers take as the end of
DATA.  mxd ends DATA only at CRLF.CRLF and refuses any message holding a bare CR or LF,
so the hidden commands are neither executed nor stored."""

from __future__ import annotations

from tests.smtp.helpers import Session

SMUGGLED = (
    "Subject: innocent\r\n\r\nhello"
    "\n.\n"
    "MAIL FROM:<ceo@example.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
    "From: ceo@example.test\r\nSubject: smuggled\r\n\r\npay now\r\n"
    ".\r\n"
)


def test_smuggled_message_is_refused_whole() -> None:
    """The whole DATA is one message, refused with 550 5.6.0; no second transaction runs."""
    s = Session()
    s.ehlo()
    s.send("MAIL FROM:<a@attacker.example>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    assert s.codes() == [250, 250, 354]
    s.send(SMUGGLED)
    replies = s.replies()
    assert len(replies) == 1
    assert replies[0].startswith("550 5.6.0")
    assert s.store.delivered == []
    assert all(b.aborted for b in s.store.blobs)


def test_smuggling_split_across_packets() -> None:
    """The same attack fed byte by byte gives the same single refusal."""
    s = Session()
    s.ehlo()
    s.send("MAIL FROM:<a@attacker.example>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    s.output()
    data = SMUGGLED.encode()
    for i in range(len(data)):
        s.send(data[i:i + 1])
    replies = s.replies()
    assert len(replies) == 1 and replies[0].startswith("550 5.6.0")
    assert s.store.delivered == []


def test_smuggling_via_bdat_is_refused() -> None:
    """BDAT carries no terminator, but the bare line ending still refuses the message."""
    s = Session()
    s.ehlo()
    body = SMUGGLED[: -len(".\r\n")].encode()
    s.send(f"MAIL FROM:<a@attacker.example>\r\nRCPT TO:<alice@example.test>\r\n"
           f"BDAT {len(body)} LAST\r\n".encode() + body)
    replies = s.replies()
    assert replies[-1].startswith("550 5.6.0")
    assert s.store.delivered == []
