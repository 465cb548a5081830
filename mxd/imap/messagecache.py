"""A bounded cache of what FETCH and SEARCH derive from stored messages.

Message bodies are immutable once stored (blobs are content, not mailboxes), so
headers, ENVELOPE and BODYSTRUCTURE renderings keyed by blob id never go stale.  The
cache is shared by all sessions of a factory and bounded in bytes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import BinaryIO

from mxd.imap.message import ParsedMessage, header_end

MAX_HEADER = 1 << 20


class MessageCache:
    def __init__(self, max_bytes: int = 64 * 1024 * 1024, max_parsed_size: int = 4 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self.max_parsed_size = max_parsed_size
        self._d: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._bytes = 0

    def get(self, kind: str, blob_id: str) -> bytes | None:
        key = (kind, blob_id)
        v = self._d.get(key)
        if v is not None:
            self._d.move_to_end(key)
        return v

    def put(self, kind: str, blob_id: str, value: bytes) -> None:
        key = (kind, blob_id)
        old = self._d.pop(key, None)
        if old is not None:
            self._bytes -= len(old) + 64
        if len(value) > self.max_bytes // 16:
            return
        self._d[key] = value
        self._bytes += len(value) + 64
        while self._bytes > self.max_bytes and self._d:
            _, v = self._d.popitem(last=False)
            self._bytes -= len(v) + 64


def read_header_block(f: BinaryIO) -> bytes:
    """The header block of a message file (up to and including the blank line)."""
    data = b""
    while len(data) < MAX_HEADER:
        chunk = f.read(16384)
        if not chunk:
            break
        data += chunk
        end = header_end(data)
        if end < len(data) or data.endswith(b"\n\n") or data.endswith(b"\r\n\r\n"):
            return data[:end]
    return data[:header_end(data)]


FIRST_HEAD = 8192


def read_header(read_head: Callable[[int], bytes]) -> bytes:
    """The header block of a message (up to and including the blank line, at most
    MAX_HEADER octets), from ``read_head(n)``, the message's first n octets: one small
    read for most messages, a larger one for a long header."""
    n = FIRST_HEAD
    while True:
        data = read_head(n)
        end = header_end(data)
        if end < len(data) or len(data) < n or n >= MAX_HEADER:
            return data[:end]
        if data.endswith(b"\n\n") or data.endswith(b"\r\n\r\n"):
            return data
        n = min(n * 16, MAX_HEADER)


def parse_file(f: BinaryIO) -> ParsedMessage:
    return ParsedMessage.parse(f.read())
