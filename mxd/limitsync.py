"""Authentication outcomes shared between the processes of ``[server] workers = N``.

Each process keeps its own ``AuthLimiter`` (mxd.sasl.ratelimit), so that the check before
a password is verified stays a lookup in memory.  What one process learns (a failure, a
success) is sent to the main process on a pipe and passed on to every other worker, which
records it with ``AuthLimiter.apply``: a guesser spreading connections over the workers
is counted as one.  The delay is the time a line takes through two pipes (well under a
millisecond on an idle machine), during which a burst of parallel guesses could slip one
or two more attempts past the limit of a single process.

Wire format: one JSON object per line, ``{"k": "failure"|"success", "ip": "...",
"a": "account" | null}``; lines longer than ``MAX_LINE`` or not of that shape are dropped.
Worker side: descriptor ``EVENTS_OUT_FD`` to the main process, ``EVENTS_IN_FD`` from it.

The same pipes carry the supervisor's control lines (``{"c": KIND, "slot": N}``, see
``mxd.supervisor``): ``serving`` from a worker that accepts on its sockets, ``cover`` and
``uncover`` to a worker that is to accept, or no longer, on the sockets of slot N while
that slot's worker is down.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver

log = Logger(namespace="mxd.limitsync")

EVENTS_OUT_FD = 3  # worker -> main
EVENTS_IN_FD = 4  # main -> worker
MAX_LINE = 2048
KINDS = ("failure", "success")


def encode(kind: str, remote_ip: str, account: str | None) -> bytes:
    return json.dumps({"k": kind, "ip": remote_ip, "a": account},
                      separators=(",", ":")).encode()


def decode(line: bytes) -> tuple[str, str, str | None] | None:
    """(kind, remote_ip, account), or None for a line that is not an outcome."""
    if len(line) > MAX_LINE:
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    kind, ip, account = obj.get("k"), obj.get("ip"), obj.get("a")
    if kind not in KINDS or not isinstance(ip, str) or not (account is None
                                                            or isinstance(account, str)):
        return None
    return kind, ip, account


CONTROLS = ("serving", "cover", "uncover")


def encode_control(kind: str, slot: int = 0) -> bytes:
    return json.dumps({"c": kind, "slot": slot}, separators=(",", ":")).encode()


def decode_control(line: bytes) -> tuple[str, int] | None:
    """(kind, slot) of a control line, or None for any other line."""
    if len(line) > MAX_LINE or not line.startswith(b'{"c":'):
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    kind, slot = obj.get("c"), obj.get("slot")
    if kind not in CONTROLS or not isinstance(slot, int) or isinstance(slot, bool):
        return None
    return kind, slot


def apply_line(limiter: Any, line: bytes) -> bool:
    """Record the outcome in ``line`` on ``limiter``; False when it is not one."""
    got = decode(line)
    if got is None:
        log.warn("dropping a malformed authentication outcome from another process")
        return False
    limiter.apply(*got)
    return True


class LineSplitter:
    """Bytes from a pipe in, complete lines out (for the main process's reading end)."""

    def __init__(self, on_line: Callable[[bytes], None]) -> None:
        self._buf = b""
        self._on_line = on_line

    def feed(self, data: bytes) -> None:
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        if len(self._buf) > MAX_LINE:
            self._buf = b""  # a line that long is dropped whole
        for line in lines:
            if line:
                self._on_line(line)


class WorkerLink(LineOnlyReceiver):
    """A worker's end: send its limiter's outcomes, apply the others'; control lines
    go to ``on_control`` (kind, slot)."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE

    def __init__(self, limiter: Any,
                 on_control: Callable[[str, int], None] | None = None) -> None:
        self.limiter = limiter
        self.on_control = on_control
        if limiter is not None:
            limiter.on_outcome = self.send

    def send(self, kind: str, remote_ip: str, account: str | None) -> None:
        if self.transport is not None:
            self.sendLine(encode(kind, remote_ip, account))

    def send_control(self, kind: str, slot: int = 0) -> None:
        if self.transport is not None:
            self.sendLine(encode_control(kind, slot))

    def lineReceived(self, line: bytes) -> None:
        control = decode_control(line)
        if control is not None:
            if self.on_control is not None:
                self.on_control(*control)
        elif self.limiter is not None:
            apply_line(self.limiter, line)

    def lineLengthExceeded(self, line: bytes) -> None:
        log.warn("dropping an overlong authentication outcome from the main process")

    def connectionLost(self, reason: Any = None) -> None:
        if getattr(self.limiter, "on_outcome", None) == self.send:
            self.limiter.on_outcome = None


def connect_worker(limiter: Any, reactor: Any,
                   on_control: Callable[[str, int], None] | None = None) -> WorkerLink:
    """Attach ``limiter`` (None: none in this worker) and ``on_control`` to the pipes
    the main process gave this worker."""
    from twisted.internet import _posixstdio

    link = WorkerLink(limiter, on_control)
    _posixstdio.StandardIO(link, stdin=EVENTS_IN_FD, stdout=EVENTS_OUT_FD, reactor=reactor)
    return link
