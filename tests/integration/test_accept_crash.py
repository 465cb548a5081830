"""Crash injection at the SMTP accept: one transaction, so all of a message or none.

A message for local and remote recipients used to be committed in two writer
transactions (local copies, then queue rows).  The failpoint ``accept.between``
(mxd.store.failpoints) kills ``twistd mxd`` at exactly that point, now inside the one
accept transaction.  After a restart the message must be absent (no 250 was sent), and the
client's retry must leave it stored exactly once in each mailbox and once in the queue
(DESIGN.md "Contracts": acknowledged after it is durable, never delivered twice).
"""

from __future__ import annotations

import smtplib
import sqlite3
import ssl
import time
from pathlib import Path

import pytest

from mxd.store.failpoints import ENV, EXIT_STATUS
from tests.integration.mxdserver import MxdServer, make_server

LOCALS = ("alice@example.test", "bob@example.test")
REMOTE = "far@remote.test"


def _send(server: MxdServer, subject: str) -> str:
    """Submit one message for two local and one remote recipient; the 250's text."""
    ctx = ssl.create_default_context(cafile=str(server.ca_file))
    with smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=30) as s:
        s.starttls(context=ctx)
        s.login(server.user, server.password)
        s.mail(server.user)
        for r in (*LOCALS, REMOTE):
            code, _ = s.rcpt(r)
            assert code == 250
        code, text = s.data(f"Subject: {subject}\r\n\r\nbody\r\n".encode())
        assert code == 250, (code, text)
        return text.decode()


def _stored(data_dir: Path) -> tuple[int, int, list[str]]:
    """(message rows, queued recipients, queue ids), read from the database while the
    server is stopped."""
    with sqlite3.connect(data_dir / "mxd.sqlite3") as c:
        messages = c.execute("SELECT count(*) FROM messages").fetchone()[0]
        rcpts = c.execute("SELECT count(*) FROM queue_recipients").fetchone()[0]
        ids = [r[0] for r in c.execute("SELECT queue_id FROM queue_messages")]
    return messages, rcpts, ids


def test_kill_inside_accept_leaves_nothing_and_retry_stores_once(
        tmp_path: Path, tls_files: dict[str, Path]) -> None:
    """Killed between the local copies and the queue rows: no 250, nothing stored after
    restart; the retry is accepted once (two local copies, one queued recipient, under
    the queue id that the 250 named)."""
    # One process: the failpoint ends the server itself (with workers it ends a worker,
    # see test_worker_killed_inside_accept_leaves_nothing below).
    server = make_server(tmp_path, tls_files,
                         extra_config="[server]\nworkers = 1\n[queue]\nhold_all = true\n")
    server.start(env={ENV: "accept.between"})
    try:
        with pytest.raises(smtplib.SMTPServerDisconnected):
            _send(server, "first try")
        assert server.proc is not None
        assert server.proc.wait(30) == EXIT_STATUS, server.log_tail()
    finally:
        server.kill()

    server.start()  # the same data directory, no failpoint
    try:
        server.stop()
        assert _stored(server.data_dir) == (0, 0, [])
        server.start()
        text = _send(server, "second try")
    finally:
        server.stop()
    messages, rcpts, ids = _stored(server.data_dir)
    assert (messages, rcpts) == (len(LOCALS), 1)
    assert len(ids) == 1 and text.endswith(f"accepted as {ids[0]}")


def test_worker_killed_inside_accept_leaves_nothing(
        tmp_path: Path, tls_files: dict[str, Path]) -> None:
    """With two workers the failpoint ends the worker that runs the transaction: the
    client gets no 250, the main process starts the worker again, and once stopped the
    database holds neither the local copies nor the queue rows."""
    server = make_server(tmp_path, tls_files,
                         extra_config="[server]\nworkers = 2\n[queue]\nhold_all = true\n")
    server.start(env={ENV: "accept.between"})
    try:
        with pytest.raises(smtplib.SMTPServerDisconnected):
            _send(server, "first try")
        deadline = time.monotonic() + 30
        while "starting it again" not in server.log_path.read_text(errors="replace"):
            assert time.monotonic() < deadline, server.log_tail()
            time.sleep(0.05)
        assert server.proc is not None and server.proc.poll() is None  # main still runs
    finally:
        server.stop()
    assert _stored(server.data_dir) == (0, 0, [])
