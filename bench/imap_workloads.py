"""Workloads of bench/imap.py that drive a server like real clients do: stock imaplib and
pipelining APPEND, a 10-client mixed workload, many connections holding a large INBOX
selected, and mbsync.  Each function takes a running server (port, pid) and returns
figures; server CPU is user+system time of the server's process tree, counting children
that have exited (Dovecot's per-connection processes) through their parents' totals.
"""

from __future__ import annotations

import imaplib
import os
import random
import shutil
import socket
import ssl
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- measuring the server ---------------------------------------------------------------------------

def process_tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(p))
    out, todo = [], [pid]
    while todo:
        q = todo.pop()
        out.append(q)
        todo.extend(children.get(q, []))
    return out


def cpu_seconds(pid: int) -> float:
    """User+system CPU of the process tree, including reaped children."""
    total = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields[11:15] = utime stime cutime cstime (stat fields 14-17)
        total += sum(int(x) for x in fields[11:15])
    return total / CLK_TCK


def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) summed over the process tree, in KiB."""
    rss = pss = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
        except OSError:
            continue
    return rss, pss


class Measure:
    """Wall time and server CPU of a block: ``with Measure(pid) as m: ...``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.wall = self.cpu = 0.0

    def __enter__(self) -> Measure:
        self._c0 = cpu_seconds(self.pid)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._t0
        self.cpu = cpu_seconds(self.pid) - self._c0


# -- clients ----------------------------------------------------------------------------------------------

def imaplib_client(port: int, ca: Path, user: str, password: str) -> imaplib.IMAP4_SSL:
    """Stock imaplib: default socket options (Nagle on)."""
    ctx = ssl.create_default_context(cafile=str(ca))
    c = imaplib.IMAP4_SSL("localhost", port, ssl_context=ctx, timeout=120)
    c.login(user, password)
    return c


def append_imaplib(pid: int, port: int, ca: Path, user: str, password: str, mailbox: str,
                   msgs: list[bytes]) -> dict[str, float]:
    """APPEND every message with stock imaplib, one at a time."""
    c = imaplib_client(port, ca, user, password)
    c.create(mailbox)
    with Measure(pid) as m:
        for msg in msgs:
            typ, data = c.append(mailbox, None, None, msg)
            if typ != "OK":
                raise RuntimeError(f"APPEND failed: {data!r}")
    c.delete(mailbox)
    c.logout()
    return {"msg_s": len(msgs) / m.wall, "cpu_ms_msg": 1000 * m.cpu / len(msgs)}


def append_pipelined(pid: int, port: int, ca: Path, user: str, password: str, mailbox: str,
                     msgs: list[bytes], window: int = 32) -> dict[str, float]:
    """APPEND with LITERAL+ (RFC 7888), ``window`` commands in flight, TCP_NODELAY."""
    ctx = ssl.create_default_context(cafile=str(ca))
    raw = socket.create_connection(("127.0.0.1", port), timeout=120)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock = ctx.wrap_socket(raw, server_hostname="localhost")
    buf = bytearray()

    def line() -> bytes:
        while b"\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            buf.extend(chunk)
        i = buf.index(b"\r\n") + 2
        out = bytes(buf[:i])
        del buf[:i]
        return out

    def tagged(tag: bytes) -> bytes:
        while True:
            ln = line()
            if ln.startswith(tag + b" "):
                if not ln[len(tag) + 1:].startswith(b"OK"):
                    raise RuntimeError(ln.decode(errors="replace"))
                return ln

    line()
    sock.sendall(b'L LOGIN "%s" "%s"\r\n' % (user.encode(), password.encode()))
    tagged(b"L")
    sock.sendall(b'C CREATE "%s"\r\n' % mailbox.encode())
    tagged(b"C")
    with Measure(pid) as m:
        for start in range(0, len(msgs), window):
            out = bytearray()
            batch = msgs[start:start + window]
            for j, msg in enumerate(batch):
                out += b'A%d APPEND "%s" {%d+}\r\n' % (start + j, mailbox.encode(), len(msg))
                out += msg + b"\r\n"
            sock.sendall(out)
            for j in range(len(batch)):
                tagged(b"A%d" % (start + j))
    sock.sendall(b'D DELETE "%s"\r\n' % mailbox.encode())
    tagged(b"D")
    sock.sendall(b"Z LOGOUT\r\n")
    sock.close()
    return {"msg_s": len(msgs) / m.wall, "cpu_ms_msg": 1000 * m.cpu / len(msgs)}


# -- the mixed workload ------------------------------------------------------------------------------------

MIXED_COMMANDS = ("LOGIN", "SELECT", "FETCH", "STORE", "EXPUNGE", "APPEND", "LOGOUT")


def fill_mailbox(port: int, ca: Path, user: str, password: str, mailbox: str,
                 msgs: list[bytes]) -> None:
    c = imaplib_client(port, ca, user, password)
    c.create(mailbox)
    for msg in msgs:
        c.append(mailbox, None, None, msg)
    c.logout()


def mixed_workload(pid: int, port: int, ca: Path, user: str, password: str, mailbox: str,
                   msgs: list[bytes], clients: int, seconds: float) -> dict[str, float]:
    """``clients`` threads loop LOGIN, SELECT, FETCH, STORE, EXPUNGE, APPEND, LOGOUT over
    TLS (stock imaplib) for ``seconds``; the mailbox keeps its size (one message deleted
    and one appended per loop)."""
    ctx = ssl.create_default_context(cafile=str(ca))
    lat: dict[str, list[float]] = {c: [] for c in MIXED_COMMANDS}
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def timed(rec: dict[str, list[float]], name: str, fn: Callable[..., tuple[str, object]],
              *args: object) -> object:
        t0 = time.perf_counter()
        typ, data = fn(*args)
        rec[name].append(time.perf_counter() - t0)
        if typ not in ("OK", "BYE"):
            raise RuntimeError(f"{name}: {typ} {data!r}")
        return data

    def worker(k: int) -> None:
        rnd = random.Random(k)
        rec: dict[str, list[float]] = {c: [] for c in MIXED_COMMANDS}
        try:
            while time.monotonic() < deadline:
                c = imaplib.IMAP4_SSL("localhost", port, ssl_context=ctx, timeout=120)
                timed(rec, "LOGIN", c.login, user, password)
                exists = timed(rec, "SELECT", c.select, mailbox)
                n = max(1, int(exists[0]))  # type: ignore[index]
                timed(rec, "FETCH", c.fetch, f"{max(1, n - 9)}:{n}", "(FLAGS ENVELOPE)")
                timed(rec, "STORE", c.store, str(rnd.randint(1, n)), "+FLAGS", "(\\Deleted)")
                timed(rec, "EXPUNGE", c.expunge)
                timed(rec, "APPEND", c.append, mailbox, None, None, rnd.choice(msgs))
                timed(rec, "LOGOUT", c.logout)
        except Exception as e:
            with lock:
                errors.append(f"client {k}: {e!r}")
        with lock:
            for name, v in rec.items():
                lat[name].extend(v)

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(clients)]
    with Measure(pid) as m:
        for t in threads:
            t.start()
        for t in threads:
            t.join(seconds + 300)
    out: dict[str, float] = {"errors": float(len(errors))}
    for e in errors[:3]:
        print(f"    mixed workload error: {e}")
    for name, v in lat.items():
        out[f"{name.lower()}_per_s"] = len(v) / m.wall
    logins = sorted(lat["LOGIN"]) or [0.0]
    out["login_p50_ms"] = 1000 * statistics.median(logins)
    out["login_p99_ms"] = 1000 * logins[min(len(logins) - 1, int(0.99 * len(logins)))]
    out["commands_per_s"] = sum(len(v) for v in lat.values()) / m.wall
    out["cpu_ms_per_command"] = 1000 * m.cpu / max(1, sum(len(v) for v in lat.values()))
    return out


# -- many connections with a large mailbox selected --------------------------------------------------------

def select_idle(pid: int, port: int, ca: Path, user: str, password: str,
                k: int) -> tuple[dict[str, float], list[socket.socket]]:
    """Open ``k`` TLS connections that LOGIN and SELECT INBOX and stay; returns the
    figures and the sockets (close them after)."""
    ctx = ssl.create_default_context(cafile=str(ca))
    time.sleep(0.5)
    before = memory_kib(pid)
    socks: list[socket.socket] = []
    t0 = time.perf_counter()
    login_s = select_s = 0.0
    for _ in range(k):
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=300),
                            server_hostname="localhost")
        f = s.makefile("rb")
        f.readline()
        t1 = time.perf_counter()
        s.sendall(b'L LOGIN "%s" "%s"\r\n' % (user.encode(), password.encode()))
        while not f.readline().startswith(b"L "):
            pass
        t2 = time.perf_counter()
        s.sendall(b"S SELECT INBOX\r\n")
        while True:
            ln = f.readline()
            if ln.startswith(b"S "):
                if not ln.startswith(b"S OK"):
                    raise RuntimeError(ln.decode(errors="replace"))
                break
        select_s += time.perf_counter() - t2
        login_s += t2 - t1
        socks.append(s)
    total = time.perf_counter() - t0
    time.sleep(1.0)
    after = memory_kib(pid)
    return ({"select_total_s": total, "select_login_s": login_s, "select_only_s": select_s,
             "select_rss_kib": (after[0] - before[0]) / k,
             "select_pss_kib": (after[1] - before[1]) / k}, socks)


# -- mbsync ----------------------------------------------------------------------------------------------------

def mbsync_runs(pid: int, port: int, ca: Path, user: str, password: str, work: Path,
                push_msgs: list[bytes], push_box: str) -> dict[str, float]:
    """mbsync (isync) over IMAPS with ``FSync no``: pull INBOX into an empty Maildir, sync
    again with nothing changed, then push ``push_msgs`` into a new mailbox."""
    mbsync = shutil.which("mbsync")
    if mbsync is None:
        raise RuntimeError("mbsync is not installed (isync)")
    if work.exists():
        shutil.rmtree(work)
    local = work / "Mail"
    pushdir = local / "push"
    for sub in ("cur", "new", "tmp"):
        (pushdir / sub).mkdir(parents=True)
    for i, msg in enumerate(push_msgs):
        (pushdir / "cur" / f"1700000000.{i}_0.bench:2,S").write_bytes(msg)
    cfg = work / "mbsyncrc"
    cfg.write_text(f"""FSync no

IMAPAccount server
Host localhost
Port {port}
User {user}
Pass {password}
SSLType IMAPS
CertificateFile {ca}
PipelineDepth 50

IMAPStore remote
Account server

MaildirStore local
Path {local}/
Inbox {local}/INBOX

Channel pull
Far :remote:INBOX
Near :local:INBOX
Sync Pull
Create Near
SyncState *

Channel push
Far :remote:{push_box}
Near :local:push
Sync Push
Create Far
SyncState *
""")
    env = {"HOME": str(work), "PATH": "/usr/bin:/bin"}

    def run(channel: str) -> Measure:
        with Measure(pid) as m:
            p = subprocess.run([mbsync, "-c", str(cfg), channel], capture_output=True,
                               text=True, timeout=1800, env=env)
        if p.returncode != 0:
            raise RuntimeError(f"mbsync {channel} failed: {p.stdout}{p.stderr}")
        return m

    pull = run("pull")
    pulled = sum(1 for _ in (local / "INBOX" / "new").iterdir()) + \
        sum(1 for _ in (local / "INBOX" / "cur").iterdir())
    # mbsync sleeps a second before reading a Maildir modified within the last second
    # ("sleeping due to recent directory modification"): let that second pass first.
    time.sleep(1.1)
    resync = run("pull")
    time.sleep(1.1)
    push = run("push")
    return {"pull_s": pull.wall, "pull_cpu_s": pull.cpu, "pulled": float(pulled),
            "resync_s": resync.wall, "resync_cpu_s": resync.cpu,
            "push_s": push.wall, "push_cpu_s": push.cpu}
