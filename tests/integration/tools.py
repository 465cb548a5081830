"""Finding the real third-party programs the integration tests drive.

Outside CI a missing program skips the test with a clear message; with ``CI=true`` it
fails, so a CI machine that lacks a tool cannot pass by skipping.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

EXTRA_PATHS = ["/usr/sbin", "/usr/lib/cyrus/bin", "/usr/lib/postfix/sbin"]

# A bound for a program's start (twistd mxd, unbound, nsd, slapd, pebble, Postfix, ...) that
# fails: generous, since other test runs may load the shared machine (a twistd mxd worker
# took 6-7 s to start at load 13). A start that works returns as soon as it is done.
STARTUP_TIMEOUT = 120.0


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_tool(name: str) -> str:
    """Return the absolute path of ``name``; fail (CI) or skip (elsewhere) when absent."""
    path = shutil.which(name) or shutil.which(name, path=os.pathsep.join(EXTRA_PATHS))
    if path is None:
        msg = f"{name} is not installed (make test-deps installs it)"
        if in_ci():
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def require_module(name: str):  # type: ignore[no-untyped-def]
    """Import a Python test helper; fail in CI, skip elsewhere when missing."""
    try:
        return __import__(name)
    except ImportError:
        msg = f"python module {name} is not installed (pip install -e .[test])"
        if in_ci():
            pytest.fail(msg)
        pytest.skip(msg)


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (twistd mxd's worker processes), from /proc."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass  # exited meanwhile
    return out


def cpu_seconds(pid: int) -> float:
    """CPU time used so far by ``pid``, its descendants and all their threads, in
    seconds with nanosecond resolution (the first field of /proc/PID/task/TID/schedstat:
    time on a CPU).  Unlike wall time, it does not grow while other programs on a loaded
    machine hold the CPUs.  (A thread that exits takes its time with it: measure across
    work done by long-lived threads, such as the reactor and the hashing pool.)"""
    total = 0
    for p in process_tree(pid):
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{p}/task/{task}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass
    return total / 1e9


def wait_cpu_idle(pid: int, timeout: float = 60.0, window: float = 0.5,
                  busy: float = 0.02) -> None:
    """Poll until ``pid`` and its descendants use less than ``busy`` seconds of CPU in
    ``window`` seconds (start-up work done: imports, warm-ups, first queue scans);
    AssertionError when they are still busy after ``timeout``."""
    import time

    deadline = time.monotonic() + timeout
    last = cpu_seconds(pid)
    while True:
        time.sleep(window)
        now = cpu_seconds(pid)
        if now - last < busy:
            return
        last = now
        assert time.monotonic() < deadline, f"process {pid} still busy after {timeout} s"


_HANDED_OUT: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on loopback right now (bind to 0 and release), never one this
    process was given before: the kernel may hand a just-released port out again, and
    two listeners of one test server must not get the same port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(100):
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no fresh free port")


def postfix_main_cf(queue_dir: Path, data_dir: Path, log: Path, hostname: str,
                    settings: str) -> str:
    """main.cf of a throwaway Postfix running from temp dirs on 127.0.0.1 with no local
    delivery; ``settings`` adds the test's own lines (relaying, TLS)."""
    domain = hostname.split(".", 1)[1]
    return f"""compatibility_level = 3.6
queue_directory = {queue_dir}
data_directory = {data_dir}
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
meta_directory = /etc/postfix
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = {hostname}
mydomain = {domain}
myorigin = {domain}
mydestination =
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
local_recipient_maps =
smtputf8_enable = no
biff = no
maillog_file_prefixes = /tmp, /var
maillog_file = {log}
{settings}"""


def postfix_master_cf(port: int) -> str:
    """The system master.cf with smtpd on 127.0.0.1:``port`` and no chroot (the queue lives
    in a temp dir)."""
    master = []
    for line in Path("/etc/postfix/master.cf").read_text().splitlines():
        fields = line.split()
        if line.startswith("smtp ") and len(fields) > 1 and fields[1] == "inet":
            line = f"127.0.0.1:{port} inet n - n - - smtpd"
        elif fields and not line[0].isspace() and not line.startswith("#") and len(fields) >= 8:
            fields[4] = "n"
            line = " ".join(fields)
        master.append(line)
    return "\n".join(master) + "\n"
