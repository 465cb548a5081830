"""How ``twistd mxd`` with ``[server] workers = 2`` spreads connections over its worker
processes (one listening socket per worker with SO_REUSEPORT, mxd.listeners), with
stock imaplib sessions over TLS; the worker serving each connection is found in /proc.

* 20 sessions opened one after another land in both workers, without pausing either;
  at SIGTERM each worker logs how many it accepted, and the counts agree with /proc.
* A worker SIGKILLed: connections queued on its socket and connections made while it is
  down are all served (those on the dead worker's socket, which the main process keeps,
  by the restarted worker), none is left hanging; at SIGTERM, new connections are refused.
"""

from __future__ import annotations

import imaplib
import os
import re
import signal
import socket
import ssl
import threading
from collections import Counter
from typing import Any

import pytest

from tests.integration.mxdserver import MxdServer
from tests.integration.test_workers import (  # noqa: F401 - the fixture is used by name
    _until,
    owner_of_connection,
    serving,
    worker_pids,
    workers_server,
)

pytestmark = pytest.mark.integration

GREETING_WITHIN = 60.0  # seconds: a worker's restart on a loaded machine included


def _owners(s: MxdServer, local_ports: list[int]) -> list[int]:
    pids = list(worker_pids(s).values())
    return [_until(lambda p=p: owner_of_connection(pids, p, s.ports["imaps"]),
                   "the worker serving a session", 10) for p in local_ports]


def _accepted_in_log(s: MxdServer) -> dict[int, int]:
    """Worker index -> imaps connections it accepted, from its line at the drain."""
    out: dict[int, int] = {}
    for m in re.finditer(r'worker=(\d+) [^\n]*msg="accepted \d+ connection\(s\) since the '
                         r'start: [^"]*imaps:\d+=(\d+)', s.log_path.read_text(errors="replace")):
        out[int(m.group(1))] = int(m.group(2))
    return out


def test_sessions_opened_one_after_another_land_in_both_workers(
        workers_server: MxdServer) -> None:  # noqa: F811 - the imported fixture
    """20 imaplib sessions, each logged in before the next connects: both workers serve
    some (all 20 in one has odds of 2 in 2**20); the counts each worker logs at the
    drain cover what /proc showed it serving."""
    s = workers_server
    ctx = ssl.create_default_context(cafile=str(s.ca_file))
    sessions = []
    try:
        for _ in range(20):
            m = imaplib.IMAP4_SSL("127.0.0.1", s.ports["imaps"], ssl_context=ctx, timeout=30)
            m.login(s.user, s.password)
            sessions.append(m)
        owners = Counter(_owners(s, [m.sock.getsockname()[1] for m in sessions]))
        assert len(owners) == 2, owners
        by_index = {i: owners[pid] for i, pid in worker_pids(s).items()}
    finally:
        for m in sessions:
            try:
                m.logout()
            except (OSError, imaplib.IMAP4.error):
                pass
    assert s.proc is not None
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(60) in (0, -signal.SIGTERM), s.log_tail()
    s.proc = None
    s.log.close()
    logged = _accepted_in_log(s)
    # At least what /proc showed: the start-up probe of each port is counted as well.
    assert set(logged) == {1, 2}, logged
    assert all(logged[i] >= by_index[i] for i in (1, 2)), (logged, by_index)
    assert sum(logged.values()) <= 20 + 1, logged


def _greet(sock: socket.socket, ctx: ssl.SSLContext, results: dict[int, Any],
           k: int) -> None:
    """How connection ``k`` starts: ("greeting", its TLS socket, kept open), or
    ("hung"/"refused: ...", None)."""
    try:
        t = ctx.wrap_socket(sock, server_hostname="localhost")
        line = t.makefile("rb").readline()
        results[k] = ("greeting", t) if line.startswith(b"* OK") else (f"other {line!r}", t)
    except TimeoutError:
        results[k] = ("hung", None)
    except (ConnectionError, ssl.SSLError, OSError) as e:
        results[k] = (f"refused: {type(e).__name__}", None)


def _log_since(s: MxdServer, offset: int) -> str:
    with open(s.log_path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def _serving_lines(s: MxdServer, index: int) -> int:
    return s.log_path.read_text(errors="replace").count(f'msg="worker {index} serving')


def test_connections_queued_on_a_killed_worker_are_served(
        workers_server: MxdServer) -> None:  # noqa: F811 - the imported fixture
    """Connections queued on a worker's socket when it is SIGKILLed (it was stopped
    while 12 connected) and connections made while it is down (12 more) all get the
    IMAP greeting, none hangs or is refused: the main process keeps the dead worker's
    socket, tells the other worker to accept on it too until the replacement serves
    (mxd.supervisor "cover"), and the replacement inherits the same socket.  Then
    SIGTERM: a connection attempted during the drain is refused."""
    s = workers_server
    victim_index, victim = 2, worker_pids(s)[2]
    # What the log says from now on (at the start, worker 1 may have covered slot 2
    # until worker 2 served: those lines are not this test's).
    start = s.log_path.stat().st_size
    os.kill(victim, signal.SIGSTOP)  # accepts nothing from now on
    socks = [socket.create_connection(("127.0.0.1", s.ports["imaps"]), timeout=GREETING_WITHIN)
             for _ in range(12)]
    os.kill(victim, signal.SIGKILL)
    _until(lambda: not os.path.exists(f"/proc/{victim}"), "the killed worker reaped", 10)
    socks += [socket.create_connection(("127.0.0.1", s.ports["imaps"]), timeout=GREETING_WITHIN)
              for _ in range(12)]
    # All made before the replacement serves: it is started after a back-off (0.5 s),
    # then imports and opens the store before it says so.
    assert _serving_lines(s, victim_index) == 1, "the replacement served too early"
    local_ports = [x.getsockname()[1] for x in socks]
    ctx = ssl.create_default_context(cafile=str(s.ca_file))
    results: dict[int, Any] = {}
    threads = [threading.Thread(target=_greet, args=(x, ctx, results, k), daemon=True)
               for k, x in enumerate(socks)]
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join(GREETING_WITHIN + 10)
        assert sorted(r[0] for r in results.values()) == ["greeting"] * len(socks), results
        new = _until(lambda: worker_pids(s)[victim_index] != victim
                     and worker_pids(s)[victim_index], "the replacement started", 30)
        owners = Counter(_owners(s, local_ports))
        assert set(owners) <= {worker_pids(s)[1], new}, (owners, new)
    finally:
        for r in results.values():
            if r[1] is not None:
                r[1].close()
    log = s.log_path.read_text(errors="replace")
    assert f"worker {victim_index} (pid {victim}) " in log
    # Worker 1 covered slot 2 until the replacement served, and took some of them
    # there (none of 24 on slot 2's socket has odds of 1 in 2**24).
    covered = _until(lambda: re.search(
        r'worker=1 [^\n]*msg="no longer covering slot 2 \(accepted (\d+) connection',
        _log_since(s, start)), "worker 1 no longer covering slot 2", 30)
    assert int(covered.group(1)) >= 1, covered.group(0)
    assert "worker 1 covers slot 2" in _log_since(s, start)

    # SIGTERM: the main process closes its sockets as the drain begins.
    assert s.proc is not None
    s.proc.send_signal(signal.SIGTERM)

    def refused() -> bool:
        try:
            socket.create_connection(("127.0.0.1", s.ports["imaps"]), timeout=5).close()
        except ConnectionRefusedError:
            return True
        return False

    _until(refused, "a new connection refused during the drain", 30)
    assert s.proc.wait(60) in (0, -signal.SIGTERM), s.log_tail()
    s.proc = None
    s.log.close()


def _allowed_cpus(pid: int) -> set[str]:
    """The CPU lists every thread of a process may run on."""
    out = set()
    for status in (f"/proc/{pid}/task/{t}/status" for t in os.listdir(f"/proc/{pid}/task")):
        try:
            with open(status) as f:
                for line in f:
                    if line.startswith("Cpus_allowed_list:"):
                        out.add(line.split(":", 1)[1].strip())
        except FileNotFoundError:  # a thread that ended meanwhile
            pass
    return out


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two usable CPU cores")
def test_each_worker_keeps_its_threads_on_a_core_of_its_own(
        workers_server: MxdServer) -> None:  # noqa: F811 - the imported fixture
    """[server] cpu_affinity = "auto" (the default) with 2 workers on 2+ cores: every
    thread of worker 1 (reactor, store writer, fsync helpers) may run on one core only,
    every thread of worker 2 on another; the main process is left alone."""
    s = workers_server
    ctx = ssl.create_default_context(cafile=str(s.ca_file))
    m = imaplib.IMAP4_SSL("127.0.0.1", s.ports["imaps"], ssl_context=ctx, timeout=30)
    m.login(s.user, s.password)  # the store's threads have started
    m.logout()
    cores = sorted(os.sched_getaffinity(0))
    per_worker = {i: _allowed_cpus(pid) for i, pid in worker_pids(s).items()}
    assert per_worker == {1: {str(cores[0])}, 2: {str(cores[1])}}, per_worker
    assert s.proc is not None
    assert _allowed_cpus(s.proc.pid) == _allowed_cpus(os.getpid())  # not pinned
    log = s.log_path.read_text(errors="replace")
    assert re.search(rf'worker=1 [^\n]*msg="worker 1 on CPU {cores[0]}"', log), s.log_tail()
