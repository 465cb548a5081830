"""``[server] workers = 2`` through ``twistd -n mxd``: real worker processes on the main
process's sockets (mxd.supervisor, mxd.worker).

* 20 parallel smtplib clients on port 25 while an IMAP IDLE session (imaplib's socket)
  watches the INBOX, one worker SIGKILLed mid-burst: the worker is started again, the
  IDLE session (in the other worker) sees every message within a second of its 250, and
  every message a client saw 250 for is in the INBOX exactly once.
* SIGTERM drains: a transaction in DATA completes with 250, an idle IMAP session gets
  BYE, and the server exits 0.
* The queue: messages accepted by both workers, relayed through a smarthost transport to
  an aiosmtpd sink by both workers' runners: each reaches the sink exactly once.
"""

from __future__ import annotations

import imaplib
import os
import re
import signal
import smtplib
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.mxdserver import MxdServer, make_server
from tests.integration.runqueue import RunQueueWatch, owner_of_connection

pytestmark = pytest.mark.integration

WORKERS = "[server]\nworkers = 2\ndrain_timeout = 10.0\n"


def _until(check: Any, what: str, timeout: float = 20.0, step: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(step)


def worker_pids(s: MxdServer) -> dict[int, int]:
    """Worker index -> pid of its latest start, from the main process's log."""
    out: dict[int, int] = {}
    for m in re.finditer(r"worker (\d+) started as pid (\d+)",
                         s.log_path.read_text(errors="replace")):
        out[int(m.group(1))] = int(m.group(2))
    return out


def serving(s: MxdServer, pid: int) -> bool:
    """Has the worker with this pid said it serves (and is it alive)?"""
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return bool(re.search(rf"pid {pid}\b", s.log_path.read_text(errors="replace"))) and bool(
        re.search(r'worker=(\d+) msg="worker \1 serving', s.log_path.read_text(
            errors="replace"))) and _fd_count(pid) > 0


def _fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def served_elsewhere(s: MxdServer, server_port: int, connect: Callable[[], Any],
                     discard: Callable[[Any], None], avoid: int,
                     tries: int = 20) -> tuple[Any, int]:
    """A connection served by a worker other than pid ``avoid``: ``connect()`` opens
    one after another (each returned as is; its socket's ``getsockname`` names it), and
    each served by ``avoid`` is passed to ``discard``.  The kernel hashes each new
    connection to one worker's socket (SO_REUSEPORT, mxd.listeners.HandedDownSocket):
    with two workers, 20 in a row in the same one has odds of 1 in 2**20."""
    pids = list(worker_pids(s).values())
    for _ in range(tries):
        conn = connect()
        sock = conn.sock if hasattr(conn, "sock") else conn
        local = sock.getsockname()[1]
        owner: int = _until(lambda local=local: owner_of_connection(pids, local, server_port),
                            "the connection's worker", 10)
        if owner != avoid:
            return conn, owner
        discard(conn)
    raise AssertionError(f"{tries} connections in a row were served by pid {avoid}")


class IdleWatcher(threading.Thread):
    """An IMAP IDLE session on the INBOX recording (time, EXISTS count) as it arrives."""

    def __init__(self, s: MxdServer) -> None:
        super().__init__(daemon=True)
        self.s = s
        ctx = ssl.create_default_context(cafile=str(s.ca_file))
        self.imap = imaplib.IMAP4_SSL("127.0.0.1", s.ports["imaps"], ssl_context=ctx)
        self.imap.login(s.user, s.password)
        typ, data = self.imap.select("INBOX")
        assert typ == "OK"
        self.start_count = int(data[0])
        self.seen: list[tuple[float, int]] = []
        self.stopped = threading.Event()
        self.error: BaseException | None = None
        self.imap.send(b"i1 IDLE\r\n")
        line = self.imap.readline()
        assert line.startswith(b"+"), line
        self.local_port = self.imap.sock.getsockname()[1]
        self.tid = 0  # the reader thread's, once it runs

    def run(self) -> None:
        # Blocking reads (a timed-out SSL socket file cannot be read again); close()
        # ends IDLE with DONE, whose tagged reply ends the loop.
        self.tid = threading.get_native_id()
        self.imap.sock.settimeout(None)
        try:
            while True:
                line = self.imap.readline()
                if not line:
                    raise AssertionError("the IDLE session was closed")
                if line.startswith(b"i1 "):
                    return
                m = re.match(rb"\* (\d+) EXISTS", line)
                if m:
                    self.seen.append((time.monotonic(), int(m.group(1))))
        except BaseException as e:
            if not self.stopped.is_set():
                self.error = e

    def count_at(self, t: float) -> int:
        n = self.start_count
        for when, count in self.seen:
            if when <= t:
                n = max(n, count)
        return n

    def first_time_with(self, count: int) -> float | None:
        for when, c in self.seen:
            if c >= count:
                return when
        return None

    def close(self) -> None:
        self.stopped.set()
        try:
            self.imap.send(b"DONE\r\n")
        except OSError:
            pass
        self.join(10)
        try:
            self.imap.logout()
        except (OSError, imaplib.IMAP4.error):
            pass


def imap_subjects(s: MxdServer) -> list[str]:
    ctx = ssl.create_default_context(cafile=str(s.ca_file))
    with imaplib.IMAP4_SSL("127.0.0.1", s.ports["imaps"], ssl_context=ctx) as m:
        m.login(s.user, s.password)
        m.select("INBOX", readonly=True)
        typ, data = m.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert typ == "OK"
        out = []
        for part in data:
            if isinstance(part, tuple):
                mm = re.search(rb"Subject: (\S+)", part[1])
                assert mm is not None, part
                out.append(mm.group(1).decode())
        return out


@pytest.fixture
def workers_server(tmp_path: Path, tls_files: dict[str, Path]) -> Any:
    s = make_server(tmp_path, tls_files, extra_config=WORKERS)
    s.start()
    try:
        _until(lambda: len(worker_pids(s)) == 2 and all(
            serving(s, p) for p in worker_pids(s).values()), "two workers serving", 60)
        yield s
    finally:
        s.stop()


def test_burst_idle_and_sigkill_of_a_worker(workers_server: MxdServer) -> None:
    """20 clients, one worker SIGKILLed mid-burst: restarted; IDLE sees each message
    within 1 s of its 250; every acknowledged message is in the INBOX exactly once.

    The 1 s is for a machine with CPU to spare: on a shared one, the time that the
    IDLE worker and the test's reader spent runnable but waiting for a CPU between a
    250 and its EXISTS (RunQueueWatch, measured by the kernel) is not counted against
    that message.  Where that cannot be measured (no schedstat, no sample around the
    message) nothing is excused: the bound is then the plain 1 s."""
    s = workers_server
    pids = worker_pids(s)
    idle = IdleWatcher(s)
    idle.start()
    idle_pid = _until(lambda: owner_of_connection(list(pids.values()), idle.local_port,
                                                  s.ports["imaps"]), "IDLE session's worker")
    victim_index = next(i for i, p in pids.items() if p != idle_pid)
    watch = RunQueueWatch(idle_pid, _until(lambda: idle.tid, "IDLE reader running"))
    watch.start()
    target, kill_at = 200, 60
    acked: list[tuple[float, str]] = []
    lock = threading.Lock()
    stop = threading.Event()
    refused = Counter[str]()

    def client(k: int) -> None:
        n = 0
        while not stop.is_set():
            try:
                with smtplib.SMTP("127.0.0.1", s.ports["smtp"], timeout=20) as c:
                    while not stop.is_set():
                        tag = f"c{k}-{n}"
                        n += 1
                        c.sendmail("load@remote.example", [s.user],
                                   f"Subject: {tag}\r\n\r\n" + "x" * 1500)
                        with lock:
                            acked.append((time.monotonic(), tag))
            except (smtplib.SMTPException, OSError) as e:
                with lock:
                    refused[type(e).__name__] += 1  # the killed worker's sessions reconnect

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(20)]
    for t in threads:
        t.start()
    try:
        _until(lambda: len(acked) >= kill_at, f"{kill_at} messages acknowledged", 60)
        os.kill(pids[victim_index], signal.SIGKILL)
        _until(lambda: worker_pids(s)[victim_index] != pids[victim_index]
               and serving(s, worker_pids(s)[victim_index]), "the killed worker restarted",
               60)
        _until(lambda: len(acked) >= target, f"{target} messages acknowledged", 90)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    with lock:
        done = sorted(acked)
    try:
        _until(lambda: idle.count_at(time.monotonic()) - idle.start_count >= len(done),
               "IDLE saw every acknowledged message", 30)
    except AssertionError as e:
        raise AssertionError(f"{e}: IDLE at {idle.count_at(time.monotonic())} (from "
                             f"{idle.start_count}), {len(done)} acknowledged, last seen "
                             f"{idle.seen[-3:]}, error {idle.error!r}") from None
    watch.stop()
    idle.close()
    assert idle.error is None, idle.error
    # The k-th acknowledged message was in the IDLE session's EXISTS count within 1 s,
    # not counting the time the path to the client waited for a CPU.
    late, excused, delays = [], [], []
    for k, (t_ack, tag) in enumerate(done, 1):
        seen_at = idle.first_time_with(idle.start_count + k)
        assert seen_at is not None
        delay = seen_at - t_ack
        delays.append(delay)
        if delay > 1.0:
            waited = watch.waited(t_ack, seen_at)
            entry = (tag, round(delay, 3), round(waited, 3))
            (late if delay - waited > 1.0 else excused).append(entry)
    median = sorted(delays)[len(delays) // 2]
    print(f"IDLE: {len(done)} messages, delay median {median:.3f} s, max {max(delays):.3f} s,"
          f" {len(excused)} over 1 s excused by CPU waits: {excused[:5]}")
    assert late == [], (f"seen later than 1 s after 250, beyond CPU waits (tag, delay, "
                        f"waited): {late[:10]} ({len(late)} of {len(done)}; {len(excused)} "
                        f"more excused by CPU waits; median {median:.3f} s)")
    # Every 250'd message is there exactly once (and nothing is there twice).
    subjects = Counter(imap_subjects(s))
    assert [tag for _, tag in done if subjects[tag] != 1] == []
    assert max(subjects.values()) == 1
    assert worker_pids(s)[victim_index] != pids[victim_index]
    log = s.log_path.read_text(errors="replace")
    assert f"worker {victim_index} (pid {pids[victim_index]}) " in log
    assert re.search(r"worker=1 ", log) and re.search(r"worker=2 ", log)


def test_sigterm_drains_sessions(workers_server: MxdServer) -> None:
    """SIGTERM to the main process: a message in DATA is still accepted (250), an IMAP
    session with no command running gets BYE, and the server exits with status 0."""
    s = workers_server
    ctx = ssl.create_default_context(cafile=str(s.ca_file))
    imap = imaplib.IMAP4_SSL("127.0.0.1", s.ports["imaps"], ssl_context=ctx)
    imap.login(s.user, s.password)
    imap.select("INBOX")
    c = smtplib.SMTP("127.0.0.1", s.ports["smtp"], timeout=20)
    c.ehlo("client.example")
    assert c.mail("load@remote.example")[0] == 250
    assert c.rcpt(s.user)[0] == 250
    assert c.docmd("DATA")[0] == 354
    c.send(b"Subject: drained\r\n\r\nfirst half\r\n")
    assert s.proc is not None
    s.proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    imap.sock.settimeout(10)
    bye = imap.readline()
    assert bye.startswith(b"* BYE"), bye
    imap.sock.close()
    c.send(b"second half\r\n.\r\n")
    code, text = c.getreply()
    assert code == 250, (code, text)
    try:
        c.quit()
    except smtplib.SMTPServerDisconnected:
        pass  # closed with 421 after the transaction: also a clean end
    # twistd ends by raising the signal it stopped on again (-SIGTERM): a clean stop.
    assert s.proc.wait(60) in (0, -signal.SIGTERM), s.log_tail()
    s.proc = None
    s.log.close()
    log = s.log_path.read_text(errors="replace")
    assert "draining 2 worker(s)" in log
    # Ended by the drain, not by its deadline (drain_timeout, 10 s): the workers say
    # so when it strikes, and a wall-clock bound would fail on a busy machine.
    assert "drain timeout" not in log and "did not stop" not in log, log[-2000:]
    assert time.monotonic() - t0 < 60
    assert re.search(r'worker=\d msg="draining: no longer accepting', log)
    s.start()
    assert imap_subjects(s) == ["drained"]
    s.stop()


def test_two_workers_deliver_the_queue_once(tmp_path: Path, tls_files: dict[str, Path]) -> None:
    """60 messages submitted over several connections (both workers accept some),
    relayed by the runners of both workers to an aiosmtpd sink: each arrives once."""
    from tests.queue.sinks import AiosmtpdSink

    with AiosmtpdSink(tls_files["cert"], tls_files["key"]) as sink:
        s = make_server(tmp_path, tls_files, extra_config=WORKERS + f'''
[outbound]
ca_file = "{tls_files["ca"]}"
[transports.sink]
kind = "smtp"
host = "127.0.0.1"
port = {sink.port}
tls = "none"
[[routes]]
to_domains = ["remote.test"]
transport = "sink"
''')
        s.start()
        try:
            _until(lambda: len(worker_pids(s)) == 2, "two workers")
            n = 60
            ctx = ssl.create_default_context(cafile=str(s.ca_file))
            pids = list(worker_pids(s).values())
            # Six connections or more, some in each worker (each new connection is
            # hashed to one worker's socket: open them until both have some).
            conns: list[smtplib.SMTP] = []
            owners: set[int] = set()
            while len(conns) < 6 or len(owners) < 2:
                assert len(conns) < 26, f"26 connections, all in worker pid {owners}"
                c = smtplib.SMTP("127.0.0.1", s.ports["submission"], timeout=60)
                port = c.sock.getsockname()[1]
                owners.add(_until(lambda port=port: owner_of_connection(
                    pids, port, s.ports["submission"]), "a connection's worker"))
                conns.append(c)
            errors: list[BaseException] = []

            def submit(k: int, c: smtplib.SMTP) -> None:
                try:
                    with c:
                        c.starttls(context=ctx)
                        c.login(s.user, s.password)
                        for i in range(k, n, len(conns)):
                            c.sendmail(s.user, ["someone@remote.test"],
                                       f"From: {s.user}\r\nSubject: q{i}\r\n\r\nbody\r\n")
                except BaseException as e:  # reported below
                    errors.append(e)

            threads = [threading.Thread(target=submit, args=(k, c)) for k, c in enumerate(conns)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            assert errors == [], errors
            _until(lambda: sink.count() >= n, f"{n} messages at the sink", 60)
            time.sleep(1.0)  # a duplicate would arrive within this (none may)
            got = Counter(re.search(rb"Subject: (q\d+)", m["data"]).group(1).decode()  # type: ignore[union-attr]
                          for m in sink.messages)
            assert sorted(got) == sorted(f"q{i}" for i in range(n))
            assert max(got.values()) == 1
            log = s.log_path.read_text(errors="replace")
            # Both workers' runners delivered some of them.
            by = Counter(m.group(1) for m in re.finditer(
                r"worker=(\d) [^\n]*msg=\"delivered ", log))
            assert set(by) == {"1", "2"}, by
        finally:
            s.stop()
