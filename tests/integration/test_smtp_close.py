"""How the SMTP server closes real TCP connections (the session closes a plain connection
at once when its last reply has gone to the socket, ``mxd.smtp.session.close_now``; a TLS
one waits for the peer, as before): the client always reads the whole last reply and then
a clean end of stream, never a reset, and the server keeps no session behind."""

from __future__ import annotations

import socket
import ssl

import pytest

from tests.integration._smtp_harness import Harness, smtp_harness  # noqa: F401 - fixture

pytestmark = pytest.mark.integration


def _read_to_eof(sock: socket.socket) -> bytes:
    out = b""
    while chunk := sock.recv(4096):  # ConnectionResetError would fail the test
        out += chunk
    return out


def test_quit_gives_221_then_a_clean_end_of_stream(smtp_harness: Harness) -> None:  # noqa: F811
    """300 sessions in a row, EHLO and QUIT pipelined in one write: each client reads
    the greeting, the EHLO reply, 221 and then end of stream (FIN, not RST)."""
    for _ in range(300):
        with socket.create_connection(("127.0.0.1", smtp_harness.ports["smtp"]), 10) as s:
            s.sendall(b"EHLO client.test\r\nQUIT\r\n")
            got = _read_to_eof(s)
        lines = got.decode().split("\r\n")
        assert lines[0].startswith("220 "), got
        assert any(x.startswith("221 ") for x in lines), got
        assert lines[-1] == "" and lines[-2].startswith("221 "), got


def test_a_whole_transaction_then_quit(smtp_harness: Harness) -> None:  # noqa: F811
    """A message, then QUIT: 250 for the message, 221, end of stream; it was stored."""
    with socket.create_connection(("127.0.0.1", smtp_harness.ports["smtp"]), 10) as s:
        s.recv(4096)
        for cmd in (b"HELO client.test", b"MAIL FROM:<a@remote.example>",
                    f"RCPT TO:<{smtp_harness.user}>".encode(), b"DATA"):
            s.sendall(cmd + b"\r\n")
            s.recv(4096)
        s.sendall(b"Subject: close\r\n\r\nbody\r\n.\r\n")
        assert s.recv(4096).startswith(b"250 ")
        s.sendall(b"QUIT\r\n")
        assert _read_to_eof(s).startswith(b"221 ")


def test_quit_over_starttls_closes_after_the_peer(smtp_harness: Harness) -> None:  # noqa: F811
    """Over STARTTLS the 221 arrives, then the server's close_notify (an orderly TLS
    close), and the connection ends."""
    ctx = ssl.create_default_context(cafile=str(smtp_harness.ca_file))
    with socket.create_connection(("127.0.0.1", smtp_harness.ports["smtp"]), 10) as raw:
        f = raw.makefile("rb")
        f.readline()
        raw.sendall(b"EHLO client.test\r\n")
        while not f.readline().startswith(b"250 "):
            pass
        raw.sendall(b"STARTTLS\r\n")
        assert f.readline().startswith(b"220 ")
        with ctx.wrap_socket(raw, server_hostname="localhost") as t:
            t.sendall(b"EHLO client.test\r\nQUIT\r\n")
            got = b""
            try:
                while chunk := t.recv(4096):
                    got += chunk
            except ssl.SSLEOFError:  # pragma: no cover - only if the close were not orderly
                pytest.fail("the server ended TLS without close_notify")
            assert b"\r\n221 " in got or got.startswith(b"221 "), got
