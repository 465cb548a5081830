"""Forwarding at RCPT (mxd.forwarding): forwarded copies are queued with an SRS sender,
bounces to our SRS addresses go back to the original sender, forged ones are refused."""

from __future__ import annotations

from twisted.internet import task

from mxd.forwarding import Forwarder, ForwardRule
from mxd.srs import SRS
from tests.smtp.helpers import Session

SECRET = b"test-secret"


def _forwarder(clock: task.Clock, keep: bool = False) -> Forwarder:
    return Forwarder([
        ForwardRule("alias@example.test", ("one@elsewhere.example", "two@other.example")),
        ForwardRule("alice@example.test", ("alice@elsewhere.example",), keep_copy=keep),
    ], SRS(SECRET), clock)


def _session(keep: bool = False, role: str = "smtp") -> Session:
    clock = task.Clock()
    clock.advance(1_800_000_000)
    s = Session(role, forwarder=_forwarder(clock, keep))
    s.ehlo()
    return s


MSG = "Subject: fwd\r\n\r\nhello\r\n.\r\n"


def test_forwarded_address_is_queued_with_an_srs_sender() -> None:
    s = _session()
    s.send("MAIL FROM:<bob@sender.example>\r\nRCPT TO:<alias+tag@example.test>\r\nDATA\r\n")
    s.send(MSG)
    assert s.codes() == [250, 250, 354, 250]
    assert s.store.delivered == []  # no local copy
    ((body, out),) = s.store.queued
    assert [r.address for r in out.recipients] == ["one@elsewhere.example",
                                                   "two@other.example"]
    # RFC 3461 §4.2: the original recipient travels with each copy.
    assert {r.orcpt for r in out.recipients} == {"rfc822;alias+2Btag@example.test"}  # xtext
    assert out.mail_from.startswith("SRS0=") and out.mail_from.endswith("@example.test")
    assert SRS(SECRET).reverse(out.mail_from, 1_800_000_000) == "bob@sender.example"
    assert s.outbound.wakes == 1
    assert body.endswith(b"Subject: fwd\r\n\r\nhello\r\n")


def test_keep_copy_delivers_locally_too() -> None:
    s = _session(keep=True)
    s.send("MAIL FROM:<bob@sender.example>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n" + MSG)
    assert s.codes() == [250, 250, 354, 250]
    assert [d.account_id for d in s.store.delivered[0].targets] == [1]
    ((_, out),) = s.store.queued
    assert [r.address for r in out.recipients] == ["alice@elsewhere.example"]


def test_without_keep_copy_the_account_gets_nothing() -> None:
    s = _session(keep=False)
    s.send("MAIL FROM:<bob@sender.example>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n" + MSG)
    assert s.codes() == [250, 250, 354, 250]
    assert s.store.delivered == []


def test_bounce_to_our_srs_address_goes_back_to_the_sender() -> None:
    s = _session()
    srs_addr = SRS(SECRET).forward("bob@sender.example", "example.test", 1_800_000_000)
    s.send(f"MAIL FROM:<>\r\nRCPT TO:<{srs_addr}>\r\nDATA\r\n" + MSG)
    assert s.codes() == [250, 250, 354, 250]
    ((_, out),) = s.store.queued
    assert [r.address for r in out.recipients] == ["bob@sender.example"]
    assert out.mail_from == ""  # a bounce stays a bounce (RFC 5321 §4.5.5)


def test_forged_srs_address_is_unknown_not_relayed() -> None:
    """No open relay through the reverse path: only addresses made with our secret."""
    s = _session()
    forged = SRS(b"guessed").forward("victim@target.example", "example.test", 1_800_000_000)
    s.send(f"MAIL FROM:<>\r\nRCPT TO:<{forged}>\r\n")
    assert s.codes() == [250, 550]
    assert s.store.queued == []


def test_expired_srs_address_is_refused() -> None:
    s = _session()
    old = SRS(SECRET).forward("bob@sender.example", "example.test", 1_800_000_000 - 30 * 86400)
    s.send(f"MAIL FROM:<>\r\nRCPT TO:<{old}>\r\n")
    assert s.codes() == [250, 550]


def test_other_local_addresses_are_unchanged() -> None:
    s = _session()
    s.send("MAIL FROM:<bob@sender.example>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n" + MSG)
    assert s.codes() == [250, 250, 354, 250]
    assert s.store.queued == [] and len(s.store.delivered) == 1


def test_remote_domains_are_still_not_relayed_on_port_25() -> None:
    s = _session()
    s.send("MAIL FROM:<bob@sender.example>\r\nRCPT TO:<one@elsewhere.example>\r\n")
    assert s.codes() == [250, 554]


def test_forward_targets_count_against_the_recipient_limit() -> None:
    from mxd.smtp.server import SMTPServerSettings

    clock = task.Clock()
    s = Session(settings=SMTPServerSettings(max_recipients=2), forwarder=_forwarder(clock))
    s.ehlo()
    s.send("MAIL FROM:<bob@sender.example>\r\nRCPT TO:<bob@example.test>\r\n"
           "RCPT TO:<alias@example.test>\r\n")
    assert s.codes() == [250, 250, 452]
