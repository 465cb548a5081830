"""Performance defects of the IMAP server that can be asserted without flakiness, against
``twistd mxd`` with stock clients (Python's imaplib with its default socket options)."""

from __future__ import annotations

import imaplib
import socket
import ssl
import statistics
import time

import pytest

from tests.integration.mxdserver import MxdServer

pytestmark = pytest.mark.integration

MSG = b"From: a@example.test\r\nTo: alice@example.test\r\nSubject: s %d\r\n\r\n" + b"x" * 5000 + b"\r\n"
# Over 16 KiB: the literal comes in two TLS records, and Nagle holds back the second, small
# one until the first is acknowledged.
BIG = (b"From: a@example.test\r\nTo: alice@example.test\r\nSubject: s %d\r\n\r\n"
       + (b"y" * 70 + b"\r\n") * 240)


def _client(srv: MxdServer, port: str, nodelay: bool) -> imaplib.IMAP4:
    ctx = ssl.create_default_context(cafile=str(srv.ca_file))
    c: imaplib.IMAP4
    if port == "imaps":
        c = imaplib.IMAP4_SSL("127.0.0.1", srv.ports["imaps"], ssl_context=ctx, timeout=20)
    else:
        c = imaplib.IMAP4("127.0.0.1", srv.ports["imap"], timeout=20)
        c.starttls(ssl_context=ctx)
    if nodelay:
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.login(srv.user, srv.password)
    return c


@pytest.mark.parametrize(("port", "msg"), [("imaps", MSG), ("imap", MSG), ("imaps", BIG)],
                         ids=["imaps", "imap", "imaps-17k"])
def test_append_with_nagle_does_not_stall(mxd_server_module: MxdServer, port: str,
                                          msg: bytes) -> None:
    """imaplib keeps Nagle on and sends an APPEND literal and its CRLF in two writes: the
    CRLF waits for the literal's ACK.  The server must ACK at once, not after the 40 ms
    delayed-ACK timer, so APPEND takes about as long as with a TCP_NODELAY client.

    Rounds alternate between the two clients so that load from elsewhere on the machine
    hits both; the stall, when present, adds at least 40 ms to every APPEND."""
    stock = _client(mxd_server_module, port, nodelay=False)
    tuned = _client(mxd_server_module, port, nodelay=True)
    times: dict[bool, list[float]] = {False: [], True: []}
    try:
        for i in range(30):
            for nodelay, c in ((False, stock), (True, tuned)):
                t0 = time.perf_counter()
                typ, _ = c.append("INBOX", None, None, msg % i)
                times[nodelay].append(time.perf_counter() - t0)
                assert typ == "OK"
    finally:
        stock.logout()
        tuned.logout()
    slow, fast = statistics.median(times[False]), statistics.median(times[True])
    assert slow < fast + 0.025, f"stock imaplib APPEND median {slow * 1000:.1f} ms, " \
                                f"with TCP_NODELAY {fast * 1000:.1f} ms"
