"""RFC 2920 PIPELINING: replies come in command order even when steps are asynchronous."""

from __future__ import annotations

from tests.smtp.helpers import Session

MSG = "Subject: p\r\n\r\nbody\r\n.\r\n"


def test_slow_directory_holds_later_commands() -> None:
    """While a RCPT lookup is pending, nothing after it is answered or executed."""
    s = Session()
    s.ehlo()
    s.directory.hold = True
    s.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.test>\r\n"
           "RCPT TO:<bob@example.test>\r\nDATA\r\n" + MSG + "NOOP\r\n")
    assert s.codes() == [250]
    assert s.proto.paused  # later commands held in the session's buffer
    assert s.transport.paused_count == 0  # without stopping the socket's reading
    s.directory.release()
    assert s.codes() == [250]  # first RCPT answered; second lookup now pending
    s.directory.release()
    assert s.codes() == [250, 354, 250, 250]
    assert len(s.store.delivered) == 1


def test_slow_store_holds_next_transaction() -> None:
    """A second pipelined transaction after DATA is not processed before the first 250."""
    s = Session()
    s.ehlo()
    s.store.hold = True
    second = "MAIL FROM:<c@d.example>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n" + MSG
    s.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n" + MSG + second)
    assert s.codes() == [250, 250, 354]
    assert s.store.delivered == []
    s.store.release()
    assert s.codes() == [250, 250, 250, 354]
    s.store.release()
    assert s.codes() == [250]
    assert [d.props.mail_from for d in s.store.delivered] == ["a@b.example", "c@d.example"]


def test_body_line_looking_like_command_is_data() -> None:
    """Body lines are never executed as commands, even with a pending lookup before DATA."""
    s = Session()
    s.ehlo()
    s.directory.hold = True
    s.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
           "Subject: t\r\n\r\nQUIT\r\nRSET\r\n.\r\n")
    s.directory.release()
    assert s.codes() == [250, 250, 354, 250]
    assert s.store.delivered[0].body.endswith(b"\r\n\r\nQUIT\r\nRSET\r\n")
    assert not s.transport.disconnecting


def test_data_split_at_every_byte() -> None:
    """Feeding the session one byte at a time gives the same result as one chunk."""
    s = Session()
    wire = (b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.test>\r\n"
            b"DATA\r\nSubject: x\r\n\r\n..dot\r\nline\r\n.\r\nQUIT\r\n")
    for i in range(len(wire)):
        s.send(wire[i:i + 1])
    text = s.output().decode()
    assert "354 " in text and "221 " in text
    assert s.store.delivered[0].body.endswith(b"\r\n\r\n.dot\r\nline\r\n")


def test_flood_while_waiting_stops_reading() -> None:
    """A client that keeps sending while a step is pending is held in the buffer only up
    to PAUSE_BUFFER octets; then the transport stops reading, and reading resumes (and the
    held commands run in order) once the step is done."""
    s = Session()
    s.ehlo()
    s.directory.hold = True
    s.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.test>\r\n")
    assert s.codes() == [250] and s.transport.paused_count == 0
    noops = "NOOP\r\n" * (s.proto.PAUSE_BUFFER // 6 + 10)
    s.send(noops)
    assert s.transport.paused_count == 1
    assert s.transport.producerState == "paused"
    s.directory.release()
    assert s.transport.producerState == "producing"
    codes = s.codes()
    assert codes[0] == 250 and all(c == 250 for c in codes)
    assert len(codes) == 1 + noops.count("NOOP")


def test_answers_already_there_do_not_pause_input() -> None:
    """Directory, checker and store answers that are already available are used at once:
    a whole pipelined transaction is answered without pausing the transport."""
    s = Session()
    s.ehlo()
    before = s.transport.paused_count
    s.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n" + MSG
           + "MAIL FROM:<c@d.example>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n" + MSG)
    assert s.codes() == [250, 250, 354, 250, 250, 250, 354, 250]
    assert s.transport.paused_count == before
    assert [d.props.mail_from for d in s.store.delivered] == ["a@b.example", "c@d.example"]
