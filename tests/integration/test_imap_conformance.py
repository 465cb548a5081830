"""IMAP behaviour that ordinary clients depend on, against ``twistd mxd`` with Python's
imaplib and raw sockets (RFC 3501, RFC 9051 and the extension RFCs)."""

from __future__ import annotations

import imaplib
import os
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.mxdserver import MxdServer


def _ctx(server: MxdServer) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(server.ca_file))


@pytest.fixture
def imap(mxd_server_module: MxdServer) -> Iterator[imaplib.IMAP4_SSL]:
    server = mxd_server_module
    c = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=_ctx(server),
                          timeout=30)
    c.login(server.user, server.password)
    try:
        yield c
    finally:
        try:
            c.logout()
        except (imaplib.IMAP4.error, OSError):
            pass


def _raw(server: MxdServer) -> ssl.SSLSocket:
    sock = socket.create_connection(("127.0.0.1", server.ports["imaps"]), timeout=30)
    tls = _ctx(server).wrap_socket(sock, server_hostname="localhost")
    f = tls.makefile("rb")
    assert f.readline().startswith(b"* OK")
    tls.sendall(f'a LOGIN "{server.user}" "{server.password}"\r\n'.encode())
    while not (line := f.readline()).startswith(b"a "):
        pass
    assert line.startswith(b"a OK"), line
    tls._test_file = f  # type: ignore[attr-defined]
    return tls


def _disk_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def test_append_extra_literal_refused_before_its_data(mxd_server_module: MxdServer) -> None:
    """``APPEND INBOX {1 MB+}... {40 MB+}...``: the second literal cannot belong to the
    command; the server says BYE at its announcement and writes none of it."""
    server = mxd_server_module
    tls = _raw(server)
    f = tls._test_file  # type: ignore[attr-defined]
    before = _disk_bytes(server.data_dir)
    body = b"Subject: big\r\n\r\n" + b"x" * (1 << 20)
    tls.sendall(b"b APPEND INBOX {%d+}\r\n" % len(body) + body + b" {41943040+}\r\n")
    sent = 0
    try:
        for _ in range(40):  # up to 10 MB of the announced 40 MB
            tls.sendall(b"y" * (256 * 1024))
            sent += 256 * 1024
    except OSError:
        pass  # the server closed: what the test wants
    # Measured while the connection may still be open (before the fix the server
    # was still writing the second literal to a file here).
    deadline = time.monotonic() + 5
    while (grown := _disk_bytes(server.data_dir) - before) >= 1 << 20:
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    lines = []
    try:
        while line := f.readline():
            lines.append(line)
    except OSError:
        pass
    tls.close()
    assert any(line.startswith(b"* BYE") and b"MULTIAPPEND" in line for line in lines), lines
    assert grown < 1 << 20, f"data dir grew by {grown} bytes after {sent} bytes were sent"
