"""Submission (RFC 6409): AUTH, sender ownership, added fields, queueing, REQUIRETLS."""

from __future__ import annotations

from tests.smtp.helpers import ALICE, BOB, Session


def submitted(role: str = "submission") -> Session:
    s = Session(role)
    s.output()
    s.start_tls()
    s.ehlo()
    s.auth_plain()
    assert s.codes() == [235]
    return s


def test_sender_must_be_owned() -> None:
    """MAIL FROM another account's address (or <>) is 553 5.7.1; one's own is 250."""
    s = submitted()
    s.send("MAIL FROM:<bob@example.test>\r\nMAIL FROM:<>\r\nMAIL FROM:<alice@example.test>\r\n")
    r = s.replies()
    assert r[0].startswith("553 5.7.1") and r[1].startswith("553 5.7.1")
    assert r[2].startswith("250")


def test_remote_recipients_are_queued_local_delivered() -> None:
    """Local recipients go to the store, remote ones to the queue, same body, one 250."""
    s = submitted()
    s.send("MAIL FROM:<alice@example.test> RET=HDRS ENVID=abc+2Bdef\r\n"
           "RCPT TO:<far@remote.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;far@remote.example\r\n"
           "RCPT TO:<alice@example.test>\r\nDATA\r\nSubject: s\r\n\r\nbody\r\n.\r\n")
    assert s.codes() == [250, 250, 250, 354, 250]
    (d,) = s.store.delivered
    assert [t.account_id for t in d.targets] == [ALICE.id]
    ((body, msg),) = s.store.queued
    assert body == d.body
    assert msg.mail_from == "alice@example.test"
    assert msg.ret == "HDRS" and msg.envid == "abc+def"
    (r,) = msg.recipients
    assert r.address == "far@remote.example"
    assert r.notify == frozenset({"SUCCESS", "FAILURE"})
    assert r.orcpt == "rfc822;far@remote.example"
    assert msg.sender_account == "alice"


def test_message_id_and_date_added_when_missing() -> None:
    """A submitted message without Message-ID/Date gets both; existing ones are kept."""
    s = submitted()
    s.send("MAIL FROM:<alice@example.test>\r\nRCPT TO:<far@remote.example>\r\nDATA\r\n"
           "Subject: s\r\n\r\nbody\r\n.\r\n")
    body = s.store.queued[0][0]
    head = body.split(b"\r\n\r\n")[0]
    assert b"\r\nDate: " in head and b"\r\nMessage-ID: <" in head and b"@mx.example.test>" in head
    s.send("MAIL FROM:<alice@example.test>\r\nRCPT TO:<far@remote.example>\r\nDATA\r\n"
           "Message-ID: <mine@x>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nb\r\n.\r\n")
    body2 = s.store.queued[1][0]
    assert body2.count(b"Message-ID:") == 1 and body2.count(b"Date:") == 1


def test_requiretls_recorded_on_queue_and_store() -> None:
    """MAIL FROM ... REQUIRETLS and a TLS-Required: No field are recorded on both copies;
    the Received field says (requiretls) and ESMTPSA."""
    s = submitted()
    s.send("MAIL FROM:<alice@example.test> REQUIRETLS\r\nRCPT TO:<far@remote.example>\r\n"
           "RCPT TO:<bob@example.test>\r\nDATA\r\nTLS-Required: No\r\nSubject: s\r\n\r\nb\r\n.\r\n")
    assert s.codes()[-1] == 250
    msg = s.store.queued[0][1]
    assert msg.requiretls and msg.tls_required_no
    props = s.store.delivered[0].props
    assert props.requiretls and props.tls_required_no
    assert b"with ESMTPSA (requiretls) (version=TLSv1.3" in s.store.delivered[0].body


def test_requiretls_unknown_without_tls() -> None:
    """Without TLS the REQUIRETLS parameter is not recognised (555 5.5.4)."""
    s = Session("submission", peer_ip="127.0.0.1",
                settings=__import__("mxd.smtp.server", fromlist=["x"]).SMTPServerSettings(
                    allow_plaintext_auth_on_loopback=True))
    s.ehlo()
    s.auth_plain()
    s.send("MAIL FROM:<alice@example.test> REQUIRETLS\r\n")
    r = s.replies()
    assert r[0].startswith("235")
    assert r[1].startswith("555 5.5.4")


def test_queue_failure_is_451() -> None:
    """If the store cannot take the message the client gets 451 4.3.0 and nothing is kept."""
    s = submitted()
    s.store.fail_next = True
    s.send("MAIL FROM:<alice@example.test>\r\nRCPT TO:<far@remote.example>\r\nDATA\r\nS: s\r\n\r\nb\r\n.\r\n")
    assert s.replies()[-1].startswith("451 4.3.0")
    assert s.store.queued == [] and s.outbound.wakes == 0
    assert s.store.blobs[-1].aborted


def test_mixed_recipients_are_accepted_in_one_call() -> None:
    """Local and remote recipients of one message go to the store in one ``accept`` (one
    transaction: local copies and queue rows together, under the queue id of the 250);
    the queue is woken once it is durable."""
    s = submitted()
    s.send("MAIL FROM:<alice@example.test>\r\nRCPT TO:<far@remote.example>\r\n"
           "RCPT TO:<bob@example.test>\r\nRCPT TO:<alice@example.test>\r\n"
           "DATA\r\nS: s\r\n\r\nb\r\n.\r\n")
    last = s.replies()[-1]
    assert last.startswith("250")
    (d,) = s.store.delivered
    assert sorted(t.account_id for t in d.targets) == [ALICE.id, BOB.id]
    ((body, msg),) = s.store.queued
    assert body == d.body and [r.address for r in msg.recipients] == ["far@remote.example"]
    (queue_id,) = s.store.queue_ids
    assert queue_id is not None and last.endswith(f"Message accepted as {queue_id}")
    assert s.outbound.wakes == 1


def test_mixed_recipients_refused_store_keeps_nothing() -> None:
    """Mixed local and remote recipients: a refused accept is 451 with no local copy and
    no queue row (there is no second step to undo), and the session goes on."""
    s = submitted()
    s.store.fail_next = True
    s.send("MAIL FROM:<alice@example.test>\r\nRCPT TO:<far@remote.example>\r\n"
           "RCPT TO:<bob@example.test>\r\nDATA\r\nS: s\r\n\r\nb\r\n.\r\n")
    assert s.replies()[-1].startswith("451 4.3.0")
    assert s.store.delivered == [] and s.store.queued == [] and s.store.live() == 0
    assert not s.transport.disconnecting


def test_submissions_role_works_after_handshake() -> None:
    """Port 465 (implicit TLS): no STARTTLS offered; AUTH after the handshake."""
    s = Session("submissions")
    s.output()
    s.start_tls()
    lines = s.ehlo()
    keywords = [line.split()[0] for line in lines[1:]]
    assert "STARTTLS" not in keywords and "AUTH" in keywords and "REQUIRETLS" in keywords
