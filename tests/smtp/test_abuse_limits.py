"""Abuse limits of the SMTP server: deadlines that trickled bytes cannot extend, the DATA
minimum rate, per-network connection shares, load-dependent deadlines, hop counting
(RFC 5321 §6.3) and 452 for too many recipients not counted as a client error."""

from __future__ import annotations

import pytest
from twisted.internet.address import IPv4Address, IPv6Address

from mxd.smtp.server import SMTPServerProtocol, SMTPServerSettings
from mxd.smtp.service import network_key
from tests.smtp.helpers import Session, TLSStringTransport


def test_trickled_command_line_times_out_at_its_deadline() -> None:
    """One byte every few seconds does not extend the command deadline: the line must be
    complete within command_timeout of the previous reply."""
    s = Session(settings=SMTPServerSettings(command_timeout=60))
    s.ehlo()
    for _ in range(11):
        s.send("N")
        s.clock.advance(5)
    assert not s.transport.disconnecting
    s.send("O")
    s.clock.advance(5)
    assert s.replies()[-1].startswith("421 4.4.2")
    assert s.transport.disconnecting


def test_greeting_deadline_applies_to_trickled_bytes() -> None:
    """Before EHLO too: the first line must arrive within the command deadline."""
    s = Session(settings=SMTPServerSettings(command_timeout=20))
    for _ in range(3):
        s.send("E")
        s.clock.advance(7)
    assert s.transport.disconnecting


def test_each_complete_line_starts_a_new_deadline() -> None:
    """A client sending whole commands in time is not cut off."""
    s = Session(settings=SMTPServerSettings(command_timeout=60))
    s.ehlo()
    for _ in range(5):
        s.clock.advance(50)
        s.send("NOOP\r\n")
    assert not s.transport.disconnecting


def test_data_minimum_rate() -> None:
    """DATA trickled at 1 byte/5 s is closed at data_timeout (each byte buys only
    1/data_min_rate seconds); a client above the minimum rate may take longer."""
    settings = SMTPServerSettings(data_timeout=30, data_min_rate=100)
    s = Session(settings=settings)
    s.ehlo()
    s.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    for _ in range(6):
        s.send("x")
        s.clock.advance(5)
    assert not s.transport.disconnecting  # 30.06 s allowed for 6 bytes
    s.send("x")
    s.clock.advance(5)
    assert s.transport.disconnecting
    assert s.store.delivered == []

    fast = Session(settings=settings)
    fast.ehlo()
    fast.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nS: x\r\n\r\n")
    for _ in range(20):  # 60 s in all, at 200 bytes/s
        fast.send("y" * 598 + "\r\n")
        fast.clock.advance(3)
    fast.send(".\r\n")
    assert not fast.transport.disconnecting
    assert fast.replies()[-1].startswith("250")


def test_bdat_minimum_rate() -> None:
    """A BDAT chunk is held to the same deadline."""
    s = Session(settings=SMTPServerSettings(data_timeout=30, data_min_rate=100))
    s.ehlo()
    s.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.test>\r\nBDAT 1000 LAST\r\n")
    for _ in range(7):
        s.send("x")
        s.clock.advance(5)
    assert s.transport.disconnecting


@pytest.mark.parametrize(("ip", "net"), [
    ("192.0.2.77", "192.0.2.0/24"),
    ("2001:db8:1:2::5", "2001:db8:1::/48"),
    ("::ffff:198.51.100.9", "198.51.100.0/24"),
    ("unknown", "unknown"),
])
def test_network_key(ip: str, net: str) -> None:
    """Shares are counted per IPv4 /24 and IPv6 /48."""
    assert network_key(ip) == net


def test_per_network_share() -> None:
    """Many addresses of one /24 get at most max_connections_per_network slots; another
    network still gets in."""
    s = Session(settings=SMTPServerSettings(max_connections=100, max_connections_per_ip=2,
                                            max_connections_per_network=5))
    f = s.factory
    got = []
    for i in range(10):
        p = f.buildProtocol(IPv4Address("TCP", f"203.0.113.{i + 1}", 1000 + i))
        p.makeConnection(TLSStringTransport(f"203.0.113.{i + 1}"))
        got.append(isinstance(p, SMTPServerProtocol))
    assert got.count(True) == 5
    assert isinstance(f.buildProtocol(IPv6Address("TCP", "2001:db8::1", 1)), SMTPServerProtocol)
    assert isinstance(f.buildProtocol(IPv4Address("TCP", "203.0.114.1", 1)), SMTPServerProtocol)


def test_busy_listener_shortens_deadlines() -> None:
    """Once busy_fraction of the connections are in use, waiting sessions (and new ones)
    get command_timeout_busy."""
    settings = SMTPServerSettings(max_connections=4, busy_fraction=0.75, command_timeout=300,
                                  command_timeout_busy=10, max_connections_per_network=10)
    s = Session(settings=settings)
    s.ehlo()
    f = s.factory
    for i in range(2):
        p = f.buildProtocol(IPv4Address("TCP", f"198.51.100.{i + 1}", 1))
        p.makeConnection(TLSStringTransport(f"198.51.100.{i + 1}"))
    s.clock.advance(11)
    assert s.transport.disconnecting


def _message(hops: int) -> str:
    received = "".join(f"Received: from h{i}.example by h{i + 1}.example; "
                       "Thu, 1 Jan 2026 00:00:00 +0000\r\n" for i in range(hops))
    return received + "Subject: loop\r\n\r\nbody\r\n.\r\n"


@pytest.mark.parametrize(("hops", "code"), [(100, "250"), (101, "554 5.4.6")])
def test_hop_count(hops: int, code: str) -> None:
    """RFC 5321 §6.3: more than max_hops Received fields is a loop: 554 5.4.6."""
    s = Session(settings=SMTPServerSettings(max_hops=100))
    s.ehlo()
    s.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    s.send(_message(hops))
    assert s.replies()[-1].startswith(code)
    assert len(s.store.delivered) == (1 if code == "250" else 0)


def test_hop_count_on_submission() -> None:
    """Submission counts hops too (a message looping through a user's forwarding)."""
    s = Session("submission", settings=SMTPServerSettings(max_hops=3))
    s.ehlo()
    s.start_tls()
    s.ehlo()
    s.auth_plain()
    s.send("MAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@far.example>\r\nDATA\r\n")
    s.send(_message(4))
    assert s.replies()[-1].startswith("554 5.4.6")
    assert s.store.queued == []


def test_too_many_recipients_is_not_a_client_error() -> None:
    """A pipelining client that ignores LIMITS gets 452 for each extra RCPT, but the
    session goes on and the transaction is delivered (no 421 after max_errors)."""
    s = Session(settings=SMTPServerSettings(max_recipients=5, max_errors=20))
    s.ehlo()
    s.send("MAIL FROM:<a@b.example>\r\n" + "RCPT TO:<alice@example.test>\r\n" * 60
           + "DATA\r\n")
    s.send("Subject: many\r\n\r\nbody\r\n.\r\n")
    r = s.replies()
    assert sum(1 for x in r if x.startswith("452 4.5.3")) == 55
    assert not any(x.startswith("421") for x in r)
    assert r[-1].startswith("250") and len(s.store.delivered) == 1


def test_full_listener_makes_room_for_a_quieter_network() -> None:
    """At max_connections, a client from a network with few connections gets in: the
    idlest session of the network holding the most is closed with 421 (not one in the
    middle of a transaction); a newcomer from the biggest network is refused."""
    settings = SMTPServerSettings(max_connections=6, max_connections_per_ip=10,
                                  max_connections_per_network=10)
    s = Session(settings=settings, peer_ip="198.51.100.1")  # in a transaction below
    s.ehlo()
    s.send("MAIL FROM:<a@b.example>\r\n")
    f = s.factory
    flood = []
    for i in range(5):
        t = TLSStringTransport(f"203.0.113.{i + 1}")
        p = f.buildProtocol(IPv4Address("TCP", f"203.0.113.{i + 1}", 1))
        assert isinstance(p, SMTPServerProtocol)
        p.makeConnection(t)
        s.clock.advance(1)
        flood.append(t)
    same_net = f.buildProtocol(IPv4Address("TCP", "203.0.113.99", 1))
    assert not isinstance(same_net, SMTPServerProtocol)
    newcomer = f.buildProtocol(IPv4Address("TCP", "192.0.2.50", 1))
    assert isinstance(newcomer, SMTPServerProtocol)
    assert flood[0].disconnecting and b"421 4.7.0" in flood[0].value()
    assert not any(t.disconnecting for t in flood[1:])
    assert not s.transport.disconnecting
    assert f.total == 6
