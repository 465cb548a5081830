"""Uploads to the web client: a bound on request bodies that holds before they are
read, and the files of a ``multipart/form-data`` form (RFC 7578) with their names.

twisted.web reads a whole request body before any resource sees it (into memory up to
100 kB, into a temporary file beyond), then parses a multipart body into memory.  So the
bound must act while the body arrives: ``limited_request`` refuses a declared
``Content-Length`` above the limit at once and counts the octets of a chunked body, and
in both cases answers 413 (RFC 9110 §15.5.14) and closes the connection without reading
further.  twisted.web keeps only each form field's value (not a file's name or type), so
``form_files`` parses the body again for the files.
"""

from __future__ import annotations

import email.policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

import attrs
from twisted.logger import Logger
from twisted.web import server

log = Logger(namespace="mxd.webmail")

_TOO_LARGE = (b"HTTP/1.1 413 Content Too Large\r\nContent-Type: text/plain; charset=utf-8\r\n"
              b"Connection: close\r\nContent-Length: %d\r\n\r\n%s")


def limited_request(max_body: int) -> type[server.Request]:
    """A twisted.web request class that refuses bodies larger than ``max_body`` octets."""

    class LimitedRequest(server.Request):
        _mxd_received = 0
        _mxd_refused = False

        def gotLength(self, length: int | None) -> None:
            if length is not None and length > max_body:
                self._mxd_refuse(length)
                return
            super().gotLength(length)

        def handleContentChunk(self, data: bytes) -> None:
            if self._mxd_refused:
                return
            self._mxd_received += len(data)
            if self._mxd_received > max_body:
                self._mxd_refuse(self._mxd_received)
                return
            super().handleContentChunk(data)

        def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
            if self._mxd_refused:
                return
            super().requestReceived(command, path, version)

        def _mxd_refuse(self, size: int) -> None:
            self._mxd_refused = True
            ip = getattr(self.getClientAddress(), "host", "?")
            log.info("webmail request body of {size} octets from {ip} refused (limit "
                     "{limit})", size=size, ip=ip, limit=max_body)
            text = (f"The upload is larger than {max_body} octets; nothing was "
                    "sent.\n").encode()
            channel: Any = self.channel
            channel.transport.write(_TOO_LARGE % (len(text), text))
            channel.transport.loseConnection()

    return LimitedRequest


@attrs.frozen
class FormFile:
    field: str
    filename: str
    content_type: str
    data: bytes


def form_files(request: Any, field: bytes) -> list[FormFile]:
    """The files sent in the multipart/form-data field ``field`` (empty file inputs,
    which browsers send with an empty name, left out)."""
    ctype = request.getHeader(b"content-type") or b""
    if not ctype.lower().startswith(b"multipart/form-data") or request.content is None:
        return []
    request.content.seek(0)
    body = request.content.read()
    request.content.seek(0)
    head = b"MIME-Version: 1.0\r\nContent-Type: " + ctype + b"\r\n\r\n"
    msg = BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not isinstance(msg, EmailMessage) or not msg.is_multipart():
        return []
    out = []
    want = field.decode("ascii")
    for part in msg.iter_parts():
        if part.get_param("name", header="content-disposition") != want:
            continue
        name = part.get_filename()
        payload = part.get_payload(decode=True)
        if not name or not isinstance(payload, bytes):
            continue
        # Browsers send the file name as raw UTF-8 (HTML's form encoding); the parser
        # kept those octets as surrogate escapes.
        text = str(name).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        out.append(FormFile(want, text, part.get_content_type(), payload))
    return out
