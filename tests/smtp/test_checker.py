"""The message-authentication seam on port 25: called before acceptance, lines prepended."""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed

from mxd.smtp.interfaces import SessionInfo
from tests.smtp.helpers import Session


class RecordingChecker:
    def __init__(self, lines: list[str], hold: bool = False, error: bool = False) -> None:
        self.lines = lines
        self.hold = hold
        self.error = error
        self.calls: list[tuple[SessionInfo, bytes]] = []
        self.pending: Deferred[list[str]] | None = None

    def check(self, session: SessionInfo, headers: bytes) -> Deferred[list[str]]:
        self.calls.append((session, headers))
        if self.error:
            return fail(RuntimeError("dns exploded"))
        if self.hold:
            self.pending = Deferred()
            return self.pending
        return succeed(self.lines)


AR = "Authentication-Results: mx.example.test; spf=pass smtp.mailfrom=b.example"


def test_checker_lines_below_received() -> None:
    """The checker sees the envelope and headers; its lines follow the Received field."""
    chk = RecordingChecker([AR])
    s = Session(checker=chk)
    s.ehlo()
    s.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
           "Subject: x\r\n\r\nbody\r\n.\r\n")
    assert s.codes()[-1] == 250
    ((info, headers),) = chk.calls
    assert info.mail_from == "a@b.example" and info.recipients == ("alice@example.test",)
    assert info.remote_ip == "192.0.2.7" and info.helo == "client.example"
    assert headers == b"Subject: x\r\n"
    body = s.store.delivered[0].body
    assert body.startswith(b"Received: ")
    assert (AR.encode() + b"\r\nSubject: x\r\n\r\nbody\r\n") in body


def test_slow_checker_holds_the_reply() -> None:
    """While the checker runs no 250 is sent; after it fires the message is committed."""
    chk = RecordingChecker([AR], hold=True)
    s = Session(checker=chk)
    s.ehlo()
    s.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
           "Subject: x\r\n\r\nbody\r\nmore\r\n.\r\nNOOP\r\n")
    assert s.codes() == [250, 250, 354]
    assert chk.pending is not None
    chk.pending.callback([AR])
    assert s.codes() == [250, 250]
    assert s.store.delivered[0].body.endswith(b"Subject: x\r\n\r\nbody\r\nmore\r\n")


def test_slow_checker_mid_stream() -> None:
    """Body bytes that arrive while the checker runs are kept in order."""
    chk = RecordingChecker([AR], hold=True)
    s = Session(checker=chk)
    s.ehlo()
    s.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nSubject: x\r\n\r\none\r\n")
    s.send("two\r\n.\r\n")
    assert chk.pending is not None
    chk.pending.callback([])
    assert s.codes()[-1] == 250
    assert s.store.delivered[0].body.endswith(b"Subject: x\r\n\r\none\r\ntwo\r\n")


def test_checker_failure_does_not_lose_mail() -> None:
    """A failing checker is logged; the message is accepted without added lines."""
    s = Session(checker=RecordingChecker([], error=True))
    s.ehlo()
    s.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nS: x\r\n\r\nb\r\n.\r\n")
    assert s.codes()[-1] == 250
    assert b"Authentication-Results" not in s.store.delivered[0].body


def test_checker_not_used_on_submission() -> None:
    """Submitted mail is not run through the inbound checks."""
    chk = RecordingChecker([AR])
    s = Session("submission", checker=chk)
    s.output()
    s.start_tls()
    s.ehlo()
    s.auth_plain()
    s.send("MAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\nS: x\r\n\r\nb\r\n.\r\n")
    assert s.codes()[-1] == 250
    assert chk.calls == []
