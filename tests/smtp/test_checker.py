"""The message-check seam: sees headers and body, decides at the end of the data.

On port 25 it is where SPF/DKIM/DMARC/iprev run; on submission where DKIM signs.  Its
fields go on top of the message below Received; its verdict can refuse the message, send
local copies to Junk, or name the client's verified host for Received.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed

from mxd.smtp.data import Spool
from mxd.smtp.interfaces import SessionInfo, Verdict
from mxd.smtp.replies import Reply
from tests.smtp.helpers import Session


class RecordingCheck:
    def __init__(self, owner: RecordingChecker) -> None:
        self.owner = owner
        self.body = bytearray()

    def feed(self, data: bytes) -> None:
        self.body += data

    def finish(self) -> Deferred[Verdict]:
        self.owner.bodies.append(bytes(self.body))
        if self.owner.error:
            return fail(RuntimeError("dns exploded"))
        if self.owner.hold:
            self.owner.pending = Deferred()
            return self.owner.pending
        return succeed(self.owner.verdict)


class RecordingChecker:
    def __init__(self, verdict: Verdict | None = None, hold: bool = False,
                 error: bool = False, skip: bool = False) -> None:
        self.verdict = verdict or Verdict()
        self.hold = hold
        self.error = error
        self.skip = skip
        self.calls: list[tuple[SessionInfo, bytes]] = []
        self.bodies: list[bytes] = []
        self.pending: Deferred[Verdict] | None = None

    def begin(self, session: SessionInfo, headers: bytes) -> RecordingCheck | None:
        self.calls.append((session, headers))
        return None if self.skip else RecordingCheck(self)


AR = "Authentication-Results: mx.example.test; spf=pass smtp.mailfrom=b.example"
TX = "MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"


def test_fields_below_received_and_body_seen() -> None:
    """The check sees envelope, headers and body; its fields follow the Received field."""
    chk = RecordingChecker(Verdict(fields=(AR,)))
    s = Session(checker=chk)
    s.ehlo()
    s.send(TX + "Subject: x\r\n\r\nbody\r\n..dot\r\n.\r\n")
    assert s.codes()[-1] == 250
    ((info, headers),) = chk.calls
    assert info.mail_from == "a@b.example" and info.recipients == ("alice@example.test",)
    assert info.remote_ip == "192.0.2.7" and info.helo == "client.example"
    assert headers == b"Subject: x\r\n"
    assert chk.bodies == [b"body\r\n.dot\r\n"]
    body = s.store.delivered[0].body
    assert body.startswith(b"Received: ")
    assert body.endswith(AR.encode() + b"\r\nSubject: x\r\n\r\nbody\r\n.dot\r\n")


def test_slow_check_holds_the_reply() -> None:
    """While the check decides no 250 is sent and pipelined commands wait."""
    chk = RecordingChecker(Verdict(fields=(AR,)), hold=True)
    s = Session(checker=chk)
    s.ehlo()
    s.send(TX + "Subject: x\r\n\r\nbody\r\nmore\r\n.\r\nNOOP\r\n")
    assert s.codes() == [250, 250, 354]
    assert chk.pending is not None
    chk.pending.callback(Verdict(fields=(AR,)))
    assert s.codes() == [250, 250]
    assert s.store.delivered[0].body.endswith(b"Subject: x\r\n\r\nbody\r\nmore\r\n")


def test_reject_verdict_refuses_and_stores_nothing() -> None:
    """A verdict with a reply refuses the message at the end of data (DMARC p=reject)."""
    reply = Reply(550, "5.7.1", "DMARC policy of example.com says reject")
    s = Session(checker=RecordingChecker(Verdict(reject=reply)))
    s.ehlo()
    s.send(TX + "From: x@example.com\r\n\r\nspoof\r\n.\r\n")
    assert s.replies()[-1].startswith("550 5.7.1 DMARC policy")
    assert s.store.delivered == []
    s.send("MAIL FROM:<a@b.example>\r\n")
    assert s.codes()[-1] == 250  # the session goes on


def test_junk_verdict_delivers_to_junk() -> None:
    """A verdict naming a mailbox sends local copies there (DMARC p=quarantine)."""
    s = Session(checker=RecordingChecker(Verdict(mailbox="Junk")))
    s.ehlo()
    s.send(TX + "Subject: q\r\n\r\nb\r\n.\r\n")
    assert s.codes()[-1] == 250
    assert [t.mailbox for t in s.store.delivered[0].targets] == ["Junk"]


def test_remote_host_and_replaced_headers() -> None:
    """Received names the verified reverse name; a replaced header section is stored."""
    chk = RecordingChecker(Verdict(remote_host="mail.b.example",
                                   header_section=b"Subject: clean\r\n"))
    s = Session(checker=chk)
    s.ehlo()
    s.send(TX + "Authentication-Results: mx.example.test; spf=pass\r\nSubject: x\r\n\r\nb\r\n.\r\n")
    body = s.store.delivered[0].body
    assert b"from client.example (mail.b.example [192.0.2.7])" in body
    assert b"Authentication-Results" not in body and b"Subject: clean\r\n\r\nb\r\n" in body


def test_check_failure_does_not_lose_mail() -> None:
    """A failing check is logged; the message is accepted unchanged."""
    s = Session(checker=RecordingChecker(error=True))
    s.ehlo()
    s.send(TX + "S: x\r\n\r\nb\r\n.\r\n")
    assert s.codes()[-1] == 250
    assert s.store.delivered[0].body.endswith(b"S: x\r\n\r\nb\r\n")


def test_no_check_streams_straight_to_the_store() -> None:
    """begin() returning None writes the body as it arrives (no spool)."""
    chk = RecordingChecker(skip=True)
    s = Session(checker=chk)
    s.ehlo()
    s.send(TX + "S: x\r\n\r\nbody\r\n")
    assert s.store.blobs[-1].data.endswith(b"S: x\r\n\r\nbody\r\n")
    s.send(".\r\n")
    assert s.codes()[-1] == 250 and chk.bodies == []


def test_bdat_chunks_reach_the_check() -> None:
    """With CHUNKING the body is fed across chunks, in order."""
    chk = RecordingChecker(Verdict(fields=(AR,)))
    s = Session(checker=chk)
    s.ehlo()
    s.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.test>\r\n")
    s.send("BDAT 14\r\nSubject: x\r\n\r\n")
    s.send("BDAT 6 LAST\r\nbo\r\ndy")
    assert s.codes()[-1] == 250
    assert chk.bodies == [b"bo\r\ndy"]
    assert s.store.delivered[0].body.endswith(AR.encode() + b"\r\nSubject: x\r\n\r\nbo\r\ndy")


def test_submission_check_sees_added_date_and_message_id() -> None:
    """On submission the Date and Message-ID the server adds are there before signing."""
    chk = RecordingChecker(Verdict(fields=("DKIM-Signature: v=1; x",)))
    s = Session("submission", checker=chk)
    s.output()
    s.start_tls()
    s.ehlo()
    s.auth_plain()
    s.send("MAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\nS: x\r\n\r\nb\r\n.\r\n")
    assert s.codes()[-1] == 250
    ((info, headers),) = chk.calls
    assert info.role == "submission" and b"\r\nDate: " in headers and b"Message-ID: <" in headers
    stored = s.store.delivered[0].body
    assert stored.index(b"DKIM-Signature") < stored.index(b"Date: ")


def test_spool_moves_to_a_file_past_its_limit() -> None:
    """The spool keeps small bodies in memory and big ones in a temporary file."""
    spool = Spool(memory_limit=10)
    spool.write(b"12345")
    assert not spool.on_disk
    spool.write(b"678901234")
    assert spool.on_disk
    out = bytearray()
    spool.copy_to(out.extend, chunk=3)
    assert bytes(out) == b"12345678901234"
    spool.close()


def test_big_spooled_body_copied_off_the_reactor_thread() -> None:
    """A body that went to the spool's file is copied into the store by run_blocking;
    the reply waits for the copy, and the message arrives whole."""
    ran: list[object] = []
    pending: list[Deferred[object]] = []

    def run_blocking(fn):  # type: ignore[no-untyped-def]
        ran.append(fn)
        d: Deferred[object] = Deferred()
        pending.append(d)
        return d

    s = Session(checker=RecordingChecker(Verdict(fields=(AR,))), run_blocking=run_blocking)
    s.ehlo()
    body = "x" * 998 + "\r\n"
    s.send(TX)
    while pending:  # the blob is created through run_blocking too
        fn, d = ran.pop(0), pending.pop(0)
        d.callback(fn())  # type: ignore[operator]
    s.send("Subject: big\r\n\r\n" + body * 1200 + ".\r\nNOOP\r\n")
    codes = s.codes()
    assert codes == [250, 250, 354]  # waiting for the copy; NOOP not answered yet
    fn, d = ran.pop(0), pending.pop(0)
    d.callback(fn())  # type: ignore[operator]
    assert s.codes() == [250, 250]
    stored = s.store.delivered[0].body
    assert stored.endswith(("Subject: big\r\n\r\n" + body * 1200).encode())
