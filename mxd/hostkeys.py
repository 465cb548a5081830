"""Pre-generated host keys: the stable keys every TLS certificate of this server is made for.

Inbound DANE (RFC 7672 §3.1.1, "3 1 1" records) pins the SHA-256 of the server's public key
(SubjectPublicKeyInfo).  If a renewal brought a new key, every TLSA record would go stale
and DANE senders would defer our mail.  So mxd generates its keys once — an RSA-2048 key for
old clients and an ECDSA P-256 key — and requests every certificate (ACME or self-signed)
for them; the TLSA records stay valid across renewals.  Rolling a key means publishing the
next key's TLSA record first, waiting two TTLs, then switching (RFC 7671 §8.1).

Key files are PEM (PKCS#8), mode 0600, written atomically and never overwritten.
"""

from __future__ import annotations

import enum
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import attrs
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from mxd.errors import MxdError

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class HostKeyError(MxdError):
    """A host key file is missing, unreadable, of the wrong kind or too permissive."""


class KeyKind(enum.StrEnum):
    RSA2048 = "rsa2048"
    ECDSAP256 = "ecdsap256"


DEFAULT_FILES = {KeyKind.RSA2048: "hostkey-rsa2048.pem", KeyKind.ECDSAP256: "hostkey-ecdsap256.pem"}


@attrs.frozen
class HostKey:
    """One loaded host key and where it came from."""

    kind: KeyKind
    path: Path
    key: PrivateKey = attrs.field(repr=False)

    @property
    def spki_sha256(self) -> bytes:
        """SHA-256 of the DER SubjectPublicKeyInfo: the data of a TLSA 3 1 1 record
        (RFC 6698 §2.1.2 selector 1, §2.1.3 matching type 1)."""
        return spki_sha256(self.key)

    def pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())


def spki_sha256(key: PrivateKeyTypes) -> bytes:
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).digest()


def generate(kind: KeyKind) -> PrivateKey:
    """A new key of ``kind`` (CPU-heavy for RSA: call off the reactor thread)."""
    if kind is KeyKind.RSA2048:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file of mode 0600 atomically; refuse to overwrite."""
    if path.exists():
        raise HostKeyError(f"{path} exists; refusing to overwrite a key")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.link(tmp, path)  # fails if the file appeared meanwhile
    os.unlink(tmp)


def ensure(directory: Path) -> list[HostKey]:
    """Load the two host keys from ``directory``, generating those that are missing."""
    out = []
    for kind, name in DEFAULT_FILES.items():
        path = directory / name
        if not path.exists():
            key = generate(kind)
            write_private(path, HostKey(kind, path, key).pem())
        out.append(load(path))
    return out


def next_keys(current: list[HostKey], stamp: str) -> list[HostKey]:
    """New keys of the same kinds as ``current``, written next to them as
    ``hostkey-<kind>-<stamp>.pem`` (never overwriting): the keys of a rollover.

    RFC 7671 §8.1 (key rollover): publish the TLSA records of the new keys first, wait
    until the old records have expired from caches (twice the TTL), then switch
    [tls].host_keys to the new files and restart; remove the old records afterwards."""
    out = []
    for hk in current:
        path = hk.path.with_name(f"hostkey-{hk.kind.value}-{stamp}.pem")
        key = generate(hk.kind)
        write_private(path, HostKey(hk.kind, path, key).pem())
        out.append(load(path))
    return out


def load(path: Path) -> HostKey:
    """Load one host key; raise HostKeyError naming the file and the fix."""
    try:
        st = path.stat()
        data = path.read_bytes()
    except OSError as e:
        raise HostKeyError(f"cannot read host key {path}: {e.strerror}") from e
    if st.st_mode & 0o077:
        raise HostKeyError(f"host key {path} is readable by others (mode "
                           f"{st.st_mode & 0o777:o}): chmod 600 {path}")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise HostKeyError(f"{path}: not an unencrypted PEM private key: {e}") from e
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise HostKeyError(f"{path}: RSA key of {key.key_size} bits; need at least 2048")
        return HostKey(KeyKind.RSA2048, path, key)
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return HostKey(KeyKind.ECDSAP256, path, key)
    raise HostKeyError(f"{path}: expected an RSA or ECDSA P-256 key, got {type(key).__name__}")


def load_all(paths: Sequence[Path]) -> list[HostKey]:
    return [load(p) for p in paths]
