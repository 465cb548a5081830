"""Regression: SMTP smuggling (2023), every end-of-data look-alike.

A sender hides a second message behind a sequence that some servers take as the end of
DATA ("\\n.\\n", "\\r.\\r", "\\n.\\r\\n", "\\r\\n.\\n", "\\r\\n.\\r").  mxd ends DATA only at
CRLF.CRLF and refuses any message holding a bare CR or LF, so the hidden commands are
neither executed nor stored."""

from __future__ import annotations

import pytest

from tests.smtp.helpers import Session

FAKE_ENDS = ["\n.\n", "\r.\r", "\n.\r\n", "\r\n.\n", "\r\n.\r"]


def smuggled(fake_end: str) -> str:
    return ("Subject: innocent\r\n\r\nhello" + fake_end
            + "MAIL FROM:<ceo@example.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
            "From: ceo@example.test\r\nSubject: smuggled\r\n\r\npay now\r\n.\r\n")


def _in_data() -> Session:
    s = Session()
    s.ehlo()
    s.send("MAIL FROM:<a@attacker.example>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    assert s.codes() == [250, 250, 354]
    return s


@pytest.mark.parametrize("fake_end", FAKE_ENDS, ids=repr)
def test_smuggled_message_is_refused_whole(fake_end: str) -> None:
    """The whole DATA is one message, refused with 550 5.6.0; no second transaction runs."""
    s = _in_data()
    s.send(smuggled(fake_end))
    replies = s.replies()
    assert len(replies) == 1
    assert replies[0].startswith("550 5.6.0")
    assert s.store.delivered == []
    assert all(b.aborted for b in s.store.blobs)


@pytest.mark.parametrize("fake_end", FAKE_ENDS, ids=repr)
def test_smuggling_split_across_packets(fake_end: str) -> None:
    """The same attack fed byte by byte gives the same single refusal."""
    s = _in_data()
    data = smuggled(fake_end).encode()
    for i in range(len(data)):
        s.send(data[i:i + 1])
    replies = s.replies()
    assert len(replies) == 1 and replies[0].startswith("550 5.6.0")
    assert s.store.delivered == []


@pytest.mark.parametrize("fake_end", FAKE_ENDS, ids=repr)
def test_smuggling_via_bdat_is_refused(fake_end: str) -> None:
    """BDAT carries no terminator, but the bare line ending still refuses the message."""
    s = Session()
    s.ehlo()
    body = smuggled(fake_end)[: -len(".\r\n")].encode()
    s.send(f"MAIL FROM:<a@attacker.example>\r\nRCPT TO:<alice@example.test>\r\n"
           f"BDAT {len(body)} LAST\r\n".encode() + body)
    replies = s.replies()
    assert replies[-1].startswith("550 5.6.0")
    assert s.store.delivered == []
