"""mxd.smtp.client against the RFC rules it must follow, one scripted server per rule."""

from __future__ import annotations

import io
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.python.failure import Failure

from mxd.smtp.client import (
    ClientMessage,
    ClientRecipient,
    SMTPClientError,
    SMTPProtocolError,
    SMTPReplyError,
    TransactionResult,
)
from tests.smtp_client.test_client import EHLO_FULL, Session, _result, _started

ONE = ClientMessage("a@x.test", (ClientRecipient("b@mx.test"),))
TWO = ClientMessage("a@x.test", (ClientRecipient("b@mx.test"), ClientRecipient("c@mx.test")))


def test_reply_line_without_text_is_a_reply() -> None:
    """RFC 5321 §4.2: the text after the code is optional: "220" CRLF is a complete reply."""
    s = Session()
    d = s.client.start()
    s.reply(b"220\r\n")
    assert s.written() == ["EHLO me.test"]
    s.reply(b"250-mx.test\r\n250-PIPELINING\r\n250\r\n")
    assert _result(d) is None
    assert s.client.has("PIPELINING")


def test_plaintext_after_the_starttls_reply_is_refused() -> None:
    """RFC 3207 §4.2/§6: replies sent in plaintext behind the STARTTLS 220 (response
    injection) are never taken as the answer to the EHLO sent over TLS."""
    started: list[Any] = []
    s = Session()
    s.transport.startTLS = started.append  # type: ignore[attr-defined]
    d = s.client.start()
    s.reply(b"220 hi\r\n")
    s.written()
    s.reply(b"250-mx.test\r\n250 STARTTLS\r\n")
    assert s.written() == ["STARTTLS"]
    s.reply(b"220 go ahead\r\n250-evil.test\r\n250 AUTH PLAIN\r\n")
    f = _result(d)
    assert len(started) == 1
    assert isinstance(f, Failure) and isinstance(f.value, SMTPProtocolError)
    assert not s.client.has("AUTH")


def test_partial_plaintext_line_before_tls_is_refused() -> None:
    """RFC 3207 §4.2: bytes buffered before the switch to TLS are a protocol error too."""
    started: list[Any] = []
    s = Session()
    s.transport.startTLS = started.append  # type: ignore[attr-defined]
    d = s.client.start()
    s.reply(b"220 hi\r\n")
    s.written()
    s.reply(b"250-mx.test\r\n250 STARTTLS\r\n")
    s.written()
    s.reply(b"220 go ahead\r\n250 inj")
    f = _result(d)
    assert not started
    assert isinstance(f, Failure) and isinstance(f.value, SMTPProtocolError)


def test_421_to_rcpt_ends_the_transaction_without_waiting() -> None:
    """RFC 5321 §3.8: a 421 means the server is closing: pending pipelined replies are not
    waited for, the transaction fails temporarily, the connection is not reused."""
    s = Session()
    _started(s)
    d = s.client.send(TWO, io.BytesIO(b"x"))
    s.written()
    s.reply(b"250 ok\r\n421 4.3.2 shutting down\r\n")
    f = _result(d)
    assert isinstance(f, Failure) and isinstance(f.value, SMTPReplyError)
    assert f.value.code == 421 and not f.value.permanent
    assert not s.client.usable
    assert s.written() == []  # no RSET to a server that is closing


def test_421_after_data_makes_the_connection_unusable() -> None:
    """RFC 5321 §3.8: a 421 to the end of data is a temporary result and the connection is
    not offered for another transaction."""
    s = Session()
    _started(s)
    d = s.client.send(ONE, io.BytesIO(b"x"))
    s.written()
    s.reply(b"250 ok\r\n250 ok\r\n354 go\r\n")
    s.pump()
    s.written()
    s.reply(b"421 4.3.2 closing\r\n")
    result = _result(d)
    assert isinstance(result, TransactionResult)
    assert result.recipients[0].reply.code == 421 and not result.recipients[0].permanent
    assert not s.client.usable


def test_552_to_rcpt_is_temporary() -> None:
    """RFC 5321 §4.5.3.1.10: a 552 to RCPT ("too many recipients") is treated as temporary;
    a 552 to the end of data stays permanent (RFC 1870 §6.2: exceeded storage)."""
    s = Session()
    _started(s)
    d = s.client.send(TWO, io.BytesIO(b"x"))
    s.written()
    s.reply(b"250 ok\r\n250 ok\r\n552 5.5.3 too many recipients\r\n354 go\r\n")
    s.pump()
    s.written()
    s.reply(b"552 5.3.4 message too big\r\n")
    result = _result(d)
    by = {r.address: r for r in result.recipients}
    assert not by["c@mx.test"].delivered and not by["c@mx.test"].permanent
    assert by["b@mx.test"].permanent


def test_mail_refused_but_data_accepted_sends_an_empty_message() -> None:
    """RFC 2920 §3.1: when DATA got 354 although MAIL failed, the client ends the data at
    once with a lone dot instead of sending RSET as message text."""
    s = Session()
    _started(s)
    d = s.client.send(ONE, io.BytesIO(b"x"))
    s.written()
    s.reply(b"451 4.3.0 try later\r\n250 ok\r\n354 go\r\n")
    assert s.written() == ["."]
    s.reply(b"554 no transaction\r\n")
    assert s.written() == ["RSET"]
    s.reply(b"250 ok\r\n")
    f = _result(d)
    assert isinstance(f, Failure) and isinstance(f.value, SMTPReplyError)
    assert f.value.code == 451 and f.value.command == "MAIL FROM"


_LINE = st.one_of(
    st.binary(max_size=40),
    st.builds(lambda c, sep, t: c + sep + t,
              st.sampled_from([b"250", b"354", b"421", b"451", b"550", b"552", b"220", b"999"]),
              st.sampled_from([b" ", b"-", b""]), st.binary(max_size=20)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(_LINE, max_size=4).map(lambda ls: b"\r\n".join(ls) + b"\r\n"),
                max_size=8))
def test_any_replies_during_a_transaction_end_in_a_typed_outcome(chunks: list[bytes]) -> None:
    """Whatever a server answers during a pipelined transaction, send() fires with a result
    or fails with an SMTPClientError, never another exception."""
    s = Session()
    _started(s, EHLO_FULL)
    d = s.client.send(TWO, io.BytesIO(b"Subject: x\r\n\r\nbody\r\n"))
    for c in chunks:
        if s.client._lost is not None:
            break
        s.client.dataReceived(c)
        s.pump()
    s.client.connectionLost(Failure(ConnectionError("closed")))
    r = _result(d)
    assert isinstance(r, TransactionResult) or isinstance(r.value, SMTPClientError)


def test_only_2yz_completes_a_command() -> None:
    """RFC 5321 §4.2.1/§4.3.2: only a 2yz reply completes MAIL, RCPT or the end of data; a
    3yz there (a confused server) is no delivery and no permanent failure either."""
    s = Session()
    _started(s)
    d = s.client.send(TWO, io.BytesIO(b"x"))
    s.written()
    s.reply(b"250 ok\r\n250 ok\r\n354 what\r\n354 go\r\n")
    s.pump()
    s.written()
    s.reply(b"354 again\r\n")
    result = _result(d)
    by = {r.address: r for r in result.recipients}
    assert by["b@mx.test"].reply.code == 354 and not by["b@mx.test"].delivered
    assert not by["c@mx.test"].delivered
    assert not any(r.permanent for r in result.recipients)


def test_requiretls_needs_a_verified_connection() -> None:
    """RFC 8689 §4.2.1: REQUIRETLS goes only over TLS whose certificate was verified; an
    unverified (opportunistic) session offering REQUIRETLS fails locally with 5.7.30."""
    from mxd.smtp.client import SMTPLocalError

    started: list[Any] = []
    s = Session()
    s.transport.startTLS = started.append  # type: ignore[attr-defined]
    d = s.client.start()
    s.reply(b"220 hi\r\n")
    s.written()
    s.reply(b"250-mx.test\r\n250 STARTTLS\r\n")
    s.written()
    s.reply(b"220 go ahead\r\n")
    s.written()
    s.reply(b"250-mx.test\r\n250-PIPELINING\r\n250 REQUIRETLS\r\n")
    assert _result(d) is None and s.client.tls_result.used
    assert not s.client.tls_result.verified
    msg = ClientMessage("a@x.test", (ClientRecipient("b@mx.test"),), requiretls=True)
    f = _result(s.client.send(msg, io.BytesIO(b"x")))
    assert isinstance(f, Failure) and isinstance(f.value, SMTPLocalError)
    assert f.value.enhanced == "5.7.30"
    assert s.written() == []


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(_LINE, max_size=4).map(lambda ls: b"\r\n".join(ls) + b"\r\n"),
                max_size=6), st.binary(max_size=30))
def test_any_replies_around_starttls_end_in_a_typed_outcome(chunks: list[bytes],
                                                            tail: bytes) -> None:
    """Whatever follows the EHLO that offers STARTTLS (in the same read as the 220 or
    later), start() succeeds or fails with an SMTPClientError, never another exception."""
    s = Session()
    s.transport.startTLS = lambda _options: None  # type: ignore[attr-defined]
    d = s.client.start()
    s.reply(b"220 hi\r\n250-mx.test\r\n250 STARTTLS\r\n")
    for c in chunks:
        if s.client._lost is not None:
            break
        s.client.dataReceived(c)
    if s.client._lost is None:
        s.client.dataReceived(tail)
    s.client.connectionLost(Failure(ConnectionError("closed")))
    r = _result(d)
    assert r is None or isinstance(r.value, SMTPClientError)


def test_421_to_the_last_rcpt_sends_no_bdat() -> None:
    """RFC 5321 §3.8: after a 421 (here to the last pipelined RCPT, with CHUNKING) no
    message data is sent on the closing channel; the transaction fails temporarily."""
    s = Session()
    _started(s, b"250-mx.test\r\n250-PIPELINING\r\n250 CHUNKING\r\n")
    d = s.client.send(TWO, io.BytesIO(b"x"))
    s.written()
    s.reply(b"250 ok\r\n250 ok\r\n421 4.3.2 closing\r\n")
    f = _result(d)
    assert isinstance(f, Failure) and isinstance(f.value, SMTPReplyError)
    assert f.value.code == 421 and not f.value.permanent
    assert s.transport.value() == b""


def test_421_in_lockstep_stops_sending_commands() -> None:
    """RFC 5321 §3.8: without PIPELINING, a 421 to a RCPT ends the transaction: no further
    RCPT, DATA or RSET is written to the closing channel."""
    s = Session()
    _started(s, b"250-mx.test\r\n250 8BITMIME\r\n")
    d = s.client.send(TWO, io.BytesIO(b"x"))
    assert s.written() == ["MAIL FROM:<a@x.test>"]
    s.reply(b"250 ok\r\n")
    assert s.written() == ["RCPT TO:<b@mx.test>"]
    s.reply(b"421 4.3.2 closing\r\n")
    f = _result(d)
    assert isinstance(f, Failure) and isinstance(f.value, SMTPReplyError)
    assert f.value.code == 421
    assert s.written() == []
