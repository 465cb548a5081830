"""Stored SASL secrets: what each mechanism needs, never the plaintext password.

RFC 5802 §3: a SCRAM server keeps salt, iteration count, StoredKey and ServerKey per
hash.  CRAM-MD5 (RFC 2195) needs the HMAC-MD5 inner/outer pad states (the "precomputed
HMAC" that Dovecot and Cyrus keep), and PLAIN/LOGIN are checked against a memory-hard
scrypt hash.  This module is pure: no I/O, no reactor.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import struct
from collections.abc import Mapping
from typing import Any, Protocol

import attrs

from mxd.errors import MxdError

DEFAULT_SCRAM_ITERATIONS = 4096
# scrypt parameters (RFC 7914): n=2**15, r=8, p=1 ≈ 32 MiB, ~60 ms on this class of machine.
SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1


class CredentialError(MxdError):
    """Stored credentials are malformed."""


class CredentialsUnavailable(MxdError):
    """The account's credentials cannot be checked right now (e.g. its directory server
    is down): a temporary failure, never a wrong password."""


SCRAM_HASHES = {"SHA-1": "sha1", "SHA-256": "sha256"}


def saslprep_password(password: str) -> bytes:
    """Prepare a password as RFC 5802 §2.2 asks (SASLprep, RFC 4013) and encode it."""
    from mxd.sasl.saslprep import saslprep

    return saslprep(password).encode("utf-8")


@attrs.frozen
class ScramSecret:
    """RFC 5802 §3 server-side secret for one hash function."""

    hash_name: str  # "SHA-1" or "SHA-256"
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    @classmethod
    def derive(
        cls, hash_name: str, password: str, iterations: int = DEFAULT_SCRAM_ITERATIONS,
        salt: bytes | None = None,
    ) -> ScramSecret:
        algo = SCRAM_HASHES[hash_name]
        if salt is None:
            salt = os.urandom(16)
        salted = hashlib.pbkdf2_hmac(algo, saslprep_password(password), salt, iterations)
        client_key = hmac.new(salted, b"Client Key", algo).digest()
        server_key = hmac.new(salted, b"Server Key", algo).digest()
        stored_key = hashlib.new(algo, client_key).digest()
        return cls(hash_name, salt, iterations, stored_key, server_key)

    def to_json(self) -> dict[str, Any]:
        return {
            "salt": _b64(self.salt),
            "i": self.iterations,
            "stored_key": _b64(self.stored_key),
            "server_key": _b64(self.server_key),
        }

    @classmethod
    def from_json(cls, hash_name: str, d: dict[str, Any]) -> ScramSecret:
        return cls(
            hash_name, _unb64(d["salt"]), int(d["i"]), _unb64(d["stored_key"]),
            _unb64(d["server_key"]),
        )


@attrs.frozen
class CramMD5Secret:
    """The HMAC-MD5 states after absorbing the inner and outer pads (RFC 2104).

    Knowing these lets the server compute HMAC-MD5(password, challenge) without the
    password.  They are password-equivalent for CRAM-MD5 itself, which is why CRAM-MD5
    can be switched off (``sasl.cram_md5 = false``) and then is not stored at all.
    """

    inner: bytes  # 16-byte MD5 state (A, B, C, D little-endian) after key XOR ipad
    outer: bytes

    @classmethod
    def derive(cls, password: str) -> CramMD5Secret:
        key = password.encode("utf-8")
        if len(key) > 64:
            key = hashlib.md5(key).digest()  # RFC 2104 key shortening
        key = key.ljust(64, b"\0")
        ipad = bytes(b ^ 0x36 for b in key)
        opad = bytes(b ^ 0x5C for b in key)
        return cls(_md5_state(ipad), _md5_state(opad))

    def hmac_hex(self, message: bytes) -> str:
        """HMAC-MD5 of ``message`` as lowercase hex, from the stored states."""
        inner = _md5_continue(self.inner, 64, message)
        return _md5_continue(self.outer, 64, inner).hex()

    def to_json(self) -> dict[str, Any]:
        return {"inner": _b64(self.inner), "outer": _b64(self.outer)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CramMD5Secret:
        return cls(_unb64(d["inner"]), _unb64(d["outer"]))


@attrs.frozen
class PasswordHash:
    """scrypt (RFC 7914) hash for PLAIN and LOGIN."""

    salt: bytes
    n: int
    r: int
    p: int
    digest: bytes

    @classmethod
    def derive(cls, password: str, *, n: int = SCRYPT_N, salt: bytes | None = None) -> PasswordHash:
        if salt is None:
            salt = os.urandom(16)
        digest = _scrypt(saslprep_password(password), salt, n, SCRYPT_R, SCRYPT_P)
        return cls(salt, n, SCRYPT_R, SCRYPT_P, digest)

    def verify(self, password: str) -> bool:
        try:
            candidate = saslprep_password(password)
        except ValueError:
            return False
        got = _scrypt(candidate, self.salt, self.n, self.r, self.p)
        return hmac.compare_digest(got, self.digest)

    def to_json(self) -> dict[str, Any]:
        return {"salt": _b64(self.salt), "n": self.n, "r": self.r, "p": self.p,
                "digest": _b64(self.digest)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PasswordHash:
        return cls(_unb64(d["salt"]), int(d["n"]), int(d["r"]), int(d["p"]), _unb64(d["digest"]))


class AccountSecrets(Protocol):
    """What the SASL server needs of one account, wherever its secrets are kept: the local
    store (``StoredSecrets``) or a directory (``mxd.directory.ldap``)."""

    @property
    def account(self) -> str | None:
        """The account's own name when it differs from the login name used (None: same)."""

    @property
    def scram(self) -> Mapping[str, ScramSecret]:
        """SCRAM secrets by hash ("SHA-1", "SHA-256"); empty: SCRAM is refused."""

    @property
    def cram_md5(self) -> CramMD5Secret | None: ...

    def verify_password(self, password: str) -> bool:
        """PLAIN/LOGIN check.  Blocking (a hash or a directory bind): run it on a worker
        thread.  Raises CredentialsUnavailable when it cannot be decided now."""


@attrs.frozen
class StoredSecrets:
    """Everything the SASL mechanisms need for one account (``AccountSecrets``)."""

    scram: dict[str, ScramSecret]  # keyed by "SHA-1" / "SHA-256"
    password: PasswordHash
    cram_md5: CramMD5Secret | None = None
    account: str | None = attrs.field(default=None, eq=False)  # not stored

    def verify_password(self, password: str) -> bool:
        return self.password.verify(password)

    @classmethod
    def derive(
        cls, password: str, *, iterations: int = DEFAULT_SCRAM_ITERATIONS,
        cram_md5: bool = True, scrypt_n: int = SCRYPT_N,
    ) -> StoredSecrets:
        return cls(
            scram={h: ScramSecret.derive(h, password, iterations) for h in SCRAM_HASHES},
            password=PasswordHash.derive(password, n=scrypt_n),
            cram_md5=CramMD5Secret.derive(password) if cram_md5 else None,
        )

    def to_text(self) -> str:
        d: dict[str, Any] = {
            "v": 1,
            "scram": {h: s.to_json() for h, s in self.scram.items()},
            "password": self.password.to_json(),
        }
        if self.cram_md5 is not None:
            d["cram_md5"] = self.cram_md5.to_json()
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_text(cls, text: str) -> StoredSecrets:
        try:
            d = json.loads(text)
            if d.get("v") != 1:
                raise CredentialError(f"unknown credential format version {d.get('v')!r}")
            return cls(
                scram={h: ScramSecret.from_json(h, s) for h, s in d["scram"].items()},
                password=PasswordHash.from_json(d["password"]),
                cram_md5=CramMD5Secret.from_json(d["cram_md5"]) if "cram_md5" in d else None,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise CredentialError(f"malformed stored credentials: {e}") from e


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=256 * 1024 * 1024, dklen=32)


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def _unb64(s: str) -> bytes:
    return base64.b64decode(s.encode("ascii"), validate=True)


# --- a minimal MD5 compression function, to save and resume HMAC-MD5 states ----------
# hashlib cannot export its internal state, and CRAM-MD5's stored form (RFC 2195 §"the
# server ... may store" the intermediate results) needs exactly that.

_S = [7, 12, 17, 22] * 4 + [5, 9, 14, 20] * 4 + [4, 11, 16, 23] * 4 + [6, 10, 15, 21] * 4
_K = [int(abs(__import__("math").sin(i + 1)) * 2**32) & 0xFFFFFFFF for i in range(64)]
_IV = struct.pack("<4I", 0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476)


def _rotl(x: int, c: int) -> int:
    return ((x << c) | (x >> (32 - c))) & 0xFFFFFFFF


def _md5_compress(state: tuple[int, int, int, int], block: bytes) -> tuple[int, int, int, int]:
    m = struct.unpack("<16I", block)
    a, b, c, d = state
    for i in range(64):
        if i < 16:
            f, g = (b & c) | (~b & d), i
        elif i < 32:
            f, g = (d & b) | (~d & c), (5 * i + 1) % 16
        elif i < 48:
            f, g = b ^ c ^ d, (3 * i + 5) % 16
        else:
            f, g = c ^ (b | ~d), (7 * i) % 16
        f = (f + a + _K[i] + m[g]) & 0xFFFFFFFF
        a, d, c = d, c, b
        b = (b + _rotl(f, _S[i])) & 0xFFFFFFFF
    s0, s1, s2, s3 = state
    return ((s0 + a) & 0xFFFFFFFF, (s1 + b) & 0xFFFFFFFF, (s2 + c) & 0xFFFFFFFF,
            (s3 + d) & 0xFFFFFFFF)


def _md5_state(block64: bytes) -> bytes:
    """MD5 state after compressing one 64-byte block from the standard IV."""
    st = struct.unpack("<4I", _IV)
    return struct.pack("<4I", *_md5_compress(st, block64))


def _md5_continue(state: bytes, done: int, data: bytes) -> bytes:
    """Finish an MD5 whose first ``done`` bytes (a multiple of 64) gave ``state``."""
    st = struct.unpack("<4I", state)
    total = done + len(data)
    msg = data + b"\x80" + b"\0" * ((55 - total) % 64) + struct.pack("<Q", (total * 8) & (2**64 - 1))
    for i in range(0, len(msg), 64):
        st = _md5_compress(st, msg[i:i + 64])
    return struct.pack("<4I", *st)
