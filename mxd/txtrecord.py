"""Versioned tag-value TXT records ("v=STSv1; id=...", "v=TLSRPTv1; rua=..."): the shared
first step of RFC 8461 §3.1 and RFC 8460 §3 parsing."""

from __future__ import annotations


def record_fields(text: bytes | str, version: str, error: type[Exception]) -> list[str]:
    """The ``name=value`` fields after the leading ``v=<version>`` field.

    Raises ``error`` when the record is not ASCII or does not start with that version;
    white space around fields and one trailing ";" are allowed (both RFCs' ABNF)."""
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            raise error("TXT record is not ASCII") from None
    parts = [p.strip(" \t") for p in text.split(";")]
    if parts and parts[-1] == "":
        parts.pop()  # a final ";" is allowed
    if not parts or parts[0] != f"v={version}":
        raise error(f"record does not start with v={version}")
    return parts[1:]
