"""The CRAM-MD5 SASL mechanism (RFC 2195).

The server sends a unique challenge ``<random.timestamp@hostname>`` and the client
answers ``user SP hex(HMAC-MD5(password, challenge))``.  The server checks it against
the stored HMAC pad states (``CramMD5Secret.hmac_hex``), never the password.  Pure.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re

import attrs

from mxd.sasl.api import SASLError
from mxd.sasl.credentials import CramMD5Secret

MECHANISM = "CRAM-MD5"
_DIGEST = re.compile(r"[0-9a-fA-F]{32}\Z")
MAX_RESPONSE = 1024


class CramMD5Error(SASLError):
    """A CRAM-MD5 response is malformed."""


@attrs.frozen
class CramMD5Response:
    username: str
    digest: str  # 32 lowercase hex digits


def make_challenge(hostname: str, timestamp: float, random: bytes | None = None) -> bytes:
    """RFC 2195 §2: a msg-id style challenge, unique per exchange."""
    rnd = int.from_bytes(random if random is not None else os.urandom(8), "big")
    return f"<{rnd}.{int(timestamp)}@{hostname}>".encode("ascii", "replace")


def parse_response(data: bytes) -> CramMD5Response:
    """``user SP digest``; the user name may itself contain spaces (split at the last)."""
    if len(data) > MAX_RESPONSE:
        raise CramMD5Error("response too long")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CramMD5Error("not UTF-8") from e
    user, sep, digest = text.rpartition(" ")
    if not sep or not user or not _DIGEST.match(digest) or "\0" in user:
        raise CramMD5Error("expected 'user digest'")
    return CramMD5Response(user, digest.lower())


def verify(secret: CramMD5Secret, challenge: bytes, digest: str) -> bool:
    """Constant-time comparison of the client's digest with the expected one."""
    return hmac.compare_digest(secret.hmac_hex(challenge).encode(), digest.lower().encode())


def respond(username: str, password: str, challenge: bytes) -> bytes:
    """The client's answer (RFC 2195 §2)."""
    digest = hmac.new(password.encode("utf-8"), challenge, hashlib.md5).hexdigest()
    return f"{username} {digest}".encode()
