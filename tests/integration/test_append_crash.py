"""Crash injection at an IMAP APPEND whose body fsync runs alongside its commit.

The store commits an APPEND's rows while the new body's fsync runs on a helper thread,
and answers OK only after both (mxd.store.unsynced).  ``twistd mxd`` is killed right
after such a commit (failpoint ``overlap.after_commit``: the body is still in the page
cache, as after kill -9) or after its body was truncated first (``overlap.body_lost``:
as an operating-system crash could leave it).  Stock imaplib never gets the OK of that
APPEND.  After a restart every acknowledged message is there, byte for byte; the
unacknowledged one is there intact or not at all, never with a broken body, and the
next APPEND works (DESIGN.md "Contracts").
"""

from __future__ import annotations

import imaplib
import sqlite3
import ssl
from pathlib import Path

import pytest

from mxd.store.failpoints import ENV, EXIT_STATUS
from tests.integration.mxdserver import MxdServer, make_server


def _body(i: int) -> bytes:
    return (f"From: a@example.test\r\nSubject: crash test {i}\r\n\r\n".encode()
            + b"line of the body\r\n" * 200)


def _imap(server: MxdServer) -> imaplib.IMAP4_SSL:
    ctx = ssl.create_default_context(cafile=str(server.ca_file))
    m = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=ctx, timeout=30)
    m.login(server.user, server.password)
    return m


def _append_until_killed(server: MxdServer) -> int:
    """APPEND one message after another until the server dies; how many got OK.  (The
    first APPENDs may get a body file from tmp/, which is fsynced before the commit.)"""
    acked = 0
    m = _imap(server)
    try:
        for i in range(50):
            try:
                typ, _ = m.append("INBOX", None, None, _body(i))
            except (imaplib.IMAP4.abort, OSError, EOFError):
                return acked
            assert typ == "OK"
            acked += 1
    finally:
        try:
            m.shutdown()
        except OSError:
            pass
    raise AssertionError("the failpoint was never reached")


def _bodies(server: MxdServer) -> list[bytes]:
    m = _imap(server)
    try:
        m.select("INBOX")
        typ, data = m.fetch("1:*", "(BODY.PEEK[])")
        if typ != "OK" or data == [None]:
            return []
        return [d[1] for d in data if isinstance(d, tuple)]
    finally:
        m.logout()


@pytest.mark.parametrize("failpoint", ["overlap.after_commit", "overlap.body_lost"])
def test_killed_append_keeps_every_acknowledged_message_and_no_broken_one(
        tmp_path: Path, tls_files: dict[str, Path], failpoint: str) -> None:
    # One process, so that the failpoint ends the server itself (with [server] workers
    # it ends a worker, which the main process starts again).
    server = make_server(tmp_path, tls_files, extra_config="[server]\nworkers = 1\n")
    server.start(env={ENV: failpoint})
    try:
        acked = _append_until_killed(server)
        assert server.proc is not None
        assert server.proc.wait(30) == EXIT_STATUS, server.log_tail()
    finally:
        server.kill()
    server.start()
    try:
        bodies = _bodies(server)
        expected = [_body(i) for i in range(acked)]
        if failpoint == "overlap.body_lost":
            assert bodies == expected  # the lost body's message was removed
        else:
            assert bodies in (expected, expected + [_body(acked)])  # intact, or not there
        m = _imap(server)
        typ, _ = m.append("INBOX", None, None, _body(99))
        assert typ == "OK"
        m.logout()
        assert _bodies(server)[-1] == _body(99)
    finally:
        server.stop()
    with sqlite3.connect(server.data_dir / "mxd.sqlite3") as db:
        assert db.execute("SELECT count(*) FROM unsynced_blobs").fetchone() == (0,)
