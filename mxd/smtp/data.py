"""Message data on the wire: DATA dot-unstuffing, BDAT chunks, bare CR/LF, header section.

RFC 5321 §4.1.1.4 and §4.5.2: DATA ends only at ``CRLF . CRLF``; a leading dot on a line
is removed.  RFC 5321 §2.3.8: lines end in CRLF; a bare CR or LF is not a line ending.
SMTP smuggling (2023) relies on a server that treats ``\\n.\\n``, ``\\r.\\r`` or
``\\n.\\r\\n`` as the end of data while a downstream server does not.  Here only
``\\r\\n.\\r\\n`` ends DATA, and any bare CR or LF is recorded (``bare_line_ending``) so
the server rejects the whole message: it never stores or relays such data.

Pure and incremental: bytes in, bytes out, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

# A long line without CRLF is passed on in pieces once the carried part exceeds this.
_CARRY_LIMIT = 8192


def has_bare_line_ending(data: bytes) -> bool:
    """True when ``data`` holds a CR not followed by LF or an LF not preceded by CR."""
    n = data.count(b"\r\n")
    return data.count(b"\r") != n or data.count(b"\n") != n


class DataReader:
    """Decodes the DATA stream after the 354 reply.

    ``feed(data)`` returns ``(body, leftover)``: ``body`` is the unstuffed message bytes
    decoded so far; ``leftover`` is None while the message continues, and the bytes after
    the terminating ``.\\r\\n`` once it has ended (pipelined commands).
    """

    def __init__(self) -> None:
        self._carry = b""
        self._line_start = True
        self.bare_line_ending = False
        self.done = False

    def _emit_lines(self, chunk: bytes, out: list[bytes]) -> int | None:
        """Append the complete lines in ``chunk`` (which ends with CRLF) to ``out``.

        Returns the offset just after the end-of-data line, or None if it was not seen.
        Runs of lines not starting with a dot are passed on in one piece."""
        pos = 0
        n = len(chunk)
        while pos < n:
            if self._line_start and chunk[pos:pos + 1] == b".":
                idx = chunk.find(b"\r\n", pos)
                if idx == pos + 1:
                    return idx + 2  # the end-of-data line "."
                line = chunk[pos + 1:idx]  # RFC 5321 §4.5.2 transparency
                if b"\r" in line or b"\n" in line:
                    self.bare_line_ending = True
                out.append(line)
                out.append(b"\r\n")
                pos = idx + 2
                continue
            nxt = chunk.find(b"\r\n.", pos)
            end = n if nxt < 0 else nxt + 2
            seg = chunk[pos:end] if (pos or end != n) else chunk
            if has_bare_line_ending(seg):
                self.bare_line_ending = True
            out.append(seg)
            self._line_start = True
            pos = end
        return None

    def feed(self, data: bytes) -> tuple[bytes, bytes | None]:
        if self.done:
            raise ValueError("DataReader fed after the end of data")
        buf = self._carry + data if self._carry else data
        out: list[bytes] = []
        last = buf.rfind(b"\r\n")
        if last >= 0:
            end = self._emit_lines(buf[: last + 2], out)
            if end is not None:
                self.done = True
                self._carry = b""
                return b"".join(out), buf[end:]
            rest = buf[last + 2 :]
        else:
            rest = buf
        if len(rest) > _CARRY_LIMIT:
            keep = 1 if rest.endswith(b"\r") else 0
            head = rest[: len(rest) - keep]
            if self._line_start and head.startswith(b"."):
                head = head[1:]
            if b"\r" in head or b"\n" in head:
                self.bare_line_ending = True
            out.append(head)
            self._line_start = False
            rest = rest[len(rest) - keep :]
        self._carry = rest
        return b"".join(out), None


class BareLineEndingScanner:
    """Finds bare CR or LF across BDAT chunks (RFC 3030 chunks split lines anywhere)."""

    def __init__(self) -> None:
        self._pending_cr = False
        self.bare_line_ending = False

    def feed(self, data: bytes) -> None:
        if not data:
            return
        s = b"\r" + data if self._pending_cr else data
        self._pending_cr = s.endswith(b"\r")
        if self._pending_cr:
            s = s[:-1]
        if has_bare_line_ending(s):
            self.bare_line_ending = True

    def finish(self) -> None:
        if self._pending_cr:
            self.bare_line_ending = True
            self._pending_cr = False


class HeaderSection:
    """Holds the message's header section back until it is complete.

    The server adds its own fields (Received, Message-ID, Date) in front of or into the
    header section before any body byte reaches the store.  ``feed`` returns None while
    the header section is incomplete, else ``(headers, rest)`` once: ``headers`` ends with
    the CRLF of the last field; ``rest`` starts with the empty line (or is the remainder).
    ``overflow`` is set when more than ``limit`` bytes arrive without the empty line.
    """

    def __init__(self, limit: int) -> None:
        self._buf = bytearray()
        self._limit = limit
        self.complete = False
        self.overflow = False

    def feed(self, data: bytes) -> tuple[bytes, bytes] | None:
        if self.complete:
            raise ValueError("HeaderSection fed after completion")
        start = max(0, len(self._buf) - 3)
        self._buf += data
        if self._buf.startswith(b"\r\n"):
            self.complete = True
            return b"", bytes(self._buf)
        idx = self._buf.find(b"\r\n\r\n", start)
        if idx >= 0:
            self.complete = True
            return bytes(self._buf[: idx + 2]), bytes(self._buf[idx + 2 :])
        if len(self._buf) > self._limit:
            self.overflow = True
            self.complete = True
            return bytes(self._buf), b""
        return None

    def finish(self) -> bytes:
        """End of message without an empty line: the whole thing is header section."""
        self.complete = True
        return bytes(self._buf)


def has_field(headers: bytes, name: str) -> bool:
    """True when the header section has a field called ``name`` (case-insensitive)."""
    pattern = rb"(?im)^" + re.escape(name.encode("ascii")) + rb"[ \t]*:"
    return re.search(pattern, headers) is not None


_TLS_REQUIRED_NO = re.compile(rb"(?im)^tls-required[ \t]*:[ \t]*no[ \t]*\r?$")


def has_tls_required_no(headers: bytes) -> bool:
    """RFC 8689 §5: the header section carries ``TLS-Required: No``."""
    return _TLS_REQUIRED_NO.search(headers) is not None


class Spool:
    """Holds a message body while a check decides what goes on top of it: in memory up to
    ``memory_limit`` octets, then in an anonymous temporary file (a big message never sits
    whole in memory)."""

    def __init__(self, memory_limit: int = 1024 * 1024) -> None:
        self._limit = memory_limit
        self._parts: list[bytes] = []
        self._size = 0
        self._file: Any = None

    @property
    def on_disk(self) -> bool:
        return self._file is not None

    def write(self, data: bytes) -> None:
        if not data:
            return
        if self._file is None and self._size + len(data) > self._limit:
            import tempfile

            self._file = tempfile.TemporaryFile()
            self._file.writelines(self._parts)
            self._parts = []
        if self._file is not None:
            self._file.write(data)
        else:
            self._parts.append(data)
        self._size += len(data)

    def copy_to(self, write: Callable[[bytes], None], chunk: int = 256 * 1024) -> None:
        """Pass the whole body to ``write`` in order (reads the file when on disk)."""
        if self._file is None:
            for part in self._parts:
                write(part)
            return
        self._file.seek(0)
        while True:
            data = self._file.read(chunk)
            if not data:
                break
            write(data)

    def close(self) -> None:
        self._parts = []
        if self._file is not None:
            self._file.close()
            self._file = None
