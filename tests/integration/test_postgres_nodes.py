"""Two ``twistd mxd`` nodes on one PostgreSQL database and one shared body directory.

* Mail accepted by node A is seen by an IDLE session (imaplib) on node B within a second
  (LISTEN/NOTIFY).
* Queued messages to an aiosmtpd sink are delivered by both nodes together, each exactly
  once (FOR UPDATE SKIP LOCKED): 100 here, 500 with MXD_PG_LONG=1.
* Node A SIGKILLed while delivering: node B takes its recipients when A's leases expire and
  completes; only messages in flight at the kill may arrive twice.
"""

from __future__ import annotations

import asyncio
import email
import imaplib
import os
import smtplib
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.mxdserver import MxdServer
from tests.integration.pglab import PGCluster
from tests.integration.runqueue import RunQueueWatch, children, owner_of_connection
from tests.integration.tools import free_port, require_module

pytestmark = pytest.mark.integration

LONG = os.environ.get("MXD_PG_LONG") == "1"
STOPPED = (0, -15)  # twistd ends by its SIGTERM after a clean shutdown


class Node(MxdServer):
    """An mxd node: its own data directory and ports, the shared database and bodies."""

    def __init__(self, name: str, base: Path, tls_files: dict[str, Path], **kw: Any) -> None:
        self.node_name = name
        super().__init__(base, tls_files, **kw)

    def write_config(self) -> None:
        super().write_config()
        text = self.config_path.read_text()
        self.config_path.write_text(
            text.replace('hostname = "mx.example.test"',
                         f'hostname = "{self.node_name}.example.test"', 1))


class Sink:
    """An aiosmtpd server that records (EHLO name, Message-ID) and may answer slowly."""

    def __init__(self, delay: float = 0.0) -> None:
        require_module("aiosmtpd")
        from aiosmtpd.controller import Controller
        self.port = free_port()
        self.got: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        sink = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                if delay:
                    await asyncio.sleep(delay)
                msg = email.message_from_bytes(envelope.content)
                with sink.lock:
                    sink.got.append((str(session.host_name), str(msg["Message-ID"])))
                return "250 2.0.0 OK"

        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)

    def ids(self) -> list[str]:
        with self.lock:
            return [m for _, m in self.got]

    def by_node(self) -> dict[str, int]:
        with self.lock:
            out: dict[str, int] = {}
            for helo, _ in self.got:
                out[helo] = out.get(helo, 0) + 1
            return out


def _node_config(dsn: str, blobs: Path, sink_port: int, lease: float,
                 max_concurrent: int) -> str:
    return f'''
[store]
backend = "postgresql"
dsn = "{dsn}"
blob_dir = "{blobs}"
pool_size = 4
connect_timeout = 2.0

[queue]
lease = {lease}
max_concurrent = {max_concurrent}
max_concurrent_per_domain = {max_concurrent}

[transports.sink]
kind = "smtp"
host = "127.0.0.1"
port = {sink_port}
tls = "none"

[[routes]]
transport = "sink"
to_domains = ["remote.test"]
'''


@pytest.fixture
def cluster_nodes(pg_cluster: PGCluster, tmp_path: Path,
                  tls_files: dict[str, Path]) -> Iterator[Callable[..., list[Node]]]:
    """Call with (sink, lease=, max_concurrent=) to get nodes A and B (not started)."""
    nodes: list[Node] = []

    def make(sink: Sink, lease: float = 60.0, max_concurrent: int = 4,
             accounts: bool = True) -> list[Node]:
        dsn = pg_cluster.create_database("nodes")
        blobs = tmp_path / "blobs"
        blobs.mkdir()
        extra = _node_config(dsn, blobs, sink.port, lease, max_concurrent)
        out = []
        for name in ("a", "b"):
            base = tmp_path / name
            base.mkdir()
            node = Node(name, base, tls_files, extra_config=extra)
            if name == "a" and accounts:  # in the shared database: once is enough
                node.add_account(MxdServer.user, MxdServer.password, MxdServer.user)
                node.add_account(MxdServer.user2, MxdServer.password2, MxdServer.user2)
            out.append(node)
        nodes.extend(out)
        return out

    try:
        yield make
    finally:
        for n in nodes:
            n.kill()


def _submit(node: MxdServer, rcpts: list[str], subject: str, msgid: str,
            smtp: smtplib.SMTP | None = None) -> None:
    body = (f"From: {MxdServer.user}\r\nTo: {', '.join(rcpts)}\r\nSubject: {subject}\r\n"
            f"Message-ID: {msgid}\r\n\r\nbody\r\n")
    if smtp is not None:
        smtp.sendmail(MxdServer.user, rcpts, body)
        return
    with _submission(node) as s:
        s.sendmail(MxdServer.user, rcpts, body)


def _submission(node: MxdServer) -> smtplib.SMTP:
    ctx = ssl.create_default_context(cafile=str(node.ca_file))
    s = smtplib.SMTP("127.0.0.1", node.ports["submission"], timeout=30)
    s.starttls(context=ctx)
    s.login(MxdServer.user, MxdServer.password)
    return s


def _until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_idle_on_node_b_sees_mail_accepted_by_node_a(cluster_nodes: Any) -> None:
    """bob IDLEs on node B; alice submits to bob on node A; B's IDLE reports the new
    message within one second of A's 250, and B fetches the body from the shared
    directory."""
    sink = Sink()
    a, b = cluster_nodes(sink)
    a.start()
    b.start()
    ctx = ssl.create_default_context(cafile=str(b.ca_file))
    imap = imaplib.IMAP4_SSL("127.0.0.1", b.ports["imaps"], ssl_context=ctx)
    try:
        imap.login(MxdServer.user2, MxdServer.password2)
        typ, data = imap.select("INBOX")
        assert typ == "OK" and int(data[0]) == 0
        tag = imap._new_tag().decode()  # type: ignore[attr-defined]
        imap.send(f"{tag} IDLE\r\n".encode())
        assert imap.readline().startswith(b"+")
        # B's listener is up once B serves; mail is accepted by A now.  The 1 s bound
        # leaves out the time that B's process serving the session and this thread
        # waited for a CPU meanwhile (a machine shared with other tests).
        assert b.proc is not None
        b_pids = [b.proc.pid, *children(b.proc.pid)]
        owner = owner_of_connection(b_pids, imap.sock.getsockname()[1], b.ports["imaps"])
        assert owner is not None
        watch = RunQueueWatch(owner, threading.get_native_id())
        watch.start()
        t0 = time.monotonic()
        _submit(a, [MxdServer.user2], "across nodes", "<x1@example.test>")
        accepted = time.monotonic()
        imap.sock.settimeout(30)
        line = imap.readline()
        seen = time.monotonic()
        watch.stop()
        assert line.strip() == b"* 1 EXISTS", line
        waited = watch.waited(accepted, seen)
        assert seen - accepted - waited < 1.0, (seen - accepted, waited, accepted - t0)
        imap.send(b"DONE\r\n")
        while not imap.readline().startswith(tag.encode()):
            pass
        typ, msg = imap.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert b"across nodes" in msg[0][1]
    finally:
        imap.logout()
    assert a.stop() in STOPPED and b.stop() in STOPPED


def _start_together(nodes: list[Node]) -> None:
    errors: list[BaseException] = []

    def start(n: Node) -> None:
        try:
            n.start()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=start, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    if errors:
        raise errors[0]


def test_both_nodes_deliver_the_queue_exactly_once(cluster_nodes: Any) -> None:
    """N messages queued through node A (held: hold_all) are delivered to the sink by A
    and B together once both run, every one exactly once: both claim from the same
    tables with FOR UPDATE SKIP LOCKED and leases."""
    n = 500 if LONG else 100
    sink = Sink(delay=0.05)  # slow enough that neither node finishes alone at once
    a, b = cluster_nodes(sink, max_concurrent=2)
    sink.controller.start()
    try:
        free = a.extra_config
        a.extra_config = free.replace("[queue]\n", "[queue]\nhold_all = true\n")
        a.write_config()
        a.start()
        for first in range(0, n, 50):  # a session takes a bounded number of messages
            with _submission(a) as s:
                for i in range(first, min(n, first + 50)):
                    _submit(a, [f"user{i % 3}@remote.test"], f"q{i}", f"<q{i}@example.test>",
                            s)
        assert a.stop() in STOPPED
        assert sink.ids() == []
        a.extra_config = free
        a.write_config()
        _start_together([a, b])
        _until(lambda: len(sink.ids()) >= n, 60 + n * 0.2, f"only {len(sink.ids())} of {n}")
        _until(lambda: not _queued(a), 10, "recipients left in the queue")
        ids = sink.ids()
        assert sorted(ids) == sorted(f"<q{i}@example.test>" for i in range(n))
        per_node = sink.by_node()
        assert set(per_node) == {"a.example.test", "b.example.test"}, per_node
        assert a.stop() in STOPPED and b.stop() in STOPPED
    finally:
        sink.controller.stop()


def _queued(node: MxdServer) -> list[Any]:
    """The node's queue as the admin API lists it."""
    import json
    import urllib.request

    req = urllib.request.Request(f"http://127.0.0.1:{node.ports['admin']}/api/queue",
                                 headers=node.admin_headers())
    with urllib.request.urlopen(req, timeout=10) as r:
        data = json.loads(r.read())
    return list(data if isinstance(data, list) else data.get("messages", []))


def test_node_b_completes_after_node_a_is_killed_mid_delivery(cluster_nodes: Any) -> None:
    """A alone starts delivering 20 messages (slow sink) and is SIGKILLed mid-way; B,
    started then, takes A's recipients once their leases expire and delivers the rest:
    every message arrives, only those A had in flight may arrive twice."""
    lease = 4.0
    sink = Sink(delay=0.3)
    a, b = cluster_nodes(sink, lease=lease, max_concurrent=2)
    sink.controller.start()
    try:
        a.start()
        with _submission(a) as s:
            for i in range(20):
                _submit(a, [f"k{i}@remote.test"], f"k{i}", f"<k{i}@example.test>", s)
        _until(lambda: len(sink.ids()) >= 3, 30, "A delivered nothing")
        a.kill()  # SIGKILL
        killed_at = len(sink.ids())
        assert killed_at < 20, "A finished before it could be killed"
        b.start()
        want = {f"<k{i}@example.test>" for i in range(20)}
        _until(lambda: want <= set(sink.ids()), 60, f"missing {want - set(sink.ids())}")
        ids = sink.ids()
        dups = len(ids) - len(set(ids))
        assert dups <= 2  # at most A's in-flight deliveries (max_concurrent = 2)
        assert sink.by_node().get("b.example.test", 0) >= 20 - killed_at - 2
        assert b.stop() in STOPPED
    finally:
        sink.controller.stop()


def test_postgresql_restart_under_load_loses_nothing_acknowledged(
        cluster_nodes: Any, pg_cluster: PGCluster) -> None:
    """SMTP clients keep sending to a node while PostgreSQL is stopped and started again:
    during the outage they get 4xx (never 5xx) and an IMAP login gets NO [UNAVAILABLE];
    the node reconnects by itself; every message that got its 250 is in the mailbox."""
    sink = Sink()
    a, _ = cluster_nodes(sink)
    a.start()
    accepted: list[str] = []
    temporary: list[int] = []
    permanent: list[tuple[int, bytes]] = []
    stop = threading.Event()

    def send() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            msgid = f"<load{i}@example.test>"
            body = (f"From: x@client.test\r\nTo: {MxdServer.user2}\r\nSubject: load {i}\r\n"
                    f"Message-ID: {msgid}\r\n\r\nbody\r\n")
            try:
                with smtplib.SMTP("127.0.0.1", a.ports["smtp"], timeout=30) as s:
                    s.sendmail("x@client.test", [MxdServer.user2], body)
                accepted.append(msgid)
            except smtplib.SMTPRecipientsRefused as e:
                code = next(iter(e.recipients.values()))[0]
                (temporary.append(code) if 400 <= code < 500
                 else permanent.append((code, b"rcpt")))
            except smtplib.SMTPResponseException as e:
                (temporary.append(e.smtp_code) if 400 <= e.smtp_code < 500
                 else permanent.append((e.smtp_code, e.smtp_error)))
            except (OSError, smtplib.SMTPException):
                temporary.append(0)  # connection dropped: not acknowledged either

    sender = threading.Thread(target=send)
    sender.start()
    try:
        _until(lambda: len(accepted) >= 10, 60, "no mail accepted before the restart")
        pg_cluster.stop()
        try:
            n_down = len(temporary)
            _until(lambda: len(temporary) >= n_down + 2, 60, "no temporary failures seen")
            ctx = ssl.create_default_context(cafile=str(a.ca_file))
            imap = imaplib.IMAP4_SSL("127.0.0.1", a.ports["imaps"], ssl_context=ctx)
            try:
                with pytest.raises(imaplib.IMAP4.error, match=r"UNAVAILABLE"):
                    imap.login(MxdServer.user2, MxdServer.password2)
            finally:
                imap.shutdown()
        finally:
            pg_cluster.start()
        n_back = len(accepted)
        _until(lambda: len(accepted) >= n_back + 10, 60, "no mail accepted after the restart")
    finally:
        stop.set()
        sender.join(60)
    assert permanent == []
    ctx = ssl.create_default_context(cafile=str(a.ca_file))
    imap = imaplib.IMAP4_SSL("127.0.0.1", a.ports["imaps"], ssl_context=ctx)
    try:
        imap.login(MxdServer.user2, MxdServer.password2)
        typ, data = imap.select("INBOX", readonly=True)
        typ, fetched = imap.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        stored = [x[1].decode().split(":", 1)[1].strip() for x in fetched
                  if isinstance(x, tuple)]
    finally:
        imap.logout()
    missing = set(accepted) - set(stored)
    assert not missing, f"acknowledged but lost: {sorted(missing)[:5]}"
    assert len(stored) == len(set(stored))
    assert a.stop() in STOPPED


def test_two_nodes_starting_together_on_an_empty_database(cluster_nodes: Any) -> None:
    """Both nodes start at once on a database without tables: one migrates it (under the
    advisory lock), the other waits and finds it done; both serve, and an account added
    through one is usable on the other."""
    a, b = cluster_nodes(Sink(), accounts=False)
    _start_together([a, b])
    try:
        def migrated() -> int:
            return sum("schema store migrated" in n.log_path.read_text(errors="replace")
                       for n in (a, b))

        _until(lambda: migrated() > 0, 10, "neither node logged its migration")
        assert migrated() == 1
        b.add_account(MxdServer.user2, MxdServer.password2, MxdServer.user2)
        ctx = ssl.create_default_context(cafile=str(a.ca_file))
        imap = imaplib.IMAP4_SSL("127.0.0.1", a.ports["imaps"], ssl_context=ctx)
        try:
            imap.login(MxdServer.user2, MxdServer.password2)
            assert imap.select("INBOX")[0] == "OK"
        finally:
            imap.logout()
    finally:
        assert a.stop() in STOPPED and b.stop() in STOPPED


def test_node_refuses_to_start_without_its_body_directory(
        tmp_path: Path, tls_files: dict[str, Path], pg_cluster: PGCluster) -> None:
    """twistd mxd with a blob_dir that does not exist exits non-zero before it listens,
    naming the key and the directory."""
    import subprocess

    from tests.integration.mxdserver import VENV_BIN

    dsn = pg_cluster.create_database("noblobs")
    missing = tmp_path / "not-mounted"
    node = Node("a", tmp_path, tls_files,
                extra_config=_node_config(dsn, missing, free_port(), 60.0, 4))
    r = subprocess.run([str(VENV_BIN / "twistd"), "-n", "--pidfile=", "--logfile=-", "mxd",
                        "--config", str(node.config_path)],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert "store.blob_dir" in out and f"{missing} does not exist" in out, out[-2000:]


def test_a_delivery_longer_than_its_lease_is_renewed_and_sent_once(
        cluster_nodes: Any) -> None:
    """Both nodes run with a 1 s lease; the sink takes 4 s to answer DATA.  The node
    delivering renews its lease while it waits, so the other node (which looks again
    when the lease would end) never takes the recipient as abandoned: one delivery
    attempt in the two nodes' logs, one copy at the sink."""
    sink = Sink(delay=4.0)
    a, b = cluster_nodes(sink, lease=1.0, max_concurrent=2)
    sink.controller.start()
    try:
        _start_together([a, b])
        _submit(a, ["slow@remote.test"], "slow", "<slow@example.test>")
        _until(lambda: sink.ids() == ["<slow@example.test>"], 30, f"sink got {sink.ids()}")
        _until(lambda: not _queued(a), 10, "the recipient is still queued")
        attempts = sum(n.log_path.read_text(errors="replace").count("delivering ")
                       for n in (a, b))
        assert attempts == 1, attempts
        assert sink.ids() == ["<slow@example.test>"]
        assert a.stop() in STOPPED and b.stop() in STOPPED
    finally:
        sink.controller.stop()
