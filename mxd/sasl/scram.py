"""SCRAM (RFC 5802, RFC 7677), with channel binding (RFC 5056, RFC 5801 gs2 header).

Pure cores, no I/O: message parsers and builders, the key derivations of RFC 5802 §3,
and two small state machines, ``ScramServer`` and ``ScramClient``.  The Twisted-facing
exchange (secret lookup, rate limiting, logging) lives in ``mxd.sasl.server``.

Every parser raises only ``ScramError`` (carrying an RFC 5802 §7 ``e=`` name) on bad
input, whatever the bytes.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import os
import re

import attrs

from mxd.sasl.api import ChannelBindings, SASLError
from mxd.sasl.credentials import SCRAM_HASHES, ScramSecret
from mxd.sasl.saslprep import saslprep

# The mechanism names this module implements, keyed to the hash (RFC 5802 §4, RFC 7677 §2).
MECHANISMS: dict[str, str] = {
    "SCRAM-SHA-256-PLUS": "SHA-256",
    "SCRAM-SHA-1-PLUS": "SHA-1",
    "SCRAM-SHA-256": "SHA-256",
    "SCRAM-SHA-1": "SHA-1",
}

# Channel-binding type names mxd knows (RFC 5929, RFC 9266).
CB_TYPES = ("tls-exporter", "tls-unique", "tls-server-end-point")

DEFAULT_MAX_ITERATIONS = 1_000_000  # client side: refuse a server asking for more work


class ScramErrorCode(enum.StrEnum):
    """RFC 5802 §7 ``server-error-value``."""

    INVALID_ENCODING = "invalid-encoding"
    EXTENSIONS_NOT_SUPPORTED = "extensions-not-supported"
    INVALID_PROOF = "invalid-proof"
    CHANNEL_BINDINGS_DONT_MATCH = "channel-bindings-dont-match"
    SERVER_DOES_SUPPORT_CHANNEL_BINDING = "server-does-support-channel-binding"
    CHANNEL_BINDING_NOT_SUPPORTED = "channel-binding-not-supported"
    UNSUPPORTED_CHANNEL_BINDING_TYPE = "unsupported-channel-binding-type"
    UNKNOWN_USER = "unknown-user"
    INVALID_USERNAME_ENCODING = "invalid-username-encoding"
    NO_RESOURCES = "no-resources"
    OTHER_ERROR = "other-error"


class ScramError(SASLError):
    """A SCRAM exchange failed; ``code`` is the RFC 5802 §7 name, ``detail`` is for logs."""

    def __init__(self, code: ScramErrorCode, detail: str = "") -> None:
        super().__init__(f"{code}: {detail}" if detail else str(code))
        self.code = code
        self.detail = detail

    @property
    def server_final(self) -> bytes:
        """The ``e=`` server-final-message announcing this error (RFC 5802 §7)."""
        return b"e=" + self.code.encode("ascii")


def is_plus(mechanism: str) -> bool:
    return mechanism.endswith("-PLUS")


# --- RFC 5802 §7 syntax helpers --------------------------------------------------------

_CB_NAME = re.compile(r"[A-Za-z0-9.\-]+\Z")  # RFC 5056 §7 / RFC 5802 §7 cb-name
_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?\Z")


def _decode_utf8(data: bytes, code: ScramErrorCode = ScramErrorCode.INVALID_ENCODING) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ScramError(code, "not UTF-8") from e


def decode_saslname(value: str) -> str:
    """RFC 5802 §5.1: ``=2C`` is ``,`` and ``=3D`` is ``=``; any other ``=`` is invalid."""
    if not value:
        raise ScramError(ScramErrorCode.INVALID_ENCODING, "empty saslname")
    if "," in value or "\0" in value:
        raise ScramError(ScramErrorCode.INVALID_ENCODING, "bad character in saslname")
    out: list[str] = []
    i = 0
    while i < len(value):
        c = value[i]
        if c == "=":
            esc = value[i:i + 3]
            if esc == "=2C":
                out.append(",")
            elif esc == "=3D":
                out.append("=")
            else:
                raise ScramError(ScramErrorCode.INVALID_ENCODING, "bad = escape in saslname")
            i += 3
        else:
            out.append(c)
            i += 1
    return "".join(out)


def encode_saslname(name: str) -> str:
    """The inverse of ``decode_saslname``."""
    return name.replace("=", "=3D").replace(",", "=2C")


def _check_nonce(nonce: str) -> str:
    # RFC 5802 §7: printable = %x21-2B / %x2D-7E (no comma)
    if not nonce or any(not (0x21 <= ord(c) <= 0x7E) or c == "," for c in nonce):
        raise ScramError(ScramErrorCode.INVALID_ENCODING, "bad nonce")
    return nonce


def _b64decode(value: str) -> bytes:
    if not _BASE64.match(value):
        raise ScramError(ScramErrorCode.INVALID_ENCODING, "bad base64")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:  # pragma: no cover - the regex already checked
        raise ScramError(ScramErrorCode.INVALID_ENCODING, "bad base64") from e


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _attrs(text: str) -> list[tuple[str, str]]:
    """Split ``a=v,b=w`` into pairs; every part must be ``ALPHA "=" value``."""
    out = []
    for part in text.split(","):
        if len(part) < 2 or part[1] != "=" or not ("a" <= part[0] <= "z" or "A" <= part[0] <= "Z"):
            raise ScramError(ScramErrorCode.INVALID_ENCODING, "malformed attribute")
        out.append((part[0], part[2:]))
    return out


# --- gs2 header (RFC 5801 §4, as used by RFC 5802 §7) ----------------------------------


@attrs.frozen
class GS2Header:
    """``gs2-cbind-flag "," [authzid] ","``."""

    flag: str  # "n" (client has no binding), "y" (client thinks server can't), "p" (binding used)
    cb_name: str | None  # with flag "p"
    authzid: str | None  # decoded ``a=`` saslname
    raw: bytes  # the header exactly as sent, trailing comma included (for ``c=``)


def parse_gs2_header(message: bytes) -> tuple[GS2Header, bytes]:
    """Split a client-first-message into its gs2 header and the bare message."""
    first = message.find(b",")
    second = message.find(b",", first + 1) if first >= 0 else -1
    if first < 0 or second < 0:
        raise ScramError(ScramErrorCode.INVALID_ENCODING, "no gs2 header")
    flag_part = _decode_utf8(message[:first])
    authz_part = _decode_utf8(message[first + 1:second])
    cb_name: str | None = None
    if flag_part in ("n", "y"):
        flag = flag_part
    elif flag_part.startswith("p="):
        flag, cb_name = "p", flag_part[2:]
        if not _CB_NAME.match(cb_name):
            raise ScramError(ScramErrorCode.INVALID_ENCODING, "bad channel binding name")
    else:
        # RFC 5802 §7 has no "F," (non-standard GSS-API) prefix for SCRAM in SASL.
        raise ScramError(ScramErrorCode.INVALID_ENCODING, "bad gs2 channel binding flag")
    authzid: str | None = None
    if authz_part:
        if not authz_part.startswith("a="):
            raise ScramError(ScramErrorCode.INVALID_ENCODING, "bad gs2 authzid")
        authzid = decode_saslname(authz_part[2:])
    return GS2Header(flag, cb_name, authzid, message[:second + 1]), message[second + 1:]


def build_gs2_header(flag: str, cb_name: str | None = None, authzid: str | None = None) -> bytes:
    head = f"p={cb_name}" if flag == "p" else flag
    authz = f"a={encode_saslname(authzid)}" if authzid else ""
    return f"{head},{authz},".encode()


# --- messages --------------------------------------------------------------------------


@attrs.frozen
class ClientFirst:
    gs2: GS2Header
    username: str  # the decoded saslname, before SASLprep
    nonce: str
    bare: str  # client-first-message-bare, for AuthMessage


def parse_client_first(message: bytes) -> ClientFirst:
    """RFC 5802 §7 ``client-first-message``."""
    gs2, bare_b = parse_gs2_header(message)
    bare = _decode_utf8(bare_b)
    pairs = _attrs(bare)
    if pairs[0][0] == "m":  # RFC 5802 §5.1: mandatory extensions are not supported
        raise ScramError(ScramErrorCode.EXTENSIONS_NOT_SUPPORTED, "m= extension")
    if len(pairs) < 2 or pairs[0][0] != "n" or pairs[1][0] != "r":
        raise ScramError(ScramErrorCode.INVALID_ENCODING, "expected n=...,r=...")
    try:
        username = decode_saslname(pairs[0][1])
    except ScramError as e:
        raise ScramError(ScramErrorCode.INVALID_USERNAME_ENCODING, e.detail) from e
    return ClientFirst(gs2, username, _check_nonce(pairs[1][1]), bare)


@attrs.frozen
class ServerFirst:
    nonce: str
    salt: bytes
    iterations: int
    raw: str


def build_server_first(nonce: str, salt: bytes, iterations: int) -> str:
    return f"r={nonce},s={_b64(salt)},i={iterations}"


def parse_server_first(message: bytes) -> ServerFirst:
    """RFC 5802 §7 ``server-first-message`` (an ``e=`` in its place raises its error)."""
    raw = _decode_utf8(message)
    pairs = _attrs(raw)
    if pairs[0][0] == "e":
        raise _server_error(pairs[0][1])
    if pairs[0][0] == "m":
        raise ScramError(ScramErrorCode.EXTENSIONS_NOT_SUPPORTED, "m= extension")
    if len(pairs) < 3 or [p[0] for p in pairs[:3]] != ["r", "s", "i"]:
        raise ScramError(ScramErrorCode.INVALID_ENCODING, "expected r=...,s=...,i=...")
    salt = _b64decode(pairs[1][1])
    it = pairs[2][1]
    if not it.isascii() or not it.isdigit() or it.startswith("0") or len(it) > 10:
        raise ScramError(ScramErrorCode.INVALID_ENCODING, "bad iteration count")
    return ServerFirst(_check_nonce(pairs[0][1]), salt, int(it), raw)


@attrs.frozen
class ClientFinal:
    channel_binding: bytes  # decoded ``c=``: gs2 header + binding data
    nonce: str
    proof: bytes
    without_proof: str  # client-final-message-without-proof, for AuthMessage


def parse_client_final(message: bytes) -> ClientFinal:
    """RFC 5802 §7 ``client-final-message``: ``c=...,r=...[,ext],p=...``."""
    raw = _decode_utf8(message)
    pairs = _attrs(raw)
    if len(pairs) < 3 or pairs[0][0] != "c" or pairs[1][0] != "r" or pairs[-1][0] != "p":
        raise ScramError(ScramErrorCode.INVALID_ENCODING, "expected c=...,r=...,p=...")
    cut = raw.rfind(",p=")
    return ClientFinal(
        channel_binding=_b64decode(pairs[0][1]),
        nonce=_check_nonce(pairs[1][1]),
        proof=_b64decode(pairs[-1][1]),
        without_proof=raw[:cut],
    )


def parse_server_final(message: bytes) -> bytes:
    """RFC 5802 §7 ``server-final-message``: the verifier, or raise the ``e=`` error."""
    pairs = _attrs(_decode_utf8(message))
    key, value = pairs[0]
    if key == "e":
        raise _server_error(value)
    if key != "v":
        raise ScramError(ScramErrorCode.INVALID_ENCODING, "expected v= or e=")
    return _b64decode(value)


def _server_error(value: str) -> ScramError:
    try:
        code = ScramErrorCode(value)
    except ValueError:
        code = ScramErrorCode.OTHER_ERROR  # RFC 5802 §7: unrecognised errors are other-error
    return ScramError(code, f"server said e={value[:64]}")


# --- RFC 5802 §3 key derivation --------------------------------------------------------


def _algo(hash_name: str) -> str:
    return SCRAM_HASHES[hash_name]


def salted_password(hash_name: str, password: str, salt: bytes, iterations: int) -> bytes:
    """SaltedPassword := Hi(Normalize(password), salt, i)."""
    try:
        prepared = saslprep(password).encode("utf-8")
    except ValueError as e:
        raise ScramError(ScramErrorCode.OTHER_ERROR, "password fails SASLprep") from e
    return hashlib.pbkdf2_hmac(_algo(hash_name), prepared, salt, iterations)


def _hmac(hash_name: str, key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, _algo(hash_name)).digest()


def client_proof(hash_name: str, salted: bytes, auth_message: bytes) -> bytes:
    client_key = _hmac(hash_name, salted, b"Client Key")
    stored_key = hashlib.new(_algo(hash_name), client_key).digest()
    signature = _hmac(hash_name, stored_key, auth_message)
    return bytes(a ^ b for a, b in zip(client_key, signature, strict=True))


def server_signature(hash_name: str, server_key: bytes, auth_message: bytes) -> bytes:
    return _hmac(hash_name, server_key, auth_message)


def verify_client_proof(secret: ScramSecret, auth_message: bytes, proof: bytes) -> bool:
    """RFC 5802 §5.2 (end): recover ClientKey from the proof, compare H(ClientKey)."""
    signature = _hmac(secret.hash_name, secret.stored_key, auth_message)
    if len(proof) != len(signature):
        proof = bytes(len(signature))  # same work, certain failure
        ok_len = False
    else:
        ok_len = True
    client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
    candidate = hashlib.new(_algo(secret.hash_name), client_key).digest()
    return hmac.compare_digest(candidate, secret.stored_key) and ok_len


def new_nonce() -> str:
    """A fresh printable nonce (RFC 5802 §5.1: unpredictable)."""
    return base64.b64encode(os.urandom(18)).decode("ascii")


# --- server state machine --------------------------------------------------------------


class ScramServer:
    """The server side of one SCRAM exchange, without I/O.

    ``client_first`` checks the gs2 header against the connection (RFC 5802 §6), then
    the caller looks up the secret and calls ``server_first``, then ``client_final``
    returns the ``v=`` server-final or raises ``ScramError``.

    ``plus_advertised`` says whether a -PLUS variant was offered on this connection:
    then a client sending gs2 ``y`` has been downgraded and must fail (RFC 5802 §6).
    """

    def __init__(
        self, mechanism: str, channel_bindings: ChannelBindings | None, *,
        plus_advertised: bool, nonce: str | None = None,
    ) -> None:
        if mechanism not in MECHANISMS:
            raise ValueError(f"not a SCRAM mechanism: {mechanism}")
        self.mechanism = mechanism
        self.hash_name = MECHANISMS[mechanism]
        self._bindings = channel_bindings
        self._plus_advertised = plus_advertised
        self._snonce = nonce if nonce is not None else new_nonce()
        self._first: ClientFirst | None = None
        self._server_first: str | None = None
        self._secret: ScramSecret | None = None
        self._cb_data: bytes = b""

    def client_first(self, message: bytes) -> ClientFirst:
        """Parse and police the client-first-message; raise ScramError when refused."""
        first = parse_client_first(message)
        gs2 = first.gs2
        if is_plus(self.mechanism):
            if gs2.flag != "p" or gs2.cb_name is None:
                # RFC 5802 §6: a -PLUS mechanism needs a "p=" binding.
                raise ScramError(ScramErrorCode.OTHER_ERROR, "-PLUS mechanism without p=")
            if self._bindings is None:
                raise ScramError(ScramErrorCode.CHANNEL_BINDING_NOT_SUPPORTED, "no TLS")
            data = self._bindings.get(gs2.cb_name)
            if data is None:
                raise ScramError(ScramErrorCode.UNSUPPORTED_CHANNEL_BINDING_TYPE,
                                 f"cannot provide {gs2.cb_name}")
            self._cb_data = data
        elif gs2.flag == "p":
            # RFC 5802 §6: "p" is only valid with a -PLUS name (Cyrus clients send it anyway).
            raise ScramError(ScramErrorCode.CHANNEL_BINDING_NOT_SUPPORTED,
                             "p= under a non-PLUS mechanism name")
        elif gs2.flag == "y" and self._plus_advertised:
            # RFC 5802 §6: the client thinks we cannot bind, yet we offered -PLUS: downgrade.
            raise ScramError(ScramErrorCode.SERVER_DOES_SUPPORT_CHANNEL_BINDING, "gs2 y")
        try:
            user = saslprep(first.username)
            authz = saslprep(gs2.authzid) if gs2.authzid is not None else None
        except ValueError as e:
            raise ScramError(ScramErrorCode.INVALID_USERNAME_ENCODING, "SASLprep failed") from e
        if not user:
            raise ScramError(ScramErrorCode.INVALID_USERNAME_ENCODING, "empty username")
        if authz is not None and authz != user:
            raise ScramError(ScramErrorCode.OTHER_ERROR, "authzid differs from authcid")
        self._first = first
        return first

    @property
    def username(self) -> str:
        """The SASLprep'ed authentication identity (after ``client_first``)."""
        if self._first is None:
            raise ScramError(ScramErrorCode.OTHER_ERROR, "out of order")
        return saslprep(self._first.username)

    def server_first(self, secret: ScramSecret) -> bytes:
        if self._first is None or secret.hash_name != self.hash_name:
            raise ScramError(ScramErrorCode.OTHER_ERROR, "out of order")
        self._secret = secret
        self._server_first = build_server_first(
            self._first.nonce + self._snonce, secret.salt, secret.iterations)
        return self._server_first.encode("ascii")

    def client_final(self, message: bytes) -> bytes:
        """Verify the client-final-message; return the ``v=`` server-final-message."""
        if self._first is None or self._secret is None or self._server_first is None:
            raise ScramError(ScramErrorCode.OTHER_ERROR, "out of order")
        final = parse_client_final(message)
        expected_cb = self._first.gs2.raw + self._cb_data
        # RFC 5802 §5.1 "c": the gs2 header again, plus the binding data for "p".
        if not hmac.compare_digest(final.channel_binding, expected_cb):
            raise ScramError(ScramErrorCode.CHANNEL_BINDINGS_DONT_MATCH, "c= differs")
        if final.nonce != self._first.nonce + self._snonce:
            raise ScramError(ScramErrorCode.OTHER_ERROR, "nonce differs")
        auth_message = ",".join(
            (self._first.bare, self._server_first, final.without_proof)).encode("utf-8")
        if not verify_client_proof(self._secret, auth_message, final.proof):
            raise ScramError(ScramErrorCode.INVALID_PROOF, "proof does not verify")
        sig = server_signature(self.hash_name, self._secret.server_key, auth_message)
        return b"v=" + _b64(sig).encode("ascii")


# --- client state machine --------------------------------------------------------------


class ScramClient:
    """The client side of one SCRAM exchange, without I/O.

    ``flag`` is the gs2 flag: "p" with ``cb_type``/``cb_data`` for a -PLUS mechanism,
    "y" when the client could bind but the server offered no -PLUS, else "n".
    """

    def __init__(
        self, mechanism: str, username: str, password: str, *,
        authzid: str | None = None, flag: str | None = None,
        cb_type: str | None = None, cb_data: bytes | None = None,
        nonce: str | None = None, max_iterations: int = DEFAULT_MAX_ITERATIONS,
    ) -> None:
        if mechanism not in MECHANISMS:
            raise ValueError(f"not a SCRAM mechanism: {mechanism}")
        self.mechanism = mechanism
        self.hash_name = MECHANISMS[mechanism]
        if is_plus(mechanism):
            if cb_type is None or cb_data is None:
                raise ValueError("a -PLUS mechanism needs cb_type and cb_data")
            flag = "p"
        elif flag is None or flag == "p":
            flag = "n"
        self._gs2 = build_gs2_header(flag, cb_type if flag == "p" else None, authzid)
        self._cb_data = cb_data if flag == "p" and cb_data is not None else b""
        self._username = saslprep(username)
        self._password = password
        self._cnonce = _check_nonce(nonce if nonce is not None else new_nonce())
        self._max_iterations = max_iterations
        self._bare = f"n={encode_saslname(self._username)},r={self._cnonce}"
        self._expected_sig: bytes | None = None

    def first(self) -> bytes:
        return self._gs2 + self._bare.encode("utf-8")

    def final(self, server_first: bytes) -> bytes:
        sf = parse_server_first(server_first)
        # RFC 5802 §5.1 "r": the server's nonce starts with ours and adds to it.
        if not sf.nonce.startswith(self._cnonce) or len(sf.nonce) == len(self._cnonce):
            raise ScramError(ScramErrorCode.OTHER_ERROR, "server nonce does not extend ours")
        if sf.iterations > self._max_iterations:
            raise ScramError(ScramErrorCode.OTHER_ERROR, "iteration count too large")
        without_proof = f"c={_b64(self._gs2 + self._cb_data)},r={sf.nonce}"
        auth_message = ",".join((self._bare, sf.raw, without_proof)).encode("utf-8")
        salted = salted_password(self.hash_name, self._password, sf.salt, sf.iterations)
        proof = client_proof(self.hash_name, salted, auth_message)
        server_key = _hmac(self.hash_name, salted, b"Server Key")
        self._expected_sig = server_signature(self.hash_name, server_key, auth_message)
        return f"{without_proof},p={_b64(proof)}".encode("ascii")

    def verify(self, server_final: bytes) -> None:
        """Check the server's ``v=``; raise ScramError (with the server's ``e=``) otherwise."""
        if self._expected_sig is None:
            raise ScramError(ScramErrorCode.OTHER_ERROR, "out of order")
        got = parse_server_final(server_final)
        if not hmac.compare_digest(got, self._expected_sig):
            raise ScramError(ScramErrorCode.INVALID_PROOF, "server signature does not verify")
