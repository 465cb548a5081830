"""SCRAM secrets in LDAP: RFC 5803 values of the RFC 3112 ``authPassword`` attribute.

RFC 5803 §3 stores one value per SCRAM hash function::

    authPassword: SCRAM-SHA-256$4096:<salt>$<StoredKey>:<ServerKey>

The scheme is the SCRAM mechanism name without "-PLUS" (the same keys serve both);
the authInfo is ``<iteration count>:<base64 salt>``, the authValue is
``<base64 StoredKey>:<base64 ServerKey>`` (RFC 5803 §3, RFC 4648 base64).  RFC 3112 §4.1
allows optional spaces around each "$" (``w DOLLAR w``).

Pure functions over strings; no I/O.  ``parse`` rejects what it cannot use with
``AuthPasswordError`` (callers log and skip that value, never fall back to plaintext).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable

from mxd.errors import MxdError
from mxd.sasl.credentials import DEFAULT_SCRAM_ITERATIONS, SCRAM_HASHES, ScramSecret

# RFC 5803 §3 schemes, which are the SASL mechanism names (RFC 5802 §4, RFC 7677 §2).
SCHEMES = {"SCRAM-SHA-1": "SHA-1", "SCRAM-SHA-256": "SHA-256"}
MAX_VALUE = 1024  # a real value is < 200 octets; refuse huge ones before decoding
MAX_ITERATIONS = 10_000_000  # beyond this a login would stall a worker for seconds

# RFC 3112 §4.1: authPasswordValue = w scheme s authInfo s authValue w; s = w "$" w
_VALUE = re.compile(r" *([A-Za-z0-9.\-]{1,64}) *\$ *([^$ ]+) *\$ *([^$ ]+) *")


class AuthPasswordError(MxdError):
    """An authPassword value is not a usable RFC 5803 SCRAM value."""


class UnknownScheme(AuthPasswordError):
    """The value is of a scheme other than SCRAM-SHA-1/-256 (not an error to log loudly)."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise AuthPasswordError(f"{what} is not base64") from None


def format_value(secret: ScramSecret) -> str:
    """The RFC 5803 §3 authPassword value of one SCRAM secret."""
    return (f"SCRAM-{secret.hash_name}${secret.iterations}:{_b64(secret.salt)}"
            f"${_b64(secret.stored_key)}:{_b64(secret.server_key)}")


def parse_value(value: str | bytes) -> ScramSecret:
    """One authPassword value -> ScramSecret; AuthPasswordError when unusable,
    UnknownScheme for a value of another scheme (e.g. MD5, RFC 3112 §3)."""
    if isinstance(value, bytes):
        if len(value) > MAX_VALUE:
            raise AuthPasswordError(f"value longer than {MAX_VALUE} octets")
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            raise AuthPasswordError("value is not ASCII") from None
    if len(value) > MAX_VALUE:
        raise AuthPasswordError(f"value longer than {MAX_VALUE} octets")
    m = _VALUE.fullmatch(value)
    if m is None:
        raise AuthPasswordError("not of the form scheme$authInfo$authValue (RFC 3112 §4.1)")
    scheme, info, val = m.groups()
    hash_name = SCHEMES.get(scheme.upper())
    if hash_name is None:
        raise UnknownScheme(f"scheme {scheme!r} is not SCRAM-SHA-1 or SCRAM-SHA-256")
    count, sep, salt_b64 = info.partition(":")
    if not sep or not count.isdigit() or not count.isascii():
        raise AuthPasswordError("authInfo is not <iteration count>:<salt>")
    iterations = int(count)
    if not 1 <= iterations <= MAX_ITERATIONS:
        raise AuthPasswordError(f"iteration count {iterations} out of range")
    stored_b64, sep, server_b64 = val.partition(":")
    if not sep:
        raise AuthPasswordError("authValue is not <StoredKey>:<ServerKey>")
    salt = _unb64(salt_b64, "salt")
    if not salt:
        raise AuthPasswordError("empty salt")
    stored, server = _unb64(stored_b64, "StoredKey"), _unb64(server_b64, "ServerKey")
    size = hashlib.new(SCRAM_HASHES[hash_name]).digest_size
    if len(stored) != size or len(server) != size:
        raise AuthPasswordError(f"{scheme} keys must be {size} octets")
    return ScramSecret(hash_name, salt, iterations, stored, server)


def parse_values(values: Iterable[str | bytes]) -> tuple[dict[str, ScramSecret], list[str]]:
    """All usable SCRAM secrets among an entry's authPassword values (the first per hash
    wins), and the problems found in the others (for the log; values of other schemes are
    skipped silently)."""
    found: dict[str, ScramSecret] = {}
    problems: list[str] = []
    for v in values:
        try:
            secret = parse_value(v)
        except UnknownScheme:
            continue
        except AuthPasswordError as e:
            problems.append(str(e))
            continue
        found.setdefault(secret.hash_name, secret)
    return found, problems


def derive_values(password: str, iterations: int = DEFAULT_SCRAM_ITERATIONS,
                  hashes: Iterable[str] = ("SHA-256", "SHA-1")) -> list[str]:
    """authPassword values for ``password`` (fresh salt per hash), for an admin to put
    into the directory (``mxd account scram-keys``).  CPU-heavy: not on the reactor."""
    return [format_value(ScramSecret.derive(h, password, iterations)) for h in hashes]


__all__ = [
    "AuthPasswordError",
    "SCHEMES",
    "UnknownScheme",
    "derive_values",
    "format_value",
    "parse_value",
    "parse_values",
]
