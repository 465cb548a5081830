"""The SMTP state machine: greeting, EHLO, inbound delivery, ordering of replies."""

from __future__ import annotations

from tests.smtp.helpers import ALICE, BOB, Session, close

MSG = "Subject: hi\r\n\r\nhello\r\n.\r\n"


def test_greeting_and_ehlo_extensions_before_tls() -> None:
    """The greeting is 220 with the host name; EHLO lists the extensions, STARTTLS but not
    REQUIRETLS (RFC 8689 §4) and not AUTH on port 25; STARTTLS is not the last line."""
    s = Session()
    assert s.output().startswith(b"220 mx.example.test ")
    lines = s.ehlo()
    keywords = [line.split()[0] for line in lines[1:]]
    for ext in ("PIPELINING", "SIZE", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES",
                "CHUNKING", "DSN", "STARTTLS", "LIMITS"):
        assert ext in keywords
    assert "REQUIRETLS" not in keywords
    assert "AUTH" not in keywords
    assert keywords[-1] != "STARTTLS"


def test_requiretls_advertised_only_after_tls() -> None:
    """After the TLS handshake EHLO offers REQUIRETLS and no longer STARTTLS."""
    s = Session()
    s.output()
    s.start_tls()
    keywords = [line.split()[0] for line in s.ehlo()[1:]]
    assert "REQUIRETLS" in keywords
    assert "STARTTLS" not in keywords


def test_inbound_delivery_to_inbox_with_received() -> None:
    """A message to a local user is delivered once into INBOX with a Received field first."""
    s = Session()
    s.ehlo()
    s.send("MAIL FROM:<x@remote.example>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    assert s.codes() == [250, 250, 354]
    s.send(MSG)
    assert s.codes() == [250]
    (d,) = s.store.delivered
    assert [t.account_id for t in d.targets] == [ALICE.id]
    assert d.targets[0].mailbox == "INBOX"
    assert d.body.startswith(b"Received: from client.example ([192.0.2.7])\r\n\tby mx.example.test")
    assert b"with ESMTP\r\n" in d.body
    assert b"for <alice@example.test>;" in d.body
    assert d.body.endswith(b"Subject: hi\r\n\r\nhello\r\n")
    assert d.props.mail_from == "x@remote.example"
    assert d.props.received_via == "ESMTP"


def test_two_addresses_of_one_account_deliver_once() -> None:
    """Two recipient addresses of the same account make one Delivery target; two accounts two."""
    s = Session()
    s.ehlo()
    s.send("MAIL FROM:<>\r\nRCPT TO:<bob@example.test>\r\nRCPT TO:<robert@example.test>\r\n"
           "RCPT TO:<alice@example.test>\r\nDATA\r\n" + MSG)
    assert s.codes() == [250, 250, 250, 250, 354, 250]
    (d,) = s.store.delivered
    assert sorted(t.account_id for t in d.targets) == sorted([ALICE.id, BOB.id])


def test_unknown_local_user_is_550_511() -> None:
    """RCPT to an unknown user of a local domain answers 550 5.1.1 at RCPT time."""
    s = Session()
    s.ehlo()
    s.send("MAIL FROM:<x@remote.example>\r\nRCPT TO:<nobody@example.test>\r\n")
    r = s.replies()
    assert r[1].startswith("550 5.1.1")


def test_sequence_errors() -> None:
    """MAIL before EHLO, RCPT before MAIL and DATA before RCPT are 503 5.5.1."""
    s = Session()
    s.output()
    s.send("MAIL FROM:<a@b.example>\r\n")
    assert s.replies()[0].startswith("503 5.5.1")
    s.ehlo()
    s.send("RCPT TO:<alice@example.test>\r\nDATA\r\n")
    assert [r[:9] for r in s.replies()] == ["503 5.5.1", "503 5.5.1"]
    s.send("MAIL FROM:<a@b.example>\r\nDATA\r\n")
    assert [r[:3] for r in s.replies()] == ["250", "503"]


def test_rset_and_noop_and_vrfy_and_quit() -> None:
    """RSET ends the transaction, NOOP is 250, VRFY 252, QUIT 221 and closes."""
    s = Session()
    s.ehlo()
    s.send("MAIL FROM:<a@b.example>\r\nRSET\r\nRCPT TO:<alice@example.test>\r\nNOOP\r\n"
           "VRFY alice\r\nQUIT\r\n")
    assert s.codes() == [250, 250, 503, 250, 252, 221]
    assert s.transport.disconnecting


def test_unknown_command_and_bad_syntax() -> None:
    """An unknown verb is 500 5.5.1; a bad path is 501."""
    s = Session()
    s.ehlo()
    s.send("FROB\r\nMAIL FROM:alice@example.test\r\n")
    r = s.replies()
    assert r[0].startswith("500 5.5.1")
    assert r[1].startswith("501")


def test_dot_stuffing_removed() -> None:
    """RFC 5321 §4.5.2: a leading dot on a data line is removed before storage."""
    s = Session()
    s.ehlo()
    s.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
           "Subject: x\r\n\r\n..leading\r\n.\r\n")
    assert s.codes()[-1] == 250
    assert s.store.delivered[0].body.endswith(b"\r\n\r\n.leading\r\n")


def test_store_failure_answers_451_and_stores_nothing() -> None:
    """A failing deliver answers 451 4.3.0; the session continues."""
    s = Session()
    s.store.fail_next = True
    s.ehlo()
    s.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n" + MSG)
    r = s.replies()
    assert r[-1].startswith("451 4.3.0")
    assert s.store.delivered == []
    assert s.store.blobs[0].aborted
    s.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n" + MSG)
    assert s.codes()[-1] == 250


def test_directory_failure_is_temporary() -> None:
    """A failing recipient lookup answers 451 4.4.3, not 550."""
    s = Session()
    s.ehlo()
    s.directory.fail = True
    s.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.test>\r\n")
    assert s.replies()[-1].startswith("451 4.4.3")


def test_connection_lost_mid_data_aborts_blob() -> None:
    """A client vanishing in the middle of DATA leaves no stored message and no open blob."""
    s = Session()
    s.ehlo()
    s.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nSubject: x\r\n")
    close(s)
    assert s.store.blobs[0].aborted
    assert s.store.delivered == []


def test_postmaster_without_domain_is_accepted() -> None:
    """RFC 5321 §4.5.1: RCPT TO:<Postmaster> is accepted and delivered locally."""
    s = Session()
    s.ehlo()
    s.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<Postmaster>\r\nDATA\r\n" + MSG)
    assert s.codes() == [250, 250, 354, 250]
    assert s.directory.lookups == ["postmaster@mx.example.test"]


def test_postmaster_goes_to_parent_domain_of_hostname() -> None:
    """When the host name is not a local domain, <Postmaster> uses its closest local parent."""
    s = Session()
    s.directory.domains.discard("mx.example.test")
    s.ehlo()
    s.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<postmaster>\r\n")
    assert s.codes() == [250, 250]
    assert s.directory.lookups == ["postmaster@example.test"]


def test_smtputf8_address_needs_the_parameter() -> None:
    """RFC 6531: a UTF-8 recipient is 553 5.6.7 without SMTPUTF8 and accepted with it."""
    s = Session()
    s.ehlo()
    s.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<用户@bücher.test>\r\nRSET\r\n")
    assert s.replies()[1].startswith("553 5.6.7")
    s.send("MAIL FROM:<发件人@例子.test> SMTPUTF8\r\nRCPT TO:<用户@bücher.test>\r\nDATA\r\n" + MSG)
    assert s.codes() == [250, 250, 354, 250]
    assert b"with UTF8SMTP\r\n" in s.store.delivered[0].body


def test_helo_gives_smtp_protocol() -> None:
    """After HELO (not EHLO) the Received field says "with SMTP"."""
    s = Session()
    s.send("HELO old.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n" + MSG)
    assert s.codes() == [220, 250, 250, 250, 354, 250]
    assert b"with SMTP\r\n" in s.store.delivered[0].body


def test_parameters_refused_after_helo() -> None:
    """RFC 5321 §4.1.1.11: after HELO (no extensions announced) MAIL/RCPT parameters are 555."""
    s = Session()
    s.send("HELO old.example\r\nMAIL FROM:<a@b.example> SIZE=10\r\nMAIL FROM:<a@b.example>\r\n"
           "RCPT TO:<alice@example.test> NOTIFY=NEVER\r\n")
    assert s.codes() == [220, 250, 555, 250, 555]


def test_internal_error_costs_one_reply() -> None:
    """A failure inside a command handler answers 451 4.3.0; the session continues."""
    s = Session()
    s.ehlo()

    def broken() -> object:
        raise RuntimeError("bug")

    s.store.new_blob = broken  # type: ignore[method-assign,assignment]
    s.proto.run_blocking = lambda f: None  # type: ignore[assignment,return-value]
    s.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nNOOP\r\n")
    r = s.replies()
    assert r[-2].startswith("451 4.3.0") and r[-1].startswith("250")
    assert not s.transport.disconnecting


def test_disconnect_during_commit_leaves_the_body_to_the_store() -> None:
    """A client vanishing while the store commits does not abort the body file; the
    commit completes (RFC 5321 §6.1 prefers a duplicate to a loss)."""
    s = Session()
    s.store.hold = True
    s.ehlo()
    s.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n" + MSG)
    close(s)
    assert not s.store.blobs[0].aborted
    s.store.release()
    assert len(s.store.delivered) == 1


def test_close_while_paused_resumes_reading_and_has_a_deadline() -> None:
    """A session closed while a lookup has reading paused (here: the command timeout)
    reads again, so that a TLS transport can see the peer's close_notify or end of
    stream and finish closing; a peer that never closes is aborted after close_timeout."""
    s = Session()
    s.ehlo()
    s.directory.hold = True
    s.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.test>\r\n")
    assert s.transport.producerState == "producing"  # held in the session's buffer
    s.send("NOOP\r\n" * (s.proto.PAUSE_BUFFER // 6 + 1))  # too much held: reading stops
    assert s.transport.producerState == "paused"
    s.clock.advance(s.settings.command_timeout)
    assert s.codes()[-1] == 421
    assert s.transport.disconnecting
    assert s.transport.producerState == "producing"
    aborted: list[bool] = []
    s.transport.abortConnection = lambda: aborted.append(True)  # type: ignore[method-assign]
    s.clock.advance(s.settings.close_timeout - 1)
    assert not aborted
    s.clock.advance(1)
    assert aborted == [True]


def test_requiretls_switched_off_is_not_offered_nor_accepted() -> None:
    """[smtp] requiretls = false: EHLO after TLS lists no REQUIRETLS and MAIL FROM with the
    parameter is refused as unknown (555 5.5.4), as without TLS."""
    from mxd.smtp.session import SMTPServerSettings

    s = Session(settings=SMTPServerSettings(requiretls=False))
    s.output()
    s.start_tls()
    lines = s.ehlo()
    keywords = [line.split()[0] for line in lines[1:]]
    assert "REQUIRETLS" not in keywords and "LIMITS" in keywords
    s.send("MAIL FROM:<x@remote.example> REQUIRETLS\r\n")
    assert s.replies()[0].startswith("555 5.5.4")
