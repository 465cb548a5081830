"""Trace and origination fields the server adds (RFC 5321 §4.4, RFC 3848, RFC 8689 §4.3,
RFC 5322 §3.6.1, §3.6.4).  Pure: time and ids come in as arguments."""

from __future__ import annotations

import email.utils
import re
from datetime import datetime

import attrs


@attrs.frozen
class TraceInfo:
    helo: str  # what the client said in EHLO/HELO
    remote_ip: str
    remote_host: str | None  # a verified reverse name, when known
    by_host: str
    protocol: str  # RFC 3848: SMTP, ESMTP, ESMTPA, ESMTPS, ESMTPSA; UTF8... with SMTPUTF8
    queue_id: str
    when: datetime  # timezone-aware
    tls_version: str | None = None
    tls_cipher: str | None = None
    recipient: str | None = None  # the single recipient, when there is exactly one
    requiretls: bool = False


def with_protocol(*, extended: bool, tls: bool, authenticated: bool, smtputf8: bool) -> str:
    """The ``with`` keyword (RFC 3848; RFC 6531 §3.7.3 UTF8SMTP* variants)."""
    if not extended:
        return "SMTP"
    name = "ESMTP" + ("S" if tls else "") + ("A" if authenticated else "")
    if smtputf8:
        name = "UTF8SMTP" + name[len("ESMTP") :]
    return name


def _clean(text: str) -> str:
    """Keep client-supplied text from breaking the field (no CR/LF, no parentheses)."""
    if text.isprintable() and "(" not in text and ")" not in text and "\\" not in text:
        return text[:255]  # the usual HELO name or address: nothing to replace
    return "".join(c if c.isprintable() and c not in "()\\" else "?" for c in text)[:255]


def received_field(info: TraceInfo) -> bytes:
    """A folded ``Received:`` field ending in CRLF (RFC 5321 §4.4 Stamp)."""
    ip = f"[{info.remote_ip}]" if ":" not in info.remote_ip else f"[IPv6:{info.remote_ip}]"
    tcp_info = f"{info.remote_host} {ip}" if info.remote_host else ip
    lines = [f"Received: from {_clean(info.helo)} ({tcp_info})"]
    lines.append(f"\tby {info.by_host} (mxd)")
    with_clause = f"\twith {info.protocol}"
    if info.requiretls:
        with_clause += " (requiretls)"  # RFC 8689 §4.3
    if info.tls_version:
        with_clause += f" (version={info.tls_version} cipher={_clean(info.tls_cipher or '')})"
    lines.append(with_clause)
    lines.append(f"\tid {info.queue_id}")
    date = email.utils.format_datetime(info.when)
    if info.recipient is not None:
        lines.append(f"\tfor <{_clean(info.recipient)}>; {date}")
    else:
        lines[-1] += f"; {date}"
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def date_field(when: datetime) -> bytes:
    """RFC 5322 §3.6.1 ``Date:`` for a submitted message that lacks one (RFC 6409 §8.2)."""
    return f"Date: {email.utils.format_datetime(when)}\r\n".encode("ascii")


def message_id_field(unique: str, host: str) -> bytes:
    """RFC 5322 §3.6.4 ``Message-ID:`` for a submitted message that lacks one (RFC 6409 §8.3)."""
    return f"Message-ID: <{unique}@{host}>\r\n".encode("ascii")


_RECEIVED = re.compile(rb"(?im)^received[ \t]*:")


def count_hops(headers: bytes) -> int:
    """The number of ``Received:`` fields in a header section (RFC 5321 §6.3: counting
    them is the loop detection SMTP servers use; each relay adds one, §4.4)."""
    return len(_RECEIVED.findall(headers))
