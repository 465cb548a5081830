"""Regression: STARTTLS command injection (CVE-2011-0411 class, RFC 3207 §4.2).

Plaintext commands pipelined after STARTTLS must never run inside the TLS session."""

from __future__ import annotations

from mxd.smtp.server import State
from tests.smtp.helpers import Session


def test_commands_after_starttls_are_discarded() -> None:
    """Bytes buffered behind STARTTLS are dropped: only 220 is answered, TLS starts."""
    s = Session()
    s.ehlo()
    s.send("STARTTLS\r\nMAIL FROM:<evil@attacker.example>\r\nRCPT TO:<alice@example.test>\r\n")
    assert s.replies() == ["220 2.0.0 Ready to start TLS"]
    assert s.transport.tls_started == ["CTX"]
    s.start_tls()
    # The injected MAIL never happened: RCPT now is out of sequence, MAIL needs EHLO again.
    s.send("RCPT TO:<alice@example.test>\r\n")
    assert s.replies()[0].startswith("503")
    assert s.proto.tx is None


def test_state_reset_after_starttls() -> None:
    """RFC 3207 §4.2: after TLS the client must EHLO again; the old HELO is forgotten."""
    s = Session()
    s.ehlo()
    s.send("STARTTLS\r\n")
    s.output()
    s.start_tls()
    assert s.proto.state is State.INITIAL
    s.send("MAIL FROM:<a@b.example>\r\n")
    assert s.replies()[0].startswith("503 5.5.1")


def test_starttls_before_ehlo_is_accepted() -> None:
    """gsasl sends STARTTLS right after the greeting; that works."""
    s = Session()
    s.output()
    s.send("STARTTLS\r\n")
    assert s.replies() == ["220 2.0.0 Ready to start TLS"]


def test_starttls_twice_and_without_tls_config() -> None:
    """STARTTLS inside TLS is 503; without TLS configured it is 454 and not advertised."""
    s = Session()
    s.output()
    s.start_tls()
    s.send("STARTTLS\r\n")
    assert s.replies()[0].startswith("503")
    n = Session(tls_context=None)
    lines = n.ehlo()
    assert "STARTTLS" not in [line.split()[0] for line in lines]
    n.send("STARTTLS\r\n")
    assert n.replies()[0].startswith("454 4.7.0")


def test_authentication_forgotten_after_starttls() -> None:
    """RFC 3207 §4.2: an identity established before TLS (loopback allowance) is dropped."""
    from mxd.smtp.server import SMTPServerSettings

    s = Session("submission", peer_ip="127.0.0.1",
                settings=SMTPServerSettings(allow_plaintext_auth_on_loopback=True))
    s.ehlo()
    s.auth_plain()
    assert s.codes() == [235]
    s.send("STARTTLS\r\n")
    s.output()
    s.start_tls()
    assert s.proto.authenticated is None
    s.ehlo()
    s.send("MAIL FROM:<alice@example.test>\r\n")
    assert s.replies()[0].startswith("530")
