"""``[server] workers = 2`` through ``twistd -n mxd``: what one worker process changes
reaches the sessions of the other (mxd.store.watch), with stock imaplib sessions
that are made to land in different workers (the server side of each connection is
found in /proc, see ``owner_of_connection``).

* A rename in worker X: a NOTIFY session in worker Y gets LIST with OLDNAME (RFC 5465
  §5.4), its LIST shows the new name, and the mailbox it has selected stays selected
  under the new name (its DELETE of the new name deselects it first: no BYE).
* Subscriptions and annotations changed in X: LIST (\\Subscribed) and METADATA in Y
  (RFC 5465 §5.5-§5.7), LSUB/LIST (SUBSCRIBED) in Y agree.
* A mailbox deleted in X while Y has it selected: Y's session ends with BYE.
* A worker SIGKILLed in the middle of an SMTP DATA: once it is restarted, the body
  files it was writing (tmp/, its unused pooled files) are gone, and the other
  worker's are all there.
"""

from __future__ import annotations

import imaplib
import os
import signal
import smtplib
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.mxdserver import MxdServer
from tests.integration.test_workers import (  # noqa: F401 - the fixture is used by name
    _until,
    owner_of_connection,
    served_elsewhere,
    worker_pids,
    workers_server,
)

pytestmark = pytest.mark.integration

FIND_WITHIN = 30.0  # seconds to find a connection served by the other worker


def both_serving(s: MxdServer) -> bool:
    """Have both workers said they serve (each its own line, not just one of them)?"""
    log = s.log_path.read_text(errors="replace")
    return all(f'msg="worker {i} serving' in log for i in (1, 2))


def _connect(s: MxdServer) -> imaplib.IMAP4_SSL:
    ctx = ssl.create_default_context(cafile=str(s.ca_file))
    m = imaplib.IMAP4_SSL("127.0.0.1", s.ports["imaps"], ssl_context=ctx, timeout=20)
    m.login(s.user, s.password)
    return m


def _owner(s: MxdServer, m: imaplib.IMAP4_SSL) -> int:
    pids = list(worker_pids(s).values())
    port = m.sock.getsockname()[1]
    owner: int = _until(lambda: owner_of_connection(pids, port, s.ports["imaps"]),
                        "the worker serving a connection", timeout=30)
    return owner


def sessions_in_two_workers(s: MxdServer) -> tuple[imaplib.IMAP4_SSL, imaplib.IMAP4_SSL]:
    """Two logged-in sessions served by different worker processes (sessions are opened
    until one lands in the other worker: ``served_elsewhere``)."""
    _until(lambda: both_serving(s), "both workers serving", timeout=FIND_WITHIN)
    first = _connect(s)
    pid = _owner(s, first)
    ctx = ssl.create_default_context(cafile=str(s.ca_file))
    second, _ = served_elsewhere(
        s, s.ports["imaps"],
        lambda: imaplib.IMAP4_SSL("127.0.0.1", s.ports["imaps"], ssl_context=ctx, timeout=20),
        lambda c: c.shutdown(), pid)
    second.login(s.user, s.password)
    return first, second


def _close(*sessions: imaplib.IMAP4_SSL) -> None:
    for m in sessions:
        try:
            m.logout()
        except (OSError, imaplib.IMAP4.error):
            pass


def pushed_until(m: imaplib.IMAP4_SSL, kind: str, want: bytes, timeout: float = 30.0
                 ) -> list[bytes]:
    """NOOP (a command lets imaplib read what the server pushed) until an untagged
    ``kind`` response containing ``want`` came; every ``kind`` response seen."""
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while True:
        typ, _ = m.noop()
        assert typ == "OK"
        got += [d for d in m.untagged_responses.pop(kind, []) if isinstance(d, bytes)]
        if any(want in d for d in got):
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"no {kind} with {want!r} within {timeout}s: {got}")
        time.sleep(0.05)


def _ok(resp: tuple[str, Any]) -> Any:
    typ, data = resp
    assert typ == "OK", data
    return data


def test_renames_subscriptions_metadata_and_deletes_cross_workers(
        workers_server: MxdServer) -> None:  # noqa: F811 - the imported fixture
    """Changes made by a session in one worker reach a session in the other (see the
    module doc), each within a bounded poll."""
    s = workers_server
    x, y = sessions_in_two_workers(s)
    try:
        _ok(x.create("Work"))
        _ok(x.create("Other"))
        _ok(y.select("Work"))
        _ok(y.xatom("NOTIFY", "SET (selected (MessageNew MessageExpunge)) (personal "
                    "(MailboxName SubscriptionChange MailboxMetadataChange "
                    "ServerMetadataChange))"))
        y.untagged_responses.clear()

        _ok(x.rename("Work", "Play"))
        pushed_until(y, "LIST", b'"Play" ("OLDNAME" ("Work"))')
        names = b"\n".join(_ok(y.list()))
        assert b'"Play"' in names and b'"Work"' not in names, names

        _ok(x.subscribe("Play"))
        pushed_until(y, "LIST", b'(\\Subscribed) "/" "Play"')
        assert any(b'"Play"' in d for d in _ok(y.lsub()) if d)
        _ok(x.unsubscribe("Play"))
        pushed_until(y, "LIST", b'() "/" "Play"')
        assert not any(b'"Play"' in d for d in _ok(y.lsub()) if d)

        _ok(x.xatom("SETMETADATA", '"Play" (/private/comment "from x")'))
        pushed_until(y, "METADATA", b'"Play" /private/comment')
        _ok(x.xatom("SETMETADATA", '"" (/private/theme "dark")'))
        pushed_until(y, "METADATA", b'"" /private/theme')

        _ok(x.delete("Other"))
        pushed_until(y, "LIST", b'(\\NonExistent) "/" "Other"')

        # y still has the renamed mailbox selected, under its new name: deleting it
        # deselects it first (a stale name would leave it selected, and its deletion
        # would end the session with BYE).
        _ok(y.delete("Play"))
        _ok(y.noop())
        _ok(y.select("INBOX"))

        # A mailbox y has selected, deleted in x: y's session ends (BYE).
        _ok(x.create("Gone"))
        _ok(y.select("Gone"))
        _ok(x.delete("Gone"))
        deadline = time.monotonic() + 10
        with pytest.raises(imaplib.IMAP4.abort, match="deleted"):
            while time.monotonic() < deadline:
                y.noop()
                time.sleep(0.05)
    finally:
        _close(x, y)


def _files_of(tmp_dir: Path, pid: int) -> list[Path]:
    name = f"{socket.gethostname()}-{pid}."
    return [f for f in tmp_dir.iterdir() if f.name.startswith(name)]


def _listed(tmp_dir: Path, pid: int) -> list[str]:
    path = tmp_dir / f"{socket.gethostname()}-{pid}.pool"
    return path.read_text().split() if path.exists() else []


def _smtp(s: MxdServer) -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", s.ports["smtp"], timeout=20)


def _data_in_progress(s: MxdServer, client: smtplib.SMTP) -> tuple[smtplib.SMTP, int]:
    """``client``'s session in the middle of DATA, and the pid of the worker serving it."""
    client.ehlo("client.example.test")
    assert client.mail("sender@example.org")[0] == 250
    assert client.rcpt(s.user)[0] == 250
    assert client.docmd("DATA")[0] == 354
    client.send(b"Subject: in flight\r\n\r\n" + b"x" * 200_000 + b"\r\n")
    pids = list(worker_pids(s).values())
    owner: int = _until(lambda: owner_of_connection(pids, client.sock.getsockname()[1],
                                                    s.ports["smtp"]),
                        "the worker serving an SMTP session", timeout=30)
    return client, owner


def test_files_of_a_killed_worker_are_removed_at_its_restart(
        workers_server: MxdServer) -> None:  # noqa: F811 - the imported fixture
    """Both workers in the middle of an SMTP DATA; one is SIGKILLed: the main process
    removes that worker's tmp files and unused pooled body files when it restarts it,
    and the other worker's message, written meanwhile, is delivered whole."""
    s = workers_server
    _until(lambda: both_serving(s), "both workers serving", timeout=FIND_WITHIN)
    tmp_dir = s.data_dir / "tmp"
    clients: list[smtplib.SMTP] = []
    try:
        first, victim = _data_in_progress(s, _smtp(s))
        clients.append(first)
        # A session in the other worker (sessions opened until one lands there).
        elsewhere, _ = served_elsewhere(s, s.ports["smtp"], lambda: _smtp(s),
                                        lambda c: c.close(), victim)
        live, other = _data_in_progress(s, elsewhere)
        clients.append(live)
        assert other != victim
        index = next(i for i, p in worker_pids(s).items() if p == victim)
        # Each body arrives in a pooled file (listed) or in tmp/ (named): either way
        # both workers have files of their own now.
        _until(lambda: _listed(tmp_dir, victim), "the victim's pool list", timeout=30)
        _until(lambda: _listed(tmp_dir, other), "the other worker's pool list", timeout=30)
        def exist(ids: list[str]) -> bool:
            return all((s.data_dir / "blobs" / b[:2] / b).exists() for b in ids)

        theirs = _listed(tmp_dir, victim)  # (listed before they are made)
        _until(lambda: exist(theirs), "the victim's pooled files", timeout=30)
        os.kill(victim, signal.SIGKILL)
        _until(lambda: worker_pids(s)[index] != victim, "the killed worker restarted",
               timeout=60)
        _until(lambda: not _files_of(tmp_dir, victim), "the killed worker's tmp files gone",
               timeout=30)
        assert not [b for b in theirs if (s.data_dir / "blobs" / b[:2] / b).exists()]
        mine = _listed(tmp_dir, other)
        assert mine
        _until(lambda: exist(mine), "the other worker's pooled files", timeout=30)
        assert f"of worker pid {victim}" in s.log_path.read_text(errors="replace")
        # The live worker's message was not touched: it completes and is stored.
        live.send(b"the end\r\n.\r\n")
        assert live.getreply()[0] == 250
        ctx = ssl.create_default_context(cafile=str(s.ca_file))
        with imaplib.IMAP4_SSL("127.0.0.1", s.ports["imaps"], ssl_context=ctx) as m:
            m.login(s.user, s.password)
            m.select("INBOX", readonly=True)
            typ, data = m.fetch("1:*", "(BODY.PEEK[TEXT])")
            assert typ == "OK"
            bodies = [part[1] for part in data if isinstance(part, tuple)]
            assert [len(b) for b in bodies] == [200_002 + 9]
            assert bodies[0].endswith(b"the end\r\n")
    finally:
        for c in clients:
            try:
                c.close()
            except OSError:
                pass
