"""IMAP behaviour that ordinary clients depend on, against ``twistd mxd`` with Python's
imaplib and raw sockets (RFC 3501, RFC 9051 and the extension RFCs)."""

from __future__ import annotations

import imaplib
import os
import re
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
    """``APPEND INBOX {1 MB+}... {51 MB+}...``: a second message (MULTIAPPEND, RFC 3502)
    over APPENDLIMIT (50 MiB by default); the server says BYE at its announcement (the
    octets of a non-synchronising literal are on their way) and writes none of it."""
    server = mxd_server_module
    tls = _raw(server)
    f = tls._test_file  # type: ignore[attr-defined]
    before = _disk_bytes(server.data_dir)
    body = b"Subject: big\r\n\r\n" + b"x" * (1 << 20)
    tls.sendall(b"b APPEND INBOX {%d+}\r\n" % len(body) + body + b" {%d+}\r\n" % (51 << 20))
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
    assert any(line.startswith(b"* BYE") and b"TOOBIG" in line for line in lines), lines
    assert grown < 1 << 20, f"data dir grew by {grown} bytes after {sent} bytes were sent"


def _errors_in_log(server: MxdServer) -> list[str]:
    return [line for line in server.log_path.read_text(errors="replace").splitlines()
            if "#error]" in line or "#critical]" in line]


def test_client_mistakes_and_conformance_with_imaplib(mxd_server_module: MxdServer,
                                                      imap: imaplib.IMAP4_SSL) -> None:
    """One imaplib session through the cases of the conformance list that need the real
    store; none of the client's mistakes is logged at error level."""
    server = mxd_server_module
    errors_before = len(_errors_in_log(server))
    box = f"conf{time.monotonic_ns()}"
    assert imap.create(box)[0] == "OK"
    for body in (b"Subject: one\r\n\r\n1\r\n", b"Subject: two\r\n\r\n2\r\n"):
        assert imap.append(box, None, None, body)[0] == "OK"
    # EXAMINE right after the APPENDs: RECENT as STATUS counts it.
    typ, data = imap.status(box, "(RECENT)")
    assert b"RECENT 2" in data[0], data
    imap.select(box, readonly=True)
    assert imap.untagged_responses.get("RECENT") == [b"2"], imap.untagged_responses
    imap.select(box)
    # A new keyword: FLAGS and PERMANENTFLAGS first.
    typ, data = imap.store("1", "+FLAGS", "($Label7)")
    assert typ == "OK"
    assert b"$Label7" in imap.untagged_responses.get("FLAGS", [b""])[-1], imap.untagged_responses
    # A 300-character keyword: a clean NO.
    typ, data = imap.store("1", "+FLAGS", "(" + "k" * 300 + ")")
    assert typ == "NO" and b"[LIMIT]" in data[0], data
    # MOVE into the selected mailbox: OK with COPYUID, the message gets a new UID.
    typ, data = imap.uid("MOVE", "1", box)
    assert typ == "OK", data
    typ, data = imap.uid("FETCH", "1:*", "(UID)")
    assert [re.search(rb"UID (\d+)", d).group(1) for d in data] == [b"2", b"3"], data  # type: ignore[union-attr]
    # Names: not modified UTF-7 is NO; RENAME refuses what CREATE refuses.
    typ, data = imap.create("&Jjo")
    assert typ == "NO", data
    typ, data = imap.rename(box, '"a*b%c"')
    assert typ == "NO", data
    typ, data = imap.create(f"{box}//x")
    assert typ == "NO", data
    imap.close()
    # The server logs before it answers, and writes its log unbuffered.
    assert _errors_in_log(server)[errors_before:] == []


def test_fetch_after_another_session_expunged(mxd_server_module: MxdServer) -> None:
    """Session A still shows a message that session B expunged: A's FETCH of it gets the
    body (kept readable until A is told), OK, and no error-level log; A's NOOP then
    reports the EXPUNGE.  Before: NO [CANNOT] and "blob ... is missing" at error level."""
    server = mxd_server_module
    errors_before = len(_errors_in_log(server))
    sessions = []
    for _ in range(2):
        c = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=_ctx(server),
                              timeout=30)
        c.login(server.user, server.password)
        sessions.append(c)
    a, b = sessions
    box = f"exp{time.monotonic_ns()}"
    assert a.create(box)[0] == "OK"
    body = b"Subject: gone soon\r\n\r\nstill readable\r\n"
    assert a.append(box, None, None, body)[0] == "OK"
    a.select(box)
    b.select(box)
    b.store("1", "+FLAGS", "(\\Deleted)")
    assert b.expunge()[0] == "OK"
    typ, data = a.fetch("1", "(BODY.PEEK[])")
    assert typ == "OK", data
    assert data[0][1] == body, data  # type: ignore[index]
    # With workers, B may run in another process: A hears of the expunge within a
    # fraction of a second (mxd.store.watch), so poll NOOP with a bound.
    deadline = time.monotonic() + 10
    while True:
        assert a.noop()[0] == "OK"
        if "EXPUNGE" in a.untagged_responses or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert a.untagged_responses.get("EXPUNGE") == [b"1"], a.untagged_responses
    typ, data = a.uid("SEARCH", "ALL")
    assert data == [b""], data  # the mailbox is empty now
    for c in sessions:
        c.logout()
    assert _errors_in_log(server)[errors_before:] == []


def test_list_extended_and_lsub_with_imaplib(imap: imaplib.IMAP4_SSL) -> None:
    """RFC 5258 / RFC 3501 §6.3.9 cases against the real store."""
    top = f"hc{time.monotonic_ns()}"
    assert imap.create(f"{top}/a/b")[0] == "OK"
    assert imap.create(f"{top}/gone")[0] == "OK"
    for name in (f"{top}/a/b", f"{top}/gone"):
        assert imap.subscribe(name)[0] == "OK"
    assert imap.delete(f"{top}/gone")[0] == "OK"
    typ, data = imap.lsub('""', f"{top}/%")
    assert typ == "OK"
    assert sorted(data) == sorted([f'(\\Noselect) "/" "{top}/a"'.encode(),
                                   f'(\\Noselect) "/" "{top}/gone"'.encode()]), data
    typ, data = imap._simple_command("LIST", '(SUBSCRIBED RECURSIVEMATCH)', '""', f"{top}/%",
                                     "RETURN", "(CHILDREN)")
    assert typ == "OK"
    _, data = imap._untagged_response(typ, data, "LIST")
    assert f'(\\HasChildren) "/" "{top}/a" ("CHILDINFO" ("SUBSCRIBED"))'.encode() in data, data
    assert f'(\\NonExistent \\Subscribed) "/" "{top}/gone"'.encode() in data, data
    typ, data = imap._simple_command("LIST", "(SUBSCRIBED)", '""', f"{top}/*")
    _, data = imap._untagged_response(typ, data, "LIST")
    assert f'(\\NonExistent \\Subscribed) "/" "{top}/gone"'.encode() in data, data
    for options, pattern in (("(RECURSIVEMATCH)", '""'), ("(BOGUS)", "*")):
        with pytest.raises(imaplib.IMAP4.error, match="BAD"):
            imap._simple_command("LIST", options, '""', pattern)
