"""The PLAIN SASL mechanism (RFC 4616).

Pure: parse and build the single client message
``[authzid] UTF8NUL authcid UTF8NUL passwd``.
"""

from __future__ import annotations

import attrs

from mxd.sasl.api import SASLError

MECHANISM = "PLAIN"
MAX_FIELD = 255  # RFC 4616 §2: each of authzid, authcid, passwd is at most 255 octets


class PlainError(SASLError):
    """The PLAIN message is malformed."""


@attrs.frozen
class PlainMessage:
    authzid: str | None
    authcid: str
    password: str = attrs.field(repr=False)


def parse_plain(message: bytes) -> PlainMessage:
    """RFC 4616 §2 ``message``; raises PlainError on anything else."""
    parts = message.split(b"\0")
    if len(parts) != 3:
        raise PlainError("expected authzid NUL authcid NUL password")
    authzid_b, authcid_b, passwd_b = parts
    if not authcid_b or not passwd_b:
        raise PlainError("empty authentication identity or password")
    if any(len(p) > MAX_FIELD for p in parts):
        raise PlainError("field longer than 255 octets")
    try:
        authzid, authcid, passwd = (p.decode("utf-8") for p in parts)
    except UnicodeDecodeError as e:
        raise PlainError("not UTF-8") from e
    return PlainMessage(authzid or None, authcid, passwd)


def build_plain(authcid: str, password: str, authzid: str | None = None) -> bytes:
    return b"\0".join(((authzid or "").encode(), authcid.encode(), password.encode()))
