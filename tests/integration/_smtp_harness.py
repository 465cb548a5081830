"""A stand-alone SMTP server process for integration tests, built from the real parts.

``python -m tests.integration._smtp_harness CONFIG.json`` opens a SQLiteStore (with the
queue tables), a LocalDirectory with test accounts, the real SASLServer and Queue, and
listens with ``mxd.smtp.service.smtp_factory`` on the ports named in the config:
``smtp``, ``submission``, ``submissions`` and ``submission_tls12`` (TLS capped at 1.2).

The fixture ``smtp_harness`` starts it in a temp dir, waits for the ports and stops it;
``inbox(account)`` reads delivered messages straight from the store's database.
Environment: HARNESS_QUIET=1 turns the server's log off (benchmarks), HARNESS_BLOB_THREAD=1
creates body files on the thread pool, MXD_PROFILE=path runs it under cProfile.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from tests.integration.tools import STARTUP_TIMEOUT, free_port

ROOT = Path(__file__).resolve().parents[2]
USER = "alice@example.test"
PASSWORD = "s3cret-pass"
USER2 = "bob@example.test"
PASSWORD2 = "b0b-password"
SCRYPT_N = 2**12  # cheap PLAIN checks in tests


def main(config_path: str) -> None:  # pragma: no cover - runs in the subprocess
    from twisted.internet import reactor as _reactor
    from twisted.internet.defer import ensureDeferred
    from twisted.internet.threads import deferToThread
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from mxd.directory.local import DirectorySettings, LocalDirectory
    from mxd.queue.queue import Queue
    from mxd.sasl.ratelimit import AuthLimiter, AuthLimiterSettings
    from mxd.sasl.server import SASLServer, SASLSettings
    from mxd.smtp.server import SMTPServerSettings
    from mxd.smtp.service import smtp_factory
    from mxd.store.queuedb import QUEUE_MIGRATIONS
    from mxd.store.sqlite import SQLiteStore
    from mxd.store.sqlitequeue import SQLiteQueueStore
    from mxd.tls import TLSSettings, load_server_tls

    reactor: Any = _reactor
    cfg = json.loads(Path(config_path).read_text())
    if not os.environ.get("HARNESS_QUIET"):
        globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    store = SQLiteStore(Path(cfg["data_dir"]), reactor)
    store.register_schema("queue", QUEUE_MIGRATIONS)
    directory = LocalDirectory(store, DirectorySettings(domains=("example.test",),
                                                        scrypt_n=SCRYPT_N))
    sasl = SASLServer(directory.lookup_secrets,
                      SASLSettings(fake_scrypt_n=SCRYPT_N), AuthLimiter(reactor, AuthLimiterSettings()),
                      reactor, "mx.example.test")
    queue = Queue(SQLiteQueueStore(store), reactor)
    tls = load_server_tls(TLSSettings(Path(cfg["cert"]), Path(cfg["key"])))
    tls12 = load_server_tls(TLSSettings(Path(cfg["cert"]), Path(cfg["key"]),
                                        max_version="TLSv1.2"))
    settings = SMTPServerSettings(max_connections_per_ip=200)

    async def start() -> None:
        await store.open()
        for name, pw in ((USER, PASSWORD), (USER2, PASSWORD2)):
            if await store.get_account(name) is None:
                await directory.add_account(name, pw, [name])
        for name, port in cfg["ports"].items():
            role = "submission" if name == "submission_tls12" else name
            f = smtp_factory(role=role, settings=settings, store=store, directory=directory,
                             sasl=sasl, outbound=queue,
                             tls=tls12 if name == "submission_tls12" else tls,
                             clock=reactor, hostname="mx.example.test",
                             run_blocking=(lambda f: deferToThread(f))
                             if os.environ.get("HARNESS_BLOB_THREAD") else None)
            reactor.listenTCP(port, f, interface="127.0.0.1")
        print("HARNESS READY", flush=True)

    def failed(f: Any) -> None:
        print("HARNESS FAILED", f.getTraceback(), flush=True)
        reactor.stop()

    reactor.callWhenRunning(lambda: ensureDeferred(start()).addErrback(failed))
    reactor.addSystemEventTrigger("before", "shutdown", store.close)
    reactor.run()


@attrs.define
class Harness:
    base: Path
    tls_files: dict[str, Path]
    ports: dict[str, int] = attrs.Factory(
        lambda: {n: free_port() for n in ("smtp", "submission", "submissions", "submission_tls12")})
    proc: subprocess.Popen[bytes] | None = None
    user: str = USER
    password: str = PASSWORD
    user2: str = USER2
    password2: str = PASSWORD2

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    @property
    def ca_file(self) -> Path:
        return self.tls_files["ca"]

    @property
    def log_path(self) -> Path:
        return self.base / "harness.log"

    def start(self, timeout: float = STARTUP_TIMEOUT) -> None:
        self.data_dir.mkdir(exist_ok=True)
        cfg = self.base / "harness.json"
        cfg.write_text(json.dumps({"data_dir": str(self.data_dir), "ports": self.ports,
                                   "cert": str(self.tls_files["cert"]),
                                   "key": str(self.tls_files["key"])}))
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration._smtp_harness", str(cfg)],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"))
        log.close()
        deadline = time.monotonic() + timeout
        pending = set(self.ports)
        while pending:
            if self.proc.poll() is not None:
                raise RuntimeError(f"harness exited:\n{self.log_tail()}")
            for name in list(pending):
                try:
                    socket.create_connection(("127.0.0.1", self.ports[name]), 0.5).close()
                    pending.discard(name)
                except OSError:
                    pass
            if pending:
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"harness did not listen:\n{self.log_tail()}")
                time.sleep(0.05)

    def log_tail(self, n: int = 80) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def inbox(self, account: str, mailbox: str = "INBOX") -> list[dict[str, Any]]:
        """Messages in a mailbox, read from the store's database (WAL, read-only)."""
        return read_mailbox(self.data_dir, account, mailbox)

    def queued(self) -> list[dict[str, Any]]:
        """Rows of the outbound queue (message level)."""
        db = sqlite3.connect(f"file:{self.data_dir / 'mxd.sqlite3'}?mode=ro", uri=True)
        db.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in db.execute("SELECT * FROM queue_messages")]
        finally:
            db.close()


def read_mailbox(data_dir: Path, account: str, mailbox: str = "INBOX") -> list[dict[str, Any]]:
    """Messages of one mailbox straight from a store's SQLite database and body files."""
    db = sqlite3.connect(f"file:{data_dir / 'mxd.sqlite3'}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT m.uid, m.blob_id, m.requiretls, m.tls_required_no, m.mail_from, "
            "m.received_via FROM messages m JOIN mailboxes b ON m.mailbox_id = b.id "
            "JOIN accounts a ON b.account_id = a.id WHERE a.name = ? AND b.name = ? "
            "ORDER BY m.uid", (account, mailbox)).fetchall()
    finally:
        db.close()
    out = []
    for uid, blob_id, rtls, trn, mail_from, via in rows:
        body = (data_dir / "blobs" / blob_id[:2] / blob_id).read_bytes()
        out.append({"uid": uid, "body": body, "requiretls": bool(rtls),
                    "tls_required_no": bool(trn), "mail_from": mail_from, "via": via})
    return out


@pytest.fixture
def smtp_harness(tmp_path: Path, tls_files: dict[str, Path]) -> Iterator[Harness]:
    """A running SMTP harness (real store, directory, SASL, queue) on free loopback ports."""
    h = Harness(tmp_path, tls_files)
    h.start()
    try:
        yield h
    finally:
        h.stop()


if __name__ == "__main__":  # pragma: no cover
    if os.environ.get("MXD_PROFILE"):
        import cProfile

        cProfile.run("main(sys.argv[1])", os.environ["MXD_PROFILE"])
    else:
        main(sys.argv[1])
