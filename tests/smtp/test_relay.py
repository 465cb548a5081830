"""No open relay (RFC 5321 §3.6, §7.1): foreign recipients need an authenticated submitter."""

from __future__ import annotations

import pytest

from tests.smtp.helpers import Session


@pytest.mark.parametrize("rcpt", ["<victim@elsewhere.example>", "<alice@[192.0.2.1]>",
                                  "<@example.test:victim@elsewhere.example>",
                                  "<alice@example.test.evil.example>"])
def test_inbound_refuses_foreign_recipients(rcpt: str) -> None:
    """Port 25: RCPT to a domain that is not local answers 554 5.7.1, nothing queued."""
    s = Session("smtp")
    s.ehlo()
    s.send(f"MAIL FROM:<a@b.example>\r\nRCPT TO:{rcpt}\r\n")
    assert s.replies()[1].startswith("554 5.7.1")
    assert s.store.queued == []


def test_inbound_refuses_relay_even_when_authenticated_elsewhere() -> None:
    """Port 25 has no AUTH at all, so there is no way to relay through it."""
    s = Session("smtp")
    s.ehlo()
    s.start_tls()
    s.ehlo()
    s.auth_plain()
    assert s.replies()[0].startswith("502")


def test_submission_refuses_unauthenticated_mail() -> None:
    """Port 587: MAIL without AUTH is 530 and a following RCPT to a foreign domain is 503."""
    s = Session("submission")
    s.ehlo()
    s.start_tls()
    s.ehlo()
    s.send("MAIL FROM:<alice@example.test>\r\nRCPT TO:<victim@elsewhere.example>\r\n")
    r = s.replies()
    assert r[0].startswith("530 5.7.0")
    assert r[1].startswith("503")
    assert s.store.queued == []


def test_submission_before_tls_asks_for_starttls() -> None:
    """Port 587 without TLS: MAIL answers 530 5.7.0 Must issue a STARTTLS command first."""
    s = Session("submission")
    s.ehlo()
    s.send("MAIL FROM:<alice@example.test>\r\n")
    assert "STARTTLS" in s.replies()[0]
