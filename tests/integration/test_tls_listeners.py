"""TLS on every listener of ``twistd mxd``: ALPN as ALPACA recommends, and connections
that the server really closes after LOGOUT/QUIT over TLS.

ALPN (RFC 7301 §3.2): a hello without ALPN, or offering the port's own protocol ("imap"
on IMAP ports, "smtp" on SMTP and submission ports), is accepted; one offering only
other protocols gets the fatal ``no_application_protocol`` alert, and the failure is
logged with its reason.  Clients: Python's ``ssl`` with ``set_alpn_protocols`` and
``openssl s_client -alpn``.

Closing: 500 ``imaplib.IMAP4_SSL`` LOGIN/LOGOUT cycles from one address all succeed
(the per-address limit is 50) and leave no connection on the server side (a few
seconds); ``MXD_LONG_TESTS=1`` runs 2,000.
"""

from __future__ import annotations

import imaplib
import os
import smtplib
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.mxdserver import MxdServer
from tests.integration.tools import require_tool

IMAP_CYCLES = 2000 if os.environ.get("MXD_LONG_TESTS") else 500

# listener name → (ALPN protocol, STARTTLS dialect or None for implicit TLS)
TLS_LISTENERS = {
    "imaps": ("imap", None),
    "imap": ("imap", "imap"),
    "smtp": ("smtp", "smtp"),
    "submission": ("smtp", "smtp"),
    "submissions": ("smtp", None),
}


def _context(server: MxdServer, alpn: list[str] | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(server.ca_file))
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    return ctx


def _recv_line(sock: socket.socket) -> bytes:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        buf += chunk
    return buf


def _starttls_plain(sock: socket.socket, dialect: str) -> None:
    """Speak the plaintext part up to STARTTLS's go-ahead."""
    if dialect == "imap":
        assert _recv_line(sock).startswith(b"* OK")
        sock.sendall(b"a STARTTLS\r\n")
        assert _recv_line(sock).startswith(b"a OK")
        return
    line = _recv_line(sock)
    assert line.startswith(b"220"), line
    sock.sendall(b"EHLO client.example.test\r\n")
    while True:
        line = _recv_line(sock)
        assert line.startswith(b"250"), line
        if line[3:4] == b" ":
            break
    sock.sendall(b"STARTTLS\r\n")
    assert _recv_line(sock).startswith(b"220")


def _handshake(server: MxdServer, name: str, alpn: list[str] | None) -> ssl.SSLSocket:
    _, dialect = TLS_LISTENERS[name]
    sock = socket.create_connection(("127.0.0.1", server.ports[name]), timeout=10)
    try:
        if dialect is not None:
            _starttls_plain(sock, dialect)
        return _context(server, alpn).wrap_socket(sock, server_hostname="localhost")
    except BaseException:
        sock.close()
        raise


def _server_connections(port: int) -> list[str]:
    """States of the server's connected TCP sockets on ``port`` (from /proc/net/tcp):
    any state but LISTEN counts, CLOSE-WAIT above all."""
    states = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] != "0A":  # 0A: LISTEN
                states.append(fields[3])
    return states


def _wait_no_connections(port: int, timeout: float = 15.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        left = _server_connections(port)
        # 06 TIME_WAIT belongs to whichever side closed first; with the client closing
        # first it is on the client's port, but tolerate it either way: it holds no
        # server resources.
        left = [st for st in left if st != "06"]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


@pytest.mark.parametrize("name", sorted(TLS_LISTENERS))
def test_alpn_own_protocol_none_and_foreign(mxd_server_module: MxdServer, name: str) -> None:
    server = mxd_server_module
    proto, _ = TLS_LISTENERS[name]
    with _handshake(server, name, [proto]) as tls:
        assert tls.selected_alpn_protocol() == proto
    with _handshake(server, name, ["h2", proto]) as tls:
        assert tls.selected_alpn_protocol() == proto
    with _handshake(server, name, None) as tls:
        assert tls.selected_alpn_protocol() is None
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    other = "smtp" if proto == "imap" else "imap"
    for foreign in (["http/1.1"], [other]):
        with pytest.raises(ssl.SSLError) as info:
            _handshake(server, name, foreign).close()
        assert "NO APPLICATION PROTOCOL" in str(info.value).upper(), info.value
    deadline = time.monotonic() + 10
    while "handshake from 127.0.0.1 failed" not in server.log_tail(400):
        assert time.monotonic() < deadline, server.log_tail()
        time.sleep(0.05)
    assert "'http/1.1'" in server.log_tail(400)


def test_alpn_tls12(mxd_server_module: MxdServer) -> None:
    """TLS 1.2 (the capped listener): ALPN is negotiated in ServerHello there."""
    server = mxd_server_module
    sock = socket.create_connection(("127.0.0.1", server.ports["imap_tls12"]), timeout=10)
    _starttls_plain(sock, "imap")
    ctx = _context(server, ["imap"])
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with ctx.wrap_socket(sock, server_hostname="localhost") as tls:
        assert tls.version() == "TLSv1.2"
        assert tls.selected_alpn_protocol() == "imap"
    sock = socket.create_connection(("127.0.0.1", server.ports["imap_tls12"]), timeout=10)
    _starttls_plain(sock, "imap")
    ctx = _context(server, ["http/1.1"])
    with pytest.raises(ssl.SSLError, match="(?i)no.application.protocol"):
        ctx.wrap_socket(sock, server_hostname="localhost").close()
    sock.close()


@pytest.mark.parametrize(("name", "alpn", "accepted"), [
    ("imaps", "imap", True), ("imaps", "http/1.1", False),
    ("submissions", "smtp", True), ("submissions", "http/1.1", False),
    ("imap", "imap", True), ("submission", "smtp", True), ("smtp", "http/1.1", False),
])
def test_openssl_s_client_alpn(mxd_server_module: MxdServer, name: str, alpn: str,
                               accepted: bool) -> None:
    openssl = require_tool("openssl")
    server = mxd_server_module
    _, dialect = TLS_LISTENERS[name]
    args = [openssl, "s_client", "-connect", f"127.0.0.1:{server.ports[name]}",
            "-servername", "localhost", "-CAfile", str(server.ca_file), "-alpn", alpn]
    if dialect is not None:
        args += ["-starttls", dialect]
    r = subprocess.run(args, input=b"", capture_output=True, timeout=30)
    out = (r.stdout + r.stderr).decode(errors="replace")
    if accepted:
        assert f"ALPN protocol: {alpn}" in out, out
        assert "Verify return code: 0 (ok)" in out, out
    else:
        assert "alert no application protocol" in out or "alert number 120" in out, out
        assert "internal error" not in out, out


def test_imaps_login_logout_cycles_leave_no_connection(mxd_server_module: MxdServer) -> None:
    server = mxd_server_module
    port = server.ports["imaps"]
    ctx = _context(server, None)
    started = time.monotonic()
    for i in range(IMAP_CYCLES):
        imap = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=ctx, timeout=20)
        typ, _ = imap.login(server.user, server.password)
        assert typ == "OK", i
        typ, _ = imap.logout()
        assert typ == "BYE", i
    elapsed = time.monotonic() - started
    left = _wait_no_connections(port)
    assert left == [], f"server still holds connections in states {left} after {elapsed:.1f} s"


@pytest.mark.parametrize("name", ["imap", "imap_tls12"])
def test_imap_starttls_logout_closes(mxd_server_module: MxdServer, name: str) -> None:
    server = mxd_server_module
    port = server.ports[name]
    for _ in range(60):  # more than the per-address limit of 50
        imap = imaplib.IMAP4("127.0.0.1", port, timeout=20)
        imap.starttls(_context(server, None))
        imap.login(server.user, server.password)
        assert imap.logout()[0] == "BYE"
    assert _wait_no_connections(port) == []


@pytest.mark.parametrize("name", ["submissions", "submission", "smtp"])
def test_smtp_quit_over_tls_closes(mxd_server_module: MxdServer, name: str) -> None:
    server = mxd_server_module
    port = server.ports[name]
    ctx = _context(server, None)
    for _ in range(40):  # more than the SMTP per-address limit of 20
        if name == "submissions":
            smtp: smtplib.SMTP = smtplib.SMTP_SSL("127.0.0.1", port, context=ctx, timeout=20)
        else:
            smtp = smtplib.SMTP("127.0.0.1", port, timeout=20)
            smtp.starttls(context=ctx)
        smtp.ehlo("client.example.test")
        if name != "smtp":
            smtp.login(server.user, server.password)
        code, _ = smtp.quit()
        assert code == 221
    assert _wait_no_connections(port) == []
