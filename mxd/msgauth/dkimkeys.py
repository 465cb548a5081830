"""DKIM signing keys: generation, key files and the DNS key record (RFC 6376 §3.6.1,
RFC 8463 §4.2 for Ed25519, RFC 8301 §3.2 for the RSA key size).

Key files live at ``KEY_DIR/DOMAIN/SELECTOR.pem`` (PKCS#8 PEM, mode 0600); the algorithm is
read from the key itself.  ``generate_key`` writes one and returns the record to publish at
``SELECTOR._domainkey.DOMAIN``; ``load_key`` reads one back.  Key rollover: generate a key
under a new selector, publish its record, add the selector to the domain's list in the
config, and remove the old selector once the new record is visible.
"""

from __future__ import annotations

import base64
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import attrs
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mxd.errors import MxdError

Algorithm = Literal["rsa", "ed25519"]
PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

# RFC 6376 §3.1: a selector is one or more dot-separated sub-domain labels.
_SELECTOR = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


class DKIMKeyError(MxdError):
    """A key file is missing, unreadable, of an unsupported type, or would be overwritten."""


@attrs.frozen
class DKIMKey:
    """A signing key of one domain under one selector."""

    domain: str  # A-label, lower case
    selector: str
    algorithm: Algorithm
    private_key: PrivateKey = attrs.field(repr=False)
    path: Path | None = None

    @property
    def dns_name(self) -> str:
        """Where the key record is published (RFC 6376 §3.6.2.1), without the final dot."""
        return f"{self.selector}._domainkey.{self.domain}"

    @property
    def txt(self) -> str:
        """The key record's text: ``v=DKIM1; k=rsa; p=...`` (RFC 6376 §3.6.1)."""
        return dns_record(self.private_key)

    def zone_line(self) -> str:
        """A zone-file line with the record split into character-strings of at most 255
        octets (RFC 7208 §3.3 style; an RSA-2048 record is longer than one string)."""
        text = self.txt
        parts = [text[i:i + 255] for i in range(0, len(text), 255)]
        quoted = " ".join(f'"{p}"' for p in parts)
        return f"{self.dns_name}. IN TXT {quoted}"


def public_key_bytes(key: PrivateKey) -> bytes:
    """The ``p=`` value before base64: SubjectPublicKeyInfo DER for RSA (RFC 6376 §3.6.1),
    the raw 32-octet public key for Ed25519 (RFC 8463 §4.2)."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.public_key().public_bytes(serialization.Encoding.Raw,
                                             serialization.PublicFormat.Raw)
    return key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def dns_record(key: PrivateKey) -> str:
    """``v=DKIM1; k=...; p=...`` for the public half of ``key``."""
    k = "ed25519" if isinstance(key, ed25519.Ed25519PrivateKey) else "rsa"
    p = base64.b64encode(public_key_bytes(key)).decode("ascii")
    return f"v=DKIM1; k={k}; p={p}"


def default_selector(algorithm: Algorithm, when: datetime | None = None) -> str:
    """``YYYYMMDDr`` for RSA, ``YYYYMMDDe`` for Ed25519: dated, so a rollover picks a new one."""
    day = (when or datetime.now(UTC)).strftime("%Y%m%d")
    return day + ("r" if algorithm == "rsa" else "e")


def key_path(key_dir: Path, domain: str, selector: str) -> Path:
    return Path(key_dir) / domain / f"{selector}.pem"


def _check(domain: str, selector: str) -> str:
    from mxd.dns.names import Domain

    if not _SELECTOR.match(selector):
        raise DKIMKeyError(f"invalid selector {selector!r} (RFC 6376 §3.1: dot-separated "
                           "labels of letters, digits and hyphens)")
    try:
        return Domain.parse(domain).ascii
    except ValueError as e:
        raise DKIMKeyError(f"invalid domain {domain!r}: {e}") from None


def generate_key(key_dir: Path, domain: str, selector: str | None = None,
                 algorithm: Algorithm = "ed25519", rsa_bits: int = 2048,
                 overwrite: bool = False) -> DKIMKey:
    """Create a key for ``domain``/``selector`` in ``key_dir`` (file mode 0600, directories
    0700) and return it; ``.zone_line()`` or ``.txt`` is what to publish in DNS.

    Refuses to overwrite an existing key file unless ``overwrite``: a published record
    would stop matching and every message signed since would fail verification."""
    if algorithm not in ("rsa", "ed25519"):
        raise DKIMKeyError(f"unknown algorithm {algorithm!r} (rsa or ed25519)")
    if algorithm == "rsa" and rsa_bits < 1024:
        raise DKIMKeyError("RSA keys must have at least 1024 bits (RFC 8301 §3.2); "
                           "2048 is recommended")
    selector = selector or default_selector(algorithm)
    domain_ascii = _check(domain, selector)
    path = key_path(key_dir, domain_ascii, selector)
    if path.exists() and not overwrite:
        raise DKIMKeyError(f"{path} exists; choose another selector for a new key")
    private: PrivateKey
    if algorithm == "rsa":
        private = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    else:
        private = ed25519.Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return DKIMKey(domain_ascii, selector, algorithm, private, path)


def load_key(key_dir: Path, domain: str, selector: str) -> DKIMKey:
    """Read ``KEY_DIR/DOMAIN/SELECTOR.pem``; DKIMKeyError names the file on any problem."""
    domain_ascii = _check(domain, selector)
    path = key_path(key_dir, domain_ascii, selector)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DKIMKeyError(f"cannot read DKIM key {path}: {e.strerror or e}") from None
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise DKIMKeyError(f"{path}: not an unencrypted PEM private key ({e})") from None
    if isinstance(private, rsa.RSAPrivateKey):
        if private.key_size < 1024:
            raise DKIMKeyError(f"{path}: RSA key of {private.key_size} bits; receivers "
                               "ignore keys under 1024 bits (RFC 8301 §3.2)")
        return DKIMKey(domain_ascii, selector, "rsa", private, path)
    if isinstance(private, ed25519.Ed25519PrivateKey):
        return DKIMKey(domain_ascii, selector, "ed25519", private, path)
    raise DKIMKeyError(f"{path}: key type {type(private).__name__} cannot sign DKIM "
                       "(RSA or Ed25519 only)")
