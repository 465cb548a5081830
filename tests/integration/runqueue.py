"""How long processes waited for a CPU (Linux ``schedstat``): lets a test with a
latency bound tell a slow mechanism from a machine shared with other work."""

from __future__ import annotations

import os
import threading
import time
from typing import Any


def _run_delays(pid: int) -> dict[int, float]:
    """Seconds each thread of process ``pid`` has spent runnable but waiting for a CPU
    (``/proc/PID/task/TID/schedstat``, second field, in ns)."""
    out: dict[int, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                out[int(tid)] = int(f.read().split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            continue
    return out


class RunQueueWatch(threading.Thread):
    """Samples, every 20 ms, how long a server process and a thread of the test have
    waited for a CPU, so that a notification late because the machine was busy (other
    tests on two shared cores) can be told from a late mechanism: ``waited(t0, t1)`` is
    the time within [t0, t1] that the path from a commit to the client's EXISTS (the
    server's reactor thread, its busiest other thread (the store's), the test's reader
    thread) spent runnable but not running.  Waits of the path's threads overlap
    rarely, as each waits for the one before."""

    def __init__(self, worker_pid: int, reader_tid: int) -> None:
        super().__init__(daemon=True)
        self.worker_pid, self.reader_tid = worker_pid, reader_tid
        self.samples: list[tuple[float, dict[int, float], float]] = []
        self.halt = threading.Event()

    def sample(self) -> None:
        reader = _run_delays(os.getpid()).get(self.reader_tid, 0.0)
        self.samples.append((time.monotonic(), _run_delays(self.worker_pid), reader))

    def run(self) -> None:
        while not self.halt.wait(0.02):
            self.sample()

    def stop(self) -> None:
        self.halt.set()
        self.join(5)
        self.sample()

    def waited(self, t0: float, t1: float) -> float:
        before = [x for x in self.samples if x[0] <= t0]
        after = [x for x in self.samples if x[0] >= t1]
        if not before or not after:
            return 0.0
        (_, w0, r0), (_, w1, r1) = before[-1], after[0]
        grew = sorted((w1.get(t, 0.0) - w0.get(t, 0.0) for t in w1 if t != self.worker_pid),
                      reverse=True)
        main = w1.get(self.worker_pid, 0.0) - w0.get(self.worker_pid, 0.0)
        return main + (grew[0] if grew else 0.0) + (r1 - r0)


def owner_of_connection(pids: list[int], local_port: int, server_port: int) -> int | None:
    """Which of ``pids`` holds the server side of the TCP connection from ``local_port``
    (via /proc/net/tcp socket inodes and /proc/PID/fd links)."""
    inodes: set[str] = set()
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            lport = int(parts[1].split(":")[1], 16)
            rport = int(parts[2].split(":")[1], 16)
            if lport == server_port and rport == local_port:
                inodes.add(parts[9])
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:[") and link[8:-1] in inodes:
                return pid
    return None


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (a server's workers)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            out.append(int(d))
    return out


def watch_session(server_pid: int, sock: Any, server_port: int) -> RunQueueWatch:
    """A started RunQueueWatch of the process serving the client socket ``sock`` (the
    server ``server_pid`` or one of its workers) and of the calling thread (the one
    that reads the notification)."""
    pids = [server_pid, *children(server_pid)]
    owner = owner_of_connection(pids, sock.getsockname()[1], server_port) or server_pid
    watch = RunQueueWatch(owner, threading.get_native_id())
    watch.start()
    return watch


def within(watch: RunQueueWatch, t0: float, t1: float, bound: float) -> bool:
    """Did [t0, t1] last less than ``bound`` seconds, not counting the CPU waits of the
    watched path (stops the watch)?"""
    watch.stop()
    return t1 - t0 - watch.waited(t0, t1) < bound
