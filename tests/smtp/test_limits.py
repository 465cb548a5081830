"""Limits: SIZE, recipients, errors, line length, timeouts, connections, transactions."""

from __future__ import annotations

from twisted.internet.address import IPv4Address

from mxd.smtp.server import SMTPServerProtocol, SMTPServerSettings
from tests.smtp.helpers import Session, TLSStringTransport, close


def test_size_parameter_over_limit_is_552() -> None:
    """MAIL FROM ... SIZE= above the limit is refused up front with 552 5.3.4."""
    s = Session(settings=SMTPServerSettings(max_message_size=1000))
    assert "SIZE 1000" in s.ehlo()
    s.send("MAIL FROM:<a@b.example> SIZE=1001\r\nMAIL FROM:<a@b.example> SIZE=999\r\n")
    r = s.replies()
    assert r[0].startswith("552 5.3.4") and r[1].startswith("250")


def test_size_enforced_while_reading() -> None:
    """A message growing past the limit is read to its end, refused with 552, not stored."""
    s = Session(settings=SMTPServerSettings(max_message_size=1000))
    s.ehlo()
    s.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    s.send("Subject: big\r\n\r\n" + ("x" * 70 + "\r\n") * 30 + ".\r\nNOOP\r\n")
    r = s.replies()
    assert r[-2].startswith("552 5.3.4") and r[-1].startswith("250")
    assert s.store.delivered == []
    assert max(len(b.data) for b in s.store.blobs) <= 1000 + 400  # never buffered past the limit


def test_too_many_recipients_is_452() -> None:
    """RFC 5321 §4.5.3.1.10: the recipient beyond the limit gets 452 4.5.3; LIMITS says it."""
    s = Session(settings=SMTPServerSettings(max_recipients=2))
    assert any(line.startswith("LIMITS RCPTMAX=2") for line in s.ehlo())
    s.send("MAIL FROM:<a@b.example>\r\n" + "RCPT TO:<alice@example.test>\r\n" * 3)
    assert [r[:9] for r in s.replies()] == ["250 2.1.0", "250 2.1.5", "250 2.1.5", "452 4.5.3"]


def test_too_many_errors_closes() -> None:
    """After max_errors error replies the server says 421 and closes."""
    s = Session(settings=SMTPServerSettings(max_errors=3))
    s.ehlo()
    s.send("FOO\r\nBAR\r\nBAZ\r\nNOOP\r\n")
    r = s.replies()
    assert r[-1].startswith("421 4.7.0")
    assert s.transport.disconnecting
    assert len(r) == 4  # three 500s and the 421; NOOP never answered


def test_command_line_too_long() -> None:
    """A command line beyond max_line_length is 500 5.5.6; beyond the hard limit closes."""
    s = Session(settings=SMTPServerSettings(max_line_length=100, max_auth_line_length=500))
    s.ehlo()
    s.send("NOOP " + "x" * 200 + "\r\n")
    assert s.replies()[0].startswith("500 5.5.6")
    s.send("NOOP " + "x" * 1000)
    assert s.replies()[0].startswith("500 5.5.6")
    assert s.transport.disconnecting


def test_idle_timeout() -> None:
    """With no input for command_timeout seconds the server answers 421 4.4.2 and closes."""
    s = Session(settings=SMTPServerSettings(command_timeout=60))
    s.ehlo()
    s.clock.advance(59)
    assert not s.transport.disconnecting
    s.send("NOOP\r\n")
    s.clock.advance(59)
    assert not s.transport.disconnecting
    s.clock.advance(2)
    assert s.replies()[-1].startswith("421 4.4.2")
    assert s.transport.disconnecting


def test_data_timeout() -> None:
    """A client stalling in DATA times out after data_timeout; nothing is stored."""
    s = Session(settings=SMTPServerSettings(data_timeout=30, command_timeout=300))
    s.ehlo()
    s.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nSubject: x\r\n")
    s.clock.advance(31)
    assert s.transport.disconnecting
    assert s.store.delivered == [] and s.store.blobs[0].aborted


def test_connections_per_ip_and_total() -> None:
    """Beyond the per-IP or total limit a new connection gets 421 and is closed; closing
    one frees its slot."""
    s = Session(settings=SMTPServerSettings(max_connections_per_ip=2, max_connections=3))
    f = s.factory
    second = f.buildProtocol(IPv4Address("TCP", "192.0.2.7", 1))
    assert isinstance(second, SMTPServerProtocol)
    second.makeConnection(TLSStringTransport("192.0.2.7"))
    third_t = TLSStringTransport("192.0.2.7")
    third = f.buildProtocol(IPv4Address("TCP", "192.0.2.7", 2))
    assert not isinstance(third, SMTPServerProtocol)
    third.makeConnection(third_t)
    assert third_t.value().startswith(b"421 4.7.0") and third_t.disconnecting
    other = f.buildProtocol(IPv4Address("TCP", "198.51.100.1", 3))
    assert isinstance(other, SMTPServerProtocol)
    other.makeConnection(TLSStringTransport("198.51.100.1"))
    assert not isinstance(f.buildProtocol(IPv4Address("TCP", "198.51.100.2", 4)), SMTPServerProtocol)
    close(s)
    assert isinstance(f.buildProtocol(IPv4Address("TCP", "192.0.2.7", 5)), SMTPServerProtocol)


def test_transactions_per_session() -> None:
    """After MAILMAX messages the next MAIL gets 421 (RFC 9422 MAILMAX)."""
    s = Session(settings=SMTPServerSettings(max_transactions=1))
    s.ehlo()
    msg = "MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nS: x\r\n\r\nb\r\n.\r\n"
    s.send(msg + "MAIL FROM:<a@b.example>\r\n")
    r = s.replies()
    assert r[-2].startswith("250") and r[-1].startswith("421")


def test_metrics_counted() -> None:
    """Connections, acceptances and rejections with reasons are counted."""
    seen: list[tuple[str, dict[str, str]]] = []

    class M:
        def inc(self, name: str, **labels: str) -> None:
            seen.append((name, labels))

    s = Session(metrics=M())
    s.ehlo()
    s.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<x@far.example>\r\nRCPT TO:<alice@example.test>\r\n"
           "DATA\r\nS: x\r\n\r\nb\r\n.\r\n")
    names = [n for n, _ in seen]
    assert "smtp_connections_total" in names and "smtp_accepted_total" in names
    assert ("smtp_rejected_total", {"role": "smtp", "reason": "relay_denied"}) in seen


def test_nothing_is_written_after_close() -> None:
    """Once the session is CLOSED (here by the idle timeout) nothing more is written: not a
    reply to input still arriving, not a second 421 from a later timer, and not the 250
    of a store commit that completes after the close."""
    s = Session(settings=SMTPServerSettings(command_timeout=60, data_timeout=60))
    s.ehlo()
    s.store.hold = True
    s.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
           "Subject: x\r\n\r\nbody\r\n.\r\n")
    assert s.codes() == [250, 250, 354]
    s.clock.advance(61)  # the store is still committing: the command timer ends it
    assert s.replies()[-1].startswith("421 4.4.2") and s.transport.disconnecting
    s.output()
    s.send("NOOP\r\n")
    s.clock.advance(1000)
    s.store.release()
    assert s.output() == b""


def test_closing_twice_writes_one_reply_and_keeps_the_deadline() -> None:
    """A second close (two causes racing: a timer and a handler) writes no second reply
    and does not push the close deadline out: the connection is aborted close_timeout
    after the first close."""
    from mxd.smtp import replies

    s = Session(settings=SMTPServerSettings(close_timeout=10))
    s.ehlo()
    aborted: list[int] = []
    s.transport.abortConnection = lambda: aborted.append(1)  # type: ignore[method-assign]
    s.proto._close(replies.TIMEOUT)
    s.clock.advance(5)
    s.proto._close(replies.TOO_MANY_ERRORS)
    assert [r[:3] for r in s.replies()] == ["421"]
    assert aborted == []
    s.clock.advance(5)
    assert aborted == [1]
