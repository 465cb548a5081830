"""AUTH (RFC 4954) with a fake SASL server: SASL-IR, "=", "*", 334 challenges, outcomes."""

from __future__ import annotations

import base64

from mxd.smtp.server import SMTPServerSettings
from tests.smtp.helpers import Session


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def tls_session(role: str = "submission") -> Session:
    s = Session(role)
    s.output()
    s.start_tls()
    s.ehlo()
    return s


def test_auth_not_offered_before_tls() -> None:
    """On 587 without TLS, EHLO has no AUTH and AUTH is refused with 530 (STARTTLS first)."""
    s = Session("submission")
    keywords = [line.split()[0] for line in s.ehlo()[1:]]
    assert "AUTH" not in keywords
    s.send("AUTH PLAIN " + b64(b"\0alice\0pw") + "\r\n")
    assert s.replies()[0].startswith("530")
    assert s.sasl.seen == []


def test_loopback_allowance() -> None:
    """With the loopback allowance, AUTH works without TLS from 127.0.0.1 only."""
    settings = SMTPServerSettings(allow_plaintext_auth_on_loopback=True)
    s = Session("submission", settings=settings, peer_ip="127.0.0.1")
    assert any(line.startswith("AUTH ") for line in s.ehlo())
    far = Session("submission", settings=settings, peer_ip="192.0.2.1")
    assert not any(line.startswith("AUTH ") for line in far.ehlo())


def test_channel_bindings_reach_sasl() -> None:
    """After the handshake the SASL layer sees tls=True and the channel bindings."""
    s = tls_session()
    conn = s.sasl.conns[-1]
    assert conn.tls and conn.channel_bindings is not None and conn.service == "smtp"
    assert "AUTH SCRAM-SHA-256-PLUS PLAIN" in s.ehlo()


def test_plain_with_initial_response() -> None:
    """AUTH PLAIN <ir> succeeds with 235 2.7.0 and sends the decoded bytes to the mechanism."""
    s = tls_session()
    s.auth_plain()
    assert s.replies() == ["235 2.7.0 Authentication successful"]
    assert s.sasl.seen == [("PLAIN", b"\0alice\0pw")]
    s.auth_plain()
    assert s.replies()[0].startswith("503")


def test_plain_without_initial_response() -> None:
    """AUTH PLAIN alone gets an empty 334 challenge, then the response line."""
    s = tls_session()
    s.send("AUTH PLAIN\r\n")
    assert s.output() == b"334 \r\n"
    s.send(b64(b"\0alice\0pw") + "\r\n")
    assert s.codes() == [235]
    assert s.sasl.seen == [("PLAIN", None), ("PLAIN", b"\0alice\0pw")]


def test_empty_initial_response_equals_sign() -> None:
    """"=" is an empty initial response (b""), distinct from none."""
    s = tls_session()
    s.send("AUTH PLAIN =\r\n")
    assert s.sasl.seen == [("PLAIN", b"")]
    assert s.replies()[0].startswith("535 5.7.8")


def test_star_aborts() -> None:
    """"*" in answer to a challenge aborts with 501 5.0.0; the session goes on."""
    s = tls_session()
    s.send("AUTH PLAIN\r\n*\r\nNOOP\r\n")
    r = s.replies()
    assert r[0] == "334 "
    assert r[1].startswith("501 5.0.0") and r[2].startswith("250")


def test_bad_base64_is_501() -> None:
    """An undecodable response is 501 5.5.2."""
    s = tls_session()
    s.send("AUTH PLAIN\r\n!!!notbase64\r\n")
    assert s.replies()[1].startswith("501 5.5.2")


def test_wrong_password_temporary_and_rate_limited() -> None:
    """Failure is 535 5.7.8; a temporary failure 454 4.7.0; rate limiting 454 too."""
    s = tls_session()
    s.auth_plain(pw="nope")
    assert s.replies()[0].startswith("535 5.7.8")
    s.sasl.temporary = True
    s.auth_plain(pw="nope")
    assert s.replies()[0].startswith("454 4.7.0")
    s.sasl.temporary = False
    s.sasl.rate_limited = True
    s.auth_plain(pw="nope")
    r = s.replies()[0]
    assert r.startswith("454 4.7.0") and "Too many" in r


def test_mechanism_exception_is_temporary_not_a_crash() -> None:
    """A mechanism that raises answers 454; the connection stays up."""
    s = tls_session()
    s.sasl.raise_error = True
    s.auth_plain()
    assert s.replies()[0].startswith("454 4.7.0")
    assert not s.transport.disconnecting


def test_unknown_mechanism() -> None:
    """A mechanism not offered is 504 5.5.4."""
    s = tls_session()
    s.send("AUTH CRAM-MD5\r\n")
    assert s.replies()[0].startswith("504 5.5.4")


def test_additional_data_sent_as_last_challenge() -> None:
    """RFC 4954 §4: SCRAM's server-final goes in a 334; the client's empty line gets 235."""
    s = tls_session()
    s.send("AUTH SCRAM-SHA-256-PLUS " + b64(b"p=tls-exporter,,n=alice,r=abc") + "\r\n")
    assert s.output() == ("334 " + b64(b"r=nonce,s=salt,i=4096") + "\r\n").encode()
    s.send(b64(b"c=...,p=proof") + "\r\n")
    assert s.output() == ("334 " + b64(b"v=proof") + "\r\n").encode()
    s.send("\r\n")
    assert s.codes() == [235]
    assert s.proto.authenticated == "alice"


def test_auth_on_port_25_not_implemented() -> None:
    """Inbound port 25 does not offer AUTH; the command is 502."""
    s = Session("smtp")
    s.output()
    s.start_tls()
    keywords = [line.split()[0] for line in s.ehlo()[1:]]
    assert "AUTH" not in keywords
