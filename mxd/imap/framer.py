"""Splitting the client's byte stream into IMAP commands (RFC 3501 §2.2, §4.3; RFC 7888).

A command is a line that may end in a literal announcement (``{n}`` synchronising,
``{n+}`` non-synchronising, RFC 7888 LITERAL+), followed by ``n`` octets and the rest of
the command.  The framer is pure: it never writes.  It tells its caller when a
continuation request is due (only for synchronising literals), and asks the caller where
each literal should go, so that an APPEND body can stream to a file instead of memory.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Protocol

import attrs

from mxd.imap.errors import FramingError

_LITERAL_RE = re.compile(rb"~?\{([0-9]{1,20})(\+?)\}$")
_TAG_RE = re.compile(rb"^([^ \r\n]*)(?: ([A-Za-z]+))?(?: ([A-Za-z]+))?")


class LiteralSink(Protocol):
    """Where a large literal goes (a store ``BlobWriter``)."""

    def write(self, data: bytes) -> None: ...

    def abort(self) -> None: ...


@attrs.frozen
class Literal:
    """A literal kept in memory."""

    data: bytes


@attrs.frozen(eq=False)
class BlobLiteral:
    """A literal streamed into a sink (an APPEND body); ``size`` octets were written."""

    sink: LiteralSink
    size: int


Part = bytes | Literal | BlobLiteral


@attrs.frozen
class RawCommand:
    """One complete command: line pieces (bytes) with literals between them."""

    parts: tuple[Part, ...]

    @property
    def first_line(self) -> bytes:
        p = self.parts[0]
        return p if isinstance(p, bytes) else b""


@attrs.frozen
class NeedContinuation:
    """A synchronising literal was announced: send ``+ ...`` now (RFC 3501 §7.5)."""


Event = RawCommand | NeedContinuation

# Given (first line of the command so far, literal size, non-synchronising?) return a
# sink for the literal, or None to keep it in memory; raise FramingError to refuse it.
SinkChooser = Callable[[bytes, int, bool], "LiteralSink | None"]


def command_words(first_line: bytes) -> tuple[str | None, str, str]:
    """(tag, upper-case command name, upper-case second word) of a command line."""
    m = _TAG_RE.match(first_line)
    if not m or not m.group(1):
        return None, "", ""
    tag = m.group(1).decode("ascii", "replace")
    name = (m.group(2) or b"").decode("ascii").upper()
    sub = (m.group(3) or b"").decode("ascii").upper()
    return tag, name, sub


class Framer:
    """Incremental command framer.

    ``max_line``: longest line (without literals); ``max_command``: total bytes of
    in-memory literals and lines of one command.  Literal size limits are the sink
    chooser's business.
    """

    def __init__(self, choose_sink: SinkChooser, *, max_line: int = 65536,
                 max_command: int = 1 << 20) -> None:
        self._choose_sink = choose_sink
        self.max_line = max_line
        self.max_command = max_command
        self._buf = bytearray()
        self._parts: list[Part] = []
        self._size = 0
        self._lit_left = 0
        self._lit_sink: LiteralSink | None = None
        self._lit_mem: bytearray | None = None
        self._lit_size = 0
        self._skip_line = False

    # -- input ------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def take_buffer(self) -> bytes:
        """Hand over the bytes received but not yet framed (COMPRESS, RFC 4978 §3: what
        follows the command is compressed and must go through the inflater first)."""
        data = bytes(self._buf)
        self._buf.clear()
        return data

    def discard_buffer(self) -> None:
        """Forget bytes received but not yet framed (STARTTLS, RFC 3501 §6.2.1)."""
        self._buf.clear()

    def reset(self) -> None:
        """Drop a partly read command, aborting any literal sink."""
        for p in self._parts:
            if isinstance(p, BlobLiteral):
                p.sink.abort()
        if self._lit_sink is not None:
            self._lit_sink.abort()
        self._parts = []
        self._size = 0
        self._lit_left = 0
        self._lit_sink = None
        self._lit_mem = None

    @property
    def pending_parts(self) -> tuple[Part, ...]:
        """The pieces of the command being read (for the sink chooser: which literal
        of its command is being announced)."""
        return tuple(self._parts)

    @property
    def in_command(self) -> bool:
        return bool(self._parts) or self._lit_left > 0

    @property
    def after_literal(self) -> bool:
        """A literal has been read in full and the rest of its command line has not."""
        return self._lit_left == 0 and bool(self._parts)

    def read_line(self) -> bytes | None:
        """A raw line (AUTHENTICATE responses, IDLE's DONE), without CRLF."""
        idx = self._buf.find(b"\n")
        if idx < 0:
            if len(self._buf) > self.max_line:
                self._buf.clear()
                raise FramingError("line too long", fatal=True)
            return None
        line = bytes(self._buf[:idx])
        del self._buf[:idx + 1]
        if len(line) > self.max_line:
            raise FramingError("line too long", fatal=True)
        return line[:-1] if line.endswith(b"\r") else line

    # -- commands ---------------------------------------------------------------------
    def next_event(self) -> Event | None:
        """The next event, or None when more input is needed.

        Raises FramingError: ``fatal`` ones mean the connection cannot be resynchronised.
        """
        while True:
            if self._lit_left > 0:
                if not self._buf:
                    return None
                take = min(self._lit_left, len(self._buf))
                chunk = bytes(self._buf[:take])
                del self._buf[:take]
                self._lit_left -= take
                if self._lit_sink is not None:
                    self._lit_sink.write(chunk)
                else:
                    assert self._lit_mem is not None
                    self._lit_mem += chunk
                if self._lit_left > 0:
                    return None
                self._finish_literal()
                continue
            idx = self._buf.find(b"\n")
            if idx < 0:
                if len(self._buf) > self.max_line:
                    self._buf.clear()
                    self.reset()
                    raise FramingError("command line too long", fatal=True)
                return None
            line = bytes(self._buf[:idx])
            del self._buf[:idx + 1]
            if line.endswith(b"\r"):
                line = line[:-1]
            first = self._parts[0] if self._parts else line
            tag = command_words(first if isinstance(first, bytes) else b"")[0]
            if len(line) > self.max_line:
                self.reset()
                raise FramingError("command line too long", tag=tag)
            self._size += len(line)
            if self._size > self.max_command:
                self.reset()
                raise FramingError("command too long", tag=tag)
            m = _LITERAL_RE.search(line)
            if m is None:
                self._parts.append(line)
                cmd = RawCommand(tuple(self._parts))
                self._parts = []
                self._size = 0
                return cmd
            size = int(m.group(1))
            nonsync = bool(m.group(2))
            self._parts.append(line[:m.start()])
            head = self._parts[0]
            try:
                sink = self._choose_sink(head if isinstance(head, bytes) else b"", size, nonsync)
            except FramingError as e:
                self.reset()
                e.tag = e.tag or tag
                if nonsync:
                    # RFC 7888 §4: the octets are on their way; we cannot resynchronise.
                    e.fatal = True
                raise
            self._lit_sink = sink
            self._lit_mem = None if sink is not None else bytearray()
            if sink is None:
                self._size += size
                if self._size > self.max_command:
                    self.reset()
                    raise FramingError("command too long", fatal=nonsync, tag=tag)
            self._lit_left = size
            self._lit_size = size
            if size == 0:
                self._finish_literal()
            if not nonsync:
                return NeedContinuation()

    def _finish_literal(self) -> None:
        if self._lit_sink is not None:
            self._parts.append(BlobLiteral(self._lit_sink, self._lit_size))
        else:
            self._parts.append(Literal(bytes(self._lit_mem or b"")))
        self._lit_sink = None
        self._lit_mem = None
