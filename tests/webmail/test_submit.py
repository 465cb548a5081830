"""Sending from the web client goes through the submission session (mxd.smtp.inprocess):
sender rights, DKIM signing, REQUIRETLS, TLS-Required: No and the queue; the Sent copy is
kept with \\Seen."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import task
from twisted.internet.defer import Deferred, succeed

from mxd.dns.testing import FakeResolver
from mxd.msgauth.dkim import Result, verify_message
from mxd.msgauth.dkimkeys import generate_key
from mxd.msgauth.signing import KeyRing, SubmissionSigner
from mxd.smtp.inprocess import InProcessSubmission, SubmissionRefused
from mxd.smtp.session import SMTPServerSettings
from mxd.store.interfaces import SpecialUse
from mxd.webmail.compose import Attachment, ComposeError, ComposeForm
from mxd.webmail.submit import TLSChoice, WebSubmitter
from tests.smtp.helpers import ALICE, FakeDirectory, FakeOutbound, FakeStore


class World:
    def __init__(self, tmp_path: Path, *, sign: bool = False) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_796_000_000)
        self.store = FakeStore()
        self.outbound = FakeOutbound()
        self.key = generate_key(tmp_path / "k", "example.test", "s1", "ed25519")
        checker = SubmissionSigner(KeyRing({"example.test": [self.key]}), self.clock) \
            if sign else None
        self.submission = InProcessSubmission(
            settings=SMTPServerSettings(), store=self.store, directory=FakeDirectory(),
            outbound=self.outbound, clock=self.clock, hostname="mx.example.test",
            checker=checker)
        self.submitter = WebSubmitter(self.submission, self.store, clock=self.clock,
                                      run_blocking=lambda f: succeed(f()))

    def send(self, form: ComposeForm, tls: TLSChoice = TLSChoice.DEFAULT, *,
             protected: bool = True) -> Any:
        d = Deferred.fromCoroutine(self.submitter.send(
            ALICE, form, tls, client_ip="203.0.113.9", protected=protected))
        failures: list[Any] = []
        d.addErrback(failures.append)
        if failures:
            failures[0].raiseException()
        return d.result


FORM = ComposeForm(from_addr="Alice <alice@example.test>", to="far@remote.example",
                   cc="bob@example.test", subject="hello", body="hi there",
                   attachments=(Attachment("a.bin", "application/octet-stream",
                                           bytes(range(256))),))


def _sent_box(w: World) -> Any:
    boxes = w.store.run_now(w.store.list_mailboxes(ALICE.id))
    return next(b for b in boxes if b.special_use == SpecialUse.SENT)


def test_message_takes_the_submission_path(tmp_path: Path) -> None:
    """One accept: the local recipient's copy and the queue row; Received names the web
    client's address, the queue knows the sending account, the queue is woken; the Sent
    copy is in \\Sent with \\Seen."""
    w = World(tmp_path)
    result = w.send(FORM)
    ((body, msg),) = w.store.queued
    assert msg.mail_from == "alice@example.test" and msg.sender_account == "alice"
    assert [r.address for r in msg.recipients] == ["far@remote.example"]
    assert not msg.requiretls and not msg.tls_required_no
    (d,) = w.store.delivered
    assert d.body == body  # the local copy (bob) and the queued one are the same bytes
    assert body.startswith(b"Received: from webmail ([203.0.113.9])")
    assert result.queue_id and f"id {result.queue_id}".encode() in body.split(b"\r\n\r\n")[0] \
        or result.queue_id.encode() in body
    assert w.outbound.wakes == 1
    box = _sent_box(w)
    (info,) = w.store.run_now(w.store.list_messages(box.id))
    assert "\\Seen" in info.flags and result.sent_uid == info.uid
    copy = w.store.bodies[info.blob_id]
    parsed = email.message_from_bytes(copy, policy=email.policy.default)
    assert parsed["Message-ID"] == result.message_id and b"Received:" not in copy
    (att,) = parsed.iter_attachments()  # type: ignore[attr-defined]
    assert att.get_content() == bytes(range(256))


def test_requiretls_and_tls_required_no(tmp_path: Path) -> None:
    """"requiretls" is MAIL FROM ... REQUIRETLS (RFC 8689 §4.1), recorded with the
    queued message; "insecure" adds TLS-Required: No (§5), which the session notes."""
    w = World(tmp_path)
    w.send(FORM, TLSChoice.REQUIRETLS)
    w.send(FORM, TLSChoice.INSECURE)
    (b1, m1), (b2, m2) = w.store.queued
    assert m1.requiretls and not m1.tls_required_no and b"TLS-Required" not in b1
    assert m2.tls_required_no and not m2.requiretls and b"\r\nTLS-Required: No\r\n" in b2


def test_requiretls_needs_a_protected_channel(tmp_path: Path) -> None:
    """A message that came over an unprotected channel is not a TLS session: REQUIRETLS
    is refused (RFC 8689 §4.1) and nothing is queued or saved."""
    w = World(tmp_path)
    with pytest.raises(SubmissionRefused) as e:
        w.send(FORM, TLSChoice.REQUIRETLS, protected=False)
    assert e.value.stage == "MAIL" and e.value.code == 555
    assert w.store.queued == [] and w.store.run_now(
        w.store.list_messages(_sent_box(w).id)) == []


def test_dkim_signed_when_configured(tmp_path: Path) -> None:
    """The submission checker signs the message (DKIM, ed25519) as on port 587."""
    w = World(tmp_path, sign=True)
    w.send(FORM)
    ((body, _),) = w.store.queued
    resolver = FakeResolver()
    resolver.add(w.key.dns_name, "TXT", [w.key.txt.encode()])
    (sig,) = verify_message(resolver, body.split(b"\r\n", 1)[1], w.clock.seconds()).result
    assert sig.result is Result.PASS and sig.domain == "example.test"


def test_sender_rights_checked_by_the_session(tmp_path: Path) -> None:
    """An address the account does not own is refused before anything is queued (the
    composer checks it first; the session's own check holds even if it did not)."""
    w = World(tmp_path)
    with pytest.raises(ComposeError):
        w.send(ComposeForm(from_addr="bob@example.test", to="x@remote.example"))
    d = Deferred.fromCoroutine(w.submission.submit(
        account="alice", mail_from="bob@example.test", recipients=["x@remote.example"],
        data=b"Subject: x\r\n\r\nx\r\n", client_ip="127.0.0.1", protected=True))
    failures: list[Any] = []
    d.addErrback(failures.append)
    (f,) = failures
    assert f.check(SubmissionRefused) and f.value.code == 553 and f.value.stage == "MAIL"
    assert w.store.queued == []


def test_local_recipient_unknown_refused(tmp_path: Path) -> None:
    """An unknown local recipient is the session's 550 at RCPT, shown to the user."""
    w = World(tmp_path)
    with pytest.raises(SubmissionRefused) as e:
        w.send(ComposeForm(from_addr="alice@example.test", to="nobody@example.test"))
    assert e.value.stage == "RCPT" and e.value.code == 550 and w.store.queued == []


def test_sent_copy_keeps_bcc(tmp_path: Path) -> None:
    """Bcc goes to the envelope only; the Sent copy shows it to its owner."""
    w = World(tmp_path)
    w.send(ComposeForm(from_addr="alice@example.test", to="a@remote.example",
                       bcc="hidden@remote.example"))
    ((body, msg),) = w.store.queued
    assert [r.address for r in msg.recipients] == ["a@remote.example", "hidden@remote.example"]
    assert b"hidden@" not in body
    (info,) = w.store.run_now(w.store.list_messages(_sent_box(w).id))
    assert b"Bcc: hidden@remote.example" in w.store.bodies[info.blob_id]


def test_large_message_fed_in_pieces_with_reactor_turns(tmp_path: Path) -> None:
    """A message larger than one piece reaches the store intact, handed over in 64 KiB
    pieces with a turn of the clock between them (the reactor is not held)."""
    from mxd.smtp import inprocess

    w = World(tmp_path)
    data = bytes(range(256)) * 1200  # 300 KiB: base64 makes it about 400 KiB
    turns: list[float] = []
    call_later = w.clock.callLater

    def counting(delay: float, fn: Any, *a: Any, **kw: Any) -> Any:
        if delay == 0:
            turns.append(delay)
        return call_later(delay, fn, *a, **kw)

    w.clock.callLater = counting  # type: ignore[method-assign]
    d = Deferred.fromCoroutine(w.submitter.send(
        ALICE, ComposeForm(from_addr="alice@example.test", to="far@remote.example",
                           attachments=(Attachment("big.bin", "application/x", data),)),
        TLSChoice.DEFAULT, client_ip="127.0.0.1", protected=True))
    for _ in range(100):
        if d.called:
            break
        w.clock.advance(0)
    assert d.result.queue_id and len(turns) >= 400_000 // inprocess.CHUNK - 1
    ((body, _),) = w.store.queued
    (att,) = email.message_from_bytes(body, policy=email.policy.default).iter_attachments()
    assert att.get_content() == data


@pytest.mark.parametrize("path", ["a@b.example> RCPT TO:<x@y.example", "a@b\r\nRSET", "",
                                  "a b@c.example"])
def test_command_injection_through_addresses_refused(tmp_path: Path, path: str) -> None:
    """The in-process session takes addresses only that cannot leave MAIL FROM:<...>."""
    w = World(tmp_path)
    d = Deferred.fromCoroutine(w.submission.submit(
        account="alice", mail_from="alice@example.test", recipients=[path],
        data=b"Subject: x\r\n\r\nx\r\n", client_ip="127.0.0.1", protected=True))
    failures: list[Any] = []
    d.addErrback(failures.append)
    (f,) = failures
    assert f.check(ValueError) and w.store.queued == []
