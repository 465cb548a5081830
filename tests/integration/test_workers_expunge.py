"""A message expunged by a session in one worker stays readable to a session of the
other worker that still shows it (RFC 9051 §7.5.1: the server may not send EXPUNGE
while no command is in progress, so a session keeps showing the message until its next
command that allows one; FETCH is not such a command).

``twistd mxd`` with ``[server] workers = 2``; imaplib sessions are opened until two are
served by different worker processes (checked through /proc).  The expunging worker
leaves the body for ``[store] expunged_body_grace`` seconds (here 6 s: the other worker
must pin the body within it, even on a loaded machine where a worker waited 2.5 s for a
CPU); the other
worker pins it when it hears of the expunge, so a FETCH long after the grace period
still gets the body, and the pin goes once the session has been told."""

from __future__ import annotations

import imaplib
import ssl
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.mxdserver import make_server
from tests.integration.test_workers import (
    _until,
    owner_of_connection,
    served_elsewhere,
    serving,
    worker_pids,
)

pytestmark = pytest.mark.integration

CONFIG = "[server]\nworkers = 2\ndrain_timeout = 5.0\n[store]\nexpunged_body_grace = 6.0\n"


def _pins(data_dir: Path) -> list[Path]:
    held = data_dir / "held"
    return [f for f in held.glob("*/*") if f.is_file()] if held.is_dir() else []


def _sessions_in_two_workers(s: Any) -> tuple[imaplib.IMAP4_SSL, imaplib.IMAP4_SSL]:
    """Two logged-in sessions served by different workers (sessions are opened until
    one lands in the other worker: tests.integration.test_workers.served_elsewhere)."""
    pids = list(worker_pids(s).values())
    ctx = ssl.create_default_context(cafile=str(s.ca_file))

    def connect() -> imaplib.IMAP4_SSL:
        return imaplib.IMAP4_SSL("127.0.0.1", s.ports["imaps"], ssl_context=ctx, timeout=30)

    a = connect()
    port = a.sock.getsockname()[1]
    first: int = _until(lambda: owner_of_connection(pids, port, s.ports["imaps"]),
                        "the session's worker")
    b, _ = served_elsewhere(s, s.ports["imaps"], connect, lambda c: c.shutdown(), first)
    for c in (a, b):
        c.login(s.user, s.password)
    return a, b


def test_body_expunged_in_another_worker_stays_readable(tmp_path: Path,
                                                        tls_files: dict[str, Path]) -> None:
    s = make_server(tmp_path, tls_files, extra_config=CONFIG)
    s.start()
    try:
        _until(lambda: len(worker_pids(s)) == 2 and all(
            serving(s, p) for p in worker_pids(s).values()), "two workers serving")
        a, b = _sessions_in_two_workers(s)
        box = f"exp{time.monotonic_ns()}"
        assert a.create(box)[0] == "OK"
        body = b"Subject: gone soon\r\n\r\nstill readable\r\n"
        assert a.append(box, None, None, body)[0] == "OK"
        assert a.select(box)[0] == "OK"
        assert b.select(box)[0] == "OK"
        b.store("1", "+FLAGS", "(\\Deleted)")
        assert b.expunge()[0] == "OK"
        # A's worker hears of it (within 0.2 s) and pins the body A still shows.
        [pin] = _until(lambda: _pins(s.data_dir), "the body pinned by A's worker")
        assert pin.read_bytes() == body
        # B's worker removes the file when the grace period ends; the pin keeps it.
        original = s.data_dir / "blobs" / pin.name[:2] / pin.name
        _until(lambda: not original.exists(), "the body file removed after the grace period")
        typ, data = a.fetch("1", "(BODY.PEEK[])")
        assert typ == "OK", data
        assert data[0][1] == body, data  # type: ignore[index]

        def told() -> bool:
            assert a.noop()[0] == "OK"
            return "EXPUNGE" in a.untagged_responses

        _until(told, "A told of the expunge")
        assert a.untagged_responses["EXPUNGE"] == [b"1"]
        _until(lambda: not _pins(s.data_dir), "the pin dropped once A was told")
        typ, data = a.uid("SEARCH", "ALL")
        assert data == [b""], data
        for c in (a, b):
            c.logout()
        log = s.log_path.read_text(errors="replace")
        assert "is missing" not in log
    finally:
        s.stop()


def test_body_expunged_by_a_worker_killed_in_its_grace_period_is_removed(
        tmp_path: Path, tls_files: dict[str, Path]) -> None:
    """A worker expunges a message and is SIGKILLed during the body's grace period (its
    timer dies with it): the main process, once it has reaped the worker, removes the
    body file a grace period later, and the restarted worker serves the mailbox."""
    import os
    import signal

    s = make_server(tmp_path, tls_files, extra_config=CONFIG)
    s.start()
    try:
        _until(lambda: len(worker_pids(s)) == 2 and all(
            serving(s, p) for p in worker_pids(s).values()), "two workers serving", 60)
        ctx = ssl.create_default_context(cafile=str(s.ca_file))
        m = imaplib.IMAP4_SSL("127.0.0.1", s.ports["imaps"], ssl_context=ctx, timeout=30)
        m.login(s.user, s.password)
        pids = worker_pids(s)
        victim: int = _until(lambda: owner_of_connection(
            list(pids.values()), m.sock.getsockname()[1], s.ports["imaps"]),
            "the session's worker")
        index = next(i for i, p in pids.items() if p == victim)
        box = f"kill{time.monotonic_ns()}"
        assert m.create(box)[0] == "OK"
        assert m.append(box, None, None, b"Subject: dropped\r\n\r\ngone\r\n")[0] == "OK"
        blob_id = _blob_of(s, box)
        body = s.data_dir / "blobs" / blob_id[:2] / blob_id
        assert m.select(box)[0] == "OK"
        m.store("1", "+FLAGS", "(\\Deleted)")
        assert m.expunge()[0] == "OK"
        os.kill(victim, signal.SIGKILL)
        assert body.exists(), "the grace period ended before the kill"
        _until(lambda: worker_pids(s)[index] != victim, "the killed worker restarted", 60)
        _until(lambda: not body.exists(), "the body file removed by the main process", 60)
        log = s.log_path.read_text(errors="replace")
        assert f"of worker pid {victim}; 1 body file(s) it kept" in log, log[-3000:]
        assert not list((s.data_dir / "held").glob(f"*-{victim}.*"))
    finally:
        s.stop()


def _blob_of(s: Any, box: str) -> str:
    """The body id of the one message in mailbox ``box`` (from the database)."""
    import sqlite3

    db = sqlite3.connect(f"file:{s.data_dir / 'mxd.sqlite3'}?mode=ro", uri=True)
    try:
        [(blob_id,)] = db.execute("SELECT m.blob_id FROM messages m JOIN mailboxes b"
                                  " ON b.id = m.mailbox_id WHERE b.name = ?", (box,)).fetchall()
        return str(blob_id)
    finally:
        db.close()
