"""Random identifiers (SMTP session and queue ids, Message-ID parts) drawn from a buffer
of ``os.urandom`` octets: one ``getrandom`` system call per 4 KiB rather than one per
identifier (two or three per SMTP message otherwise).  The octets are the kernel's
CSPRNG output, as with ``secrets.token_hex``; each is handed out once.  A forked child
starts with an empty buffer, so parent and child never share octets."""

from __future__ import annotations

import os
import threading

_SIZE = 4096
_lock = threading.Lock()
_buf = b""
_pos = 0


def token_hex(nbytes: int) -> str:
    """``nbytes`` random octets as ``2 * nbytes`` lower-case hex digits."""
    global _buf, _pos
    if nbytes > _SIZE:
        return os.urandom(nbytes).hex()
    with _lock:
        if _pos + nbytes > len(_buf):
            _buf = os.urandom(_SIZE)
            _pos = 0
        out = _buf[_pos:_pos + nbytes]
        _pos += nbytes
    return out.hex()


def _reset() -> None:
    global _buf, _pos, _lock
    _lock = threading.Lock()
    _buf = b""
    _pos = 0


os.register_at_fork(after_in_child=_reset)
