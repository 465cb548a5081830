"""DKIM signing (RFC 6376 §5), RSA-SHA256 and Ed25519-SHA256 (RFC 8463) side by side.

``Signer`` signs one message: the body is hashed as it streams (``feed``), and ``finish``
returns the ``DKIM-Signature`` fields to put on top of the header section, one per key.
relaxed/relaxed canonicalisation; the header set of RFC 6376 §5.4.1, with the fields in
``OVERSIGNED`` listed once more than they occur (§8.15), so that nobody can add a second
From or Subject without breaking the signature.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, padding

from mxd.msgauth.dkim import BodyHasher, signed_data
from mxd.msgauth.dkimkeys import DKIMKey
from mxd.msgauth.headers import Field, split_fields

# RFC 6376 §5.4.1: fields that SHOULD be signed when present.
SIGNED = ("from", "reply-to", "subject", "date", "to", "cc", "resent-date", "resent-from",
          "resent-to", "resent-cc", "in-reply-to", "references", "list-id", "list-help",
          "list-unsubscribe", "list-subscribe", "list-post", "list-owner", "list-archive",
          "message-id", "mime-version", "content-type", "content-transfer-encoding")
OVERSIGNED = frozenset({"from", "reply-to", "subject", "date", "to", "cc", "message-id",
                        "in-reply-to", "references", "mime-version", "content-type",
                        "content-transfer-encoding"})


def header_list(fields: list[Field], extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """h= for these fields: each present name as often as it occurs, plus once more for
    the oversigned ones; From always (RFC 6376 §5.4).  ``extra``: more field names the
    caller's standard asks to sign (e.g. RFC 8460 §5.3's TLS-Report-Domain), signed as
    often as they occur."""
    counts: dict[str, int] = {}
    for f in fields:
        counts[f.lname] = counts.get(f.lname, 0) + 1
    out: list[str] = []
    for name in SIGNED:
        n = counts.get(name, 0)
        if name in OVERSIGNED:
            n += 1
        out.extend([name] * n)
    for name in dict.fromkeys(e.lower() for e in extra):
        if name not in SIGNED:
            out.extend([name] * counts.get(name, 0))
    return tuple(out)


def _fold_b64(value: str, width: int = 72) -> str:
    return "\r\n\t ".join(value[i:i + width] for i in range(0, len(value), width))


def sign_fields(keys: list[DKIMKey], fields: list[Field], digest: bytes, now: int,
                extra: tuple[str, ...] = ()) -> list[str]:
    """The DKIM-Signature fields (without CRLF) for a header section whose relaxed body
    hash (SHA-256) is ``digest``; ``extra``: see ``header_list``."""
    h = header_list(fields, extra)
    bh = base64.b64encode(digest).decode("ascii")
    out: list[str] = []
    for key in keys:
        algorithm = "ed25519-sha256" if key.algorithm == "ed25519" else "rsa-sha256"
        head = (f"DKIM-Signature: v=1; a={algorithm}; c=relaxed/relaxed; d={key.domain};\r\n"
                f"\ts={key.selector}; t={now};\r\n"
                f"\th={':'.join(h)};\r\n"
                f"\tbh={bh};\r\n\tb=")
        field = Field("DKIM-Signature", head.encode("ascii") + b"\r\n")
        data = signed_data(fields, h, field, relaxed=True)
        if isinstance(key.private_key, ed25519.Ed25519PrivateKey):
            sig = key.private_key.sign(hashlib.sha256(data).digest())  # RFC 8463 §3
        else:
            sig = key.private_key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        out.append(head + _fold_b64(base64.b64encode(sig).decode("ascii")))
    return out


class Signer:
    """Signs one message with every key given (one signature per key)."""

    def __init__(self, keys: list[DKIMKey]) -> None:
        self.keys = keys
        self._hasher = BodyHasher(True, "sha256", None)

    def feed(self, data: bytes) -> None:
        self._hasher.feed(data)

    def finish(self, header_section: bytes, now: int, extra: tuple[str, ...] = ()
               ) -> list[str]:
        return sign_fields(self.keys, split_fields(header_section), self._hasher.digest(), now,
                           extra)


def sign_message(keys: list[DKIMKey], message: bytes, now: int,
                 extra: tuple[str, ...] = ()) -> bytes:
    """The message with DKIM-Signature fields on top (for messages held in memory, such
    as DSNs and reports); ``extra``: more fields to sign when present."""
    idx = message.find(b"\r\n\r\n")
    header, body = (message[: idx + 2], message[idx + 4:]) if idx >= 0 else (message, b"")
    signer = Signer(keys)
    signer.feed(body)
    fields = signer.finish(header, now, extra)
    return b"".join(f.encode("ascii") + b"\r\n" for f in fields) + message
