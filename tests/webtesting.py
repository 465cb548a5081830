"""One HTTP/1.1 request to a twisted.web Site over an in-memory transport (no sockets),
for the admin and webmail tests."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport


def http_request(site: Any, method: str, path: str, *, host: str | None = "127.0.0.1:8080",
                 headers: dict[str, str] | None = None, body: bytes = b"",
                 peer: str = "127.0.0.1") -> tuple[int, dict[str, str], bytes]:
    """(status, lower-cased headers, body) of one request; a POST body is a form."""
    proto: Any = site.buildProtocol(None)
    tr = StringTransport(peerAddress=IPv4Address("TCP", peer, 40000))
    proto.makeConnection(tr)
    lines = [f"{method} {path} HTTP/1.1"]
    if host is not None:
        lines.append(f"Host: {host}")
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    if method == "POST":
        lines.append("Content-Type: application/x-www-form-urlencoded")
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    proto.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    raw = tr.value()
    head, _, content = raw.partition(b"\r\n\r\n")
    status_line, *hdr_lines = head.decode("latin-1").split("\r\n")
    hdrs = {}
    for h in hdr_lines:
        k, _, v = h.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    proto.connectionLost(None)
    if hdrs.get("transfer-encoding") == "chunked":
        content = dechunk(content)
    return int(status_line.split()[1]), hdrs, content


def dechunk(data: bytes) -> bytes:
    """The body of a chunked transfer coding (RFC 9112 §7.1)."""
    out, pos = b"", 0
    while True:
        eol = data.index(b"\r\n", pos)
        size = int(data[pos:eol].split(b";")[0], 16)
        if size == 0:
            return out
        out += data[eol + 2:eol + 2 + size]
        pos = eol + 2 + size + 2
