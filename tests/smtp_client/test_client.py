"""mxd's SMTP client (mxd.smtp.client) against scripted servers on StringTransport."""

from __future__ import annotations

import base64
import io
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from mxd.smtp import xtext
from mxd.smtp.client import (
    ClientMessage,
    ClientRecipient,
    ClientSettings,
    DataEncoder,
    SMTPClient,
    SMTPLocalError,
    SMTPReplyError,
    SMTPTimeoutError,
    SMTPTLSError,
    TLSMode,
    TLSPolicy,
    TransactionResult,
)

EHLO_FULL = (b"250-mx.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n"
             b"250-ENHANCEDSTATUSCODES\r\n250-DSN\r\n250 SMTPUTF8\r\n")


class Session:
    """A client on a StringTransport plus helpers to answer it."""

    def __init__(self, mode: TLSMode = TLSMode.OPPORTUNISTIC, **settings: Any) -> None:
        self.clock = Clock()
        self.transport = StringTransport()
        self.client = SMTPClient(self.clock, ClientSettings(helo_name="me.test", **settings),
                                 TLSPolicy(mode=mode), "mx.test")
        self.client.makeConnection(self.transport)

    def written(self) -> list[str]:
        out = self.transport.value().decode()
        self.transport.clear()
        return out.split("\r\n")[:-1]

    def reply(self, data: bytes) -> None:
        self.client.dataReceived(data)

    def pump(self) -> None:
        while self.transport.producer is not None:
            self.transport.producer.resumeProducing()


def _result(d: Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "Deferred has not fired"
    return out[0]


def _started(s: Session, ehlo: bytes = EHLO_FULL) -> None:
    d = s.client.start()
    s.reply(b"220 mx.test ESMTP\r\n")
    assert s.written() == ["EHLO me.test"]
    s.reply(ehlo)
    assert _result(d) is None


MSG = ClientMessage(
    mail_from="a@example.org",
    recipients=(ClientRecipient("ok@mx.test", notify=frozenset({"FAILURE", "DELAY"}),
                                orcpt="rfc822;ok@mx.test"),
                ClientRecipient("gone@mx.test"), ClientRecipient("later@mx.test")),
    size=40, envid="id 1", ret="HDRS",
)


def test_pipelined_transaction_with_per_recipient_results() -> None:
    """MAIL, RCPTs and DATA go out in one write; refused recipients keep their own reply."""
    s = Session()
    _started(s)
    d = s.client.send(MSG, io.BytesIO(b"Subject: x\r\n\r\nhello\r\n.dot\r\n"))
    lines = s.written()
    assert lines == [
        "MAIL FROM:<a@example.org> SIZE=40 RET=HDRS ENVID=id+201",
        "RCPT TO:<ok@mx.test> NOTIFY=DELAY,FAILURE ORCPT=rfc822;ok@mx.test",
        "RCPT TO:<gone@mx.test>", "RCPT TO:<later@mx.test>", "DATA",
    ]
    s.reply(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no such user\r\n"
            b"451 4.3.0 try later\r\n354 go\r\n")
    s.pump()
    assert s.written() == ["Subject: x", "", "hello", "..dot", "."]
    s.reply(b"250 2.0.0 queued as X\r\n")
    result = _result(d)
    assert isinstance(result, TransactionResult)
    got = {r.address: (r.reply.code, r.reply.enhanced, r.delivered) for r in result.recipients}
    assert got == {"ok@mx.test": (250, "2.0.0", True), "gone@mx.test": (550, "5.1.1", False),
                   "later@mx.test": (451, "4.3.0", False)}


def test_helo_fallback_and_lockstep_without_pipelining() -> None:
    """A server refusing EHLO gets HELO; without PIPELINING each command waits for its reply."""
    s = Session()
    d = s.client.start()
    s.reply(b"220 old.test SMTP\r\n")
    assert s.written() == ["EHLO me.test"]
    s.reply(b"500 what?\r\n")
    assert s.written() == ["HELO me.test"]
    s.reply(b"250 old.test\r\n")
    assert _result(d) is None and not s.client.esmtp
    msg = ClientMessage("a@x.test", (ClientRecipient("b@old.test"),))
    d2 = s.client.send(msg, io.BytesIO(b"hi"))
    assert s.written() == ["MAIL FROM:<a@x.test>"]
    s.reply(b"250 ok\r\n")
    assert s.written() == ["RCPT TO:<b@old.test>"]
    s.reply(b"250 ok\r\n")
    assert s.written() == ["DATA"]
    s.reply(b"354 go\r\n")
    s.pump()
    assert s.written() == ["hi", "."]
    s.reply(b"250 done\r\n")
    assert _result(d2).recipients[0].delivered


def test_mail_from_refusal_fails_the_transaction() -> None:
    """A 5xx to MAIL FROM errbacks with a permanent SMTPReplyError and resets."""
    s = Session()
    _started(s)
    d = s.client.send(ClientMessage("a@x.test", (ClientRecipient("b@mx.test"),)), io.BytesIO(b"x"))
    s.written()
    s.reply(b"553 5.7.1 sender rejected\r\n503 5.5.1 no mail\r\n503 5.5.1 no rcpt\r\n")
    assert s.written() == ["RSET"]
    s.reply(b"250 ok\r\n")
    f = _result(d)
    assert isinstance(f, Failure) and isinstance(f.value, SMTPReplyError)
    assert f.value.permanent and f.value.code == 553 and f.value.enhanced == "5.7.1"


def test_no_accepted_recipient_after_354_sends_empty_message() -> None:
    """RFC 2920 §3.1: all RCPTs refused but DATA got 354: the client ends DATA at once."""
    s = Session()
    _started(s)
    d = s.client.send(ClientMessage("a@x.test", (ClientRecipient("b@mx.test"),)), io.BytesIO(b"x"))
    s.written()
    s.reply(b"250 ok\r\n550 5.1.1 nope\r\n354 go\r\n")
    assert s.written() == ["."]
    s.reply(b"554 no valid recipients\r\n")
    assert s.written() == ["RSET"]
    s.reply(b"250 ok\r\n")
    result = _result(d)
    assert result.recipients[0].reply.code == 550 and result.data_reply is None


def test_starttls_required_but_not_offered_is_a_tls_error() -> None:
    """Mode REQUIRED without STARTTLS fails with starttls-not-supported; opportunistic goes on."""
    s = Session(mode=TLSMode.REQUIRED)
    d = s.client.start()
    s.reply(b"220 hi\r\n")
    s.written()
    s.reply(b"250-mx.test\r\n250 PIPELINING\r\n")
    f = _result(d)
    assert isinstance(f, Failure) and isinstance(f.value, SMTPTLSError)
    assert f.value.result_type == "starttls-not-supported"
    assert s.client.tls_result.failure == "starttls-not-supported"
    s2 = Session(mode=TLSMode.OPPORTUNISTIC)
    _started(s2, b"250-mx.test\r\n250 PIPELINING\r\n")
    assert not s2.client.tls_result.used


def test_starttls_is_sent_when_offered() -> None:
    """Opportunistic mode sends STARTTLS when offered and switches the transport to TLS."""
    started: list[Any] = []
    s = Session()
    s.transport.startTLS = started.append  # type: ignore[attr-defined]
    d = s.client.start()
    s.reply(b"220 hi\r\n")
    s.written()
    s.reply(b"250-mx.test\r\n250 STARTTLS\r\n")
    assert s.written() == ["STARTTLS"]
    s.reply(b"220 go ahead\r\n")
    assert len(started) == 1
    assert s.written() == ["EHLO me.test"]
    s.reply(b"250-mx.test\r\n250 PIPELINING\r\n")
    assert _result(d) is None
    assert s.client.tls_result.used and s.client.has("PIPELINING")


def test_bdat_when_chunking_is_offered() -> None:
    """With CHUNKING the body goes as BDAT n LAST, not dot-stuffed."""
    s = Session()
    _started(s, b"250-mx.test\r\n250-PIPELINING\r\n250 CHUNKING\r\n")
    d = s.client.send(ClientMessage("a@x.test", (ClientRecipient("b@mx.test"),)),
                      io.BytesIO(b".x\nline"))
    assert s.written() == ["MAIL FROM:<a@x.test>", "RCPT TO:<b@mx.test>"]
    s.reply(b"250 ok\r\n250 ok\r\n")
    assert s.transport.value() == b"BDAT 10 LAST\r\n.x\r\nline\r\n"
    s.reply(b"250 2.0.0 ok\r\n")
    assert _result(d).recipients[0].delivered


@pytest.mark.parametrize(("msg", "code", "enhanced"), [
    (ClientMessage("a@x", (ClientRecipient("b@y"),), body="8BITMIME"), 554, "5.6.3"),
    (ClientMessage("a@x", (ClientRecipient("b@y"),), smtputf8=True), 553, "5.6.7"),
    (ClientMessage("a@x", (ClientRecipient("b@y"),), size=5000), 552, "5.3.4"),
    (ClientMessage("a@x", (ClientRecipient("b@y"),), requiretls=True), 550, "5.7.30"),
])
def test_unsupported_needs_fail_locally_and_permanently(msg: ClientMessage, code: int,
                                                        enhanced: str) -> None:
    """8-bit, SMTPUTF8, oversize and REQUIRETLS messages the peer cannot take fail before MAIL."""
    s = Session()
    _started(s, b"250-mx.test\r\n250 SIZE 1000\r\n")
    f = _result(s.client.send(msg, io.BytesIO(b"x")))
    assert isinstance(f.value, SMTPLocalError)
    assert (f.value.code, f.value.enhanced, f.value.permanent) == (code, enhanced, True)
    assert s.written() == []


def test_greeting_timeout_uses_the_injected_clock() -> None:
    """No greeting within 300 s (RFC 5321 §4.5.3.2.1) errbacks with SMTPTimeoutError."""
    s = Session()
    d = s.client.start()
    s.clock.advance(299)
    assert not d.called
    s.clock.advance(2)
    f = _result(d)
    assert isinstance(f.value, SMTPTimeoutError)
    assert s.transport.disconnecting  # the connection is aborted


def test_multiline_reply_and_bad_reply() -> None:
    """Multi-line replies join; a line that is not a reply is a protocol error."""
    s = Session()
    d = s.client.start()
    s.reply(b"220-first\r\n220 second\r\n")
    s.written()
    s.reply(b"garbage\r\n")
    f = _result(d)
    assert "not an SMTP reply" in str(f.value)


def test_connection_lost_fails_pending_commands() -> None:
    """Losing the connection mid-transaction errbacks with SMTPConnectionError (temporary)."""
    s = Session()
    _started(s)
    d = s.client.send(ClientMessage("a@x.test", (ClientRecipient("b@mx.test"),)), io.BytesIO(b"x"))
    s.client.connectionLost(Failure(ConnectionError("reset")))
    f = _result(d)
    assert not f.value.permanent and "connection lost" in str(f.value)


def test_xtext_encoding() -> None:
    """RFC 3461 §4 xtext escapes '+', '=', space and non-ASCII."""
    assert xtext.encode("a+b=c d") == "a+2Bb+3Dc+20d"
    assert xtext.encode("é") == "+C3+A9"


def _decode_data(wire: bytes) -> bytes:
    lines = wire.split(b"\r\n")
    assert lines[-1] == b""
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines[:-1])


@given(st.lists(st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n", b"..", b"x.y"]), max_size=40),
       st.integers(1, 7))
def test_data_encoder_round_trip(pieces: list[bytes], chunk: int) -> None:
    """Any chunking gives CRLF-only output whose un-stuffing equals the normalised input."""
    raw = b"".join(pieces)
    enc = DataEncoder()
    out = b"".join(enc.encode(raw[i:i + chunk]) for i in range(0, len(raw), chunk)) + enc.finish()
    assert out.replace(b"\r\n", b"").count(b"\r") == 0 and out.replace(b"\r\n", b"").count(b"\n") == 0
    normal = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    if normal and not normal.endswith(b"\n"):
        normal += b"\n"
    assert _decode_data(out) + (b"\r\n" if out else b"") == normal.replace(b"\n", b"\r\n")
    for line in out.split(b"\r\n"):
        assert line != b"."  # never a premature terminator


@given(st.lists(st.binary(max_size=60), max_size=8))
def test_any_server_bytes_end_in_a_typed_outcome(chunks: list[bytes]) -> None:
    """Whatever a server sends, start() either succeeds or fails with an SMTPClientError
    (never another exception), once the connection is closed."""
    from mxd.smtp.client import SMTPClientError

    s = Session()
    d = s.client.start()
    for c in chunks:
        s.client.dataReceived(c)
    s.client.connectionLost(Failure(ConnectionError("closed")))
    r = _result(d)
    assert r is None or isinstance(r.value, SMTPClientError)


def test_starttls_on_a_transport_without_tls_is_a_tls_error() -> None:
    """STARTTLS over a transport that cannot do TLS fails cleanly with SMTPTLSError."""
    s = Session()
    d = s.client.start()
    s.reply(b"220 hi\r\n250-x\r\n250 STARTTLS\r\n220 go\r\n")
    f = _result(d)
    assert isinstance(f.value, SMTPTLSError)


def test_auth_cram_md5_in_plaintext_when_allowed() -> None:
    """With ``allow_plaintext`` a challenge-response mechanism may run without TLS (a
    loopback relay); a 535 is a permanent SMTPAuthError naming the mechanism."""
    from mxd.smtp.client import ClientAuth, SMTPAuthError

    s = Session()
    s.client.auth = ClientAuth("alice", "s3cret", allow_plaintext=True)
    d = s.client.start()
    s.reply(b"220 hi\r\n")
    s.written()
    s.reply(b"250-mx.test\r\n250 AUTH LOGIN PLAIN CRAM-MD5\r\n")
    assert s.written() == ["AUTH CRAM-MD5"]
    s.reply(b"334 " + base64.b64encode(b"<1.2@mx.test>") + b"\r\n")
    [answer] = s.written()
    assert base64.b64decode(answer).startswith(b"alice ")
    s.reply(b"535 5.7.8 bad credentials\r\n")
    f = _result(d)
    assert isinstance(f.value, SMTPAuthError) and f.value.permanent and f.value.code == 535
    assert "CRAM-MD5" in str(f.value)


@pytest.mark.parametrize("offer", [b"PLAIN", b"LOGIN PLAIN"])
def test_plain_never_without_tls(offer: bytes) -> None:
    """PLAIN and LOGIN send the password itself: never without TLS, even when plaintext
    AUTH is allowed; the error says why and nothing is sent."""
    from mxd.smtp.client import ClientAuth, SMTPAuthError

    s = Session()
    s.client.auth = ClientAuth("alice", "s3cret", allowed_mechanisms=("PLAIN", "LOGIN"),
                               allow_plaintext=True)
    d = s.client.start()
    s.reply(b"220 hi\r\n")
    s.written()
    s.reply(b"250-mx.test\r\n250 AUTH " + offer + b"\r\n")
    f = _result(d)
    assert isinstance(f.value, SMTPAuthError) and f.value.permanent
    assert "only " + offer.decode() + " without TLS" in str(f.value)
    assert s.written() == []


def _tls_session(monkeypatch: pytest.MonkeyPatch, bindings: Any) -> Session:
    """A session whose connection counts as TLS with the given channel bindings."""
    import attrs

    s = Session(mode=TLSMode.NONE)

    async def no_starttls() -> None:
        s.client.tls_result = attrs.evolve(s.client.tls_result, used=True)

    monkeypatch.setattr(s.client, "_starttls", no_starttls)
    cb_type = None
    if bindings is not None:
        cb_type = "tls-exporter" if bindings.tls_version == "TLSv1.3" else "tls-unique"
        if bindings.get(cb_type) is None:
            cb_type = None
    monkeypatch.setattr(s.client, "_channel_binding", lambda: (bindings, cb_type))
    return s


@pytest.mark.parametrize(("version", "offer", "allowed", "mech", "gs2"), [
    ("TLSv1.3", b"SCRAM-SHA-1 SCRAM-SHA-256-PLUS SCRAM-SHA-256 PLAIN", None,
     "SCRAM-SHA-256-PLUS", b"p=tls-exporter,,"),
    ("TLSv1.2", b"SCRAM-SHA-1-PLUS SCRAM-SHA-256 PLAIN", None,
     "SCRAM-SHA-1-PLUS", b"p=tls-unique,,"),
    # RFC 5802 §6: we can bind but the server offers no -PLUS: "y"
    ("TLSv1.3", b"SCRAM-SHA-256 SCRAM-SHA-1 PLAIN", None, "SCRAM-SHA-256", b"y,,"),
    # the server offers -PLUS but configuration forces plain SCRAM: "n"
    ("TLSv1.3", b"SCRAM-SHA-256-PLUS SCRAM-SHA-256", ("SCRAM-SHA-256",), "SCRAM-SHA-256",
     b"n,,"),
    # no binding data (a resumed TLS 1.2 session without EMS): no -PLUS, "n"
    (None, b"SCRAM-SHA-256-PLUS SCRAM-SHA-256", None, "SCRAM-SHA-256", b"n,,"),
    ("TLSv1.3", b"CRAM-MD5 PLAIN LOGIN", None, "CRAM-MD5", None),
    ("TLSv1.3", b"LOGIN PLAIN", None, "PLAIN", None),
])
def test_auth_mechanism_and_channel_binding(monkeypatch: pytest.MonkeyPatch,
                                            version: str | None, offer: bytes,
                                            allowed: tuple[str, ...] | None, mech: str,
                                            gs2: bytes | None) -> None:
    """The most secure offered mechanism wins; -PLUS binds with tls-exporter on TLS 1.3 and
    tls-unique on TLS 1.2; the gs2 flag is "y" only when we could bind and no -PLUS is
    offered."""
    from mxd.sasl.api import ChannelBindings
    from mxd.smtp.client import ClientAuth

    bindings = None
    if version == "TLSv1.3":
        bindings = ChannelBindings(version, tls_exporter=b"e" * 32, tls_server_end_point=b"s")
    elif version == "TLSv1.2":
        bindings = ChannelBindings(version, tls_exporter=b"e" * 32, tls_unique=b"u" * 12)
    s = _tls_session(monkeypatch, bindings)
    s.client.auth = ClientAuth("alice", "s3cret", allowed_mechanisms=allowed)
    s.client.start()
    s.reply(b"220 hi\r\n")
    s.written()
    s.reply(b"250-mx.test\r\n250 AUTH " + offer + b"\r\n")
    [line] = s.written()
    name, _sp, initial = line[len("AUTH "):].partition(" ")
    assert name == mech and s.client.auth_mechanism == mech
    if gs2 is not None:
        assert base64.b64decode(initial).startswith(gs2)
    if mech.endswith("-PLUS"):
        assert s.client.auth_cb_type == gs2.decode()[2:-2]  # type: ignore[union-attr]


def test_no_auth_without_tls_by_default() -> None:
    """Without TLS the client refuses to send credentials (RFC 4954 §4) and sends no AUTH."""
    from mxd.smtp.client import ClientAuth, SMTPAuthError

    s = Session()
    s.client.auth = ClientAuth("alice", "s3cret")
    d = s.client.start()
    s.reply(b"220 hi\r\n")
    s.written()
    s.reply(b"250-mx.test\r\n250 AUTH PLAIN\r\n")
    f = _result(d)
    assert isinstance(f.value, SMTPAuthError) and f.value.enhanced == "5.7.11"
    assert s.written() == []
