"""SASL client mechanisms (RFC 4422) for mxd's own SMTP client and tools.

``choose_mechanism`` picks the most secure mechanism that the server offers and the
configuration allows; ``make_client`` builds a ``ClientMechanism`` for it.  A protocol
drives it:

* send ``initial_response()`` with the command (None: send none; b"": send ``=``);
* answer each server challenge with ``step(challenge)``;
* on success call ``finish(additional)`` with the success data, if any: SCRAM raises
  ``ScramError`` unless the server proved it knows the password (``v=``), so a
  server that skips the proof is not trusted.
"""

from __future__ import annotations

from collections.abc import Iterable

from mxd.sasl import cram_md5, login, plain, scram
from mxd.sasl.api import ChannelBindings, SASLError

PREFERENCE: tuple[str, ...] = (
    "SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-256", "SCRAM-SHA-1",
    "CRAM-MD5", "PLAIN", "LOGIN",
)

# Which binding type a -PLUS client uses when the caller does not say (RFC 9266 §3:
# tls-exporter is the default where defined; RFC 5802 §6: tls-unique before it).
CB_PREFERENCE = ("tls-exporter", "tls-unique", "tls-server-end-point")


class ClientError(SASLError):
    """The client mechanism cannot continue (bad challenge, unexpected step)."""


def choose_mechanism(
    offered: Iterable[str], allowed: Iterable[str] | None = None,
    have_channel_binding: bool = False,
) -> str | None:
    """The best of ``offered`` by ``PREFERENCE`` that ``allowed`` (None: all) permits;
    -PLUS only when the client has channel binding data.  None when nothing fits."""
    offer = {m.upper() for m in offered}
    allow = {m.upper() for m in allowed} if allowed is not None else set(PREFERENCE)
    for mech in PREFERENCE:
        if mech not in offer or mech not in allow:
            continue
        if scram.is_plus(mech) and not have_channel_binding:
            continue
        return mech
    return None


class ClientMechanism:
    mechanism: str = ""

    def initial_response(self) -> bytes | None:
        return None

    def step(self, challenge: bytes) -> bytes:
        raise ClientError(f"{self.mechanism}: unexpected challenge")

    def finish(self, additional: bytes | None = None) -> None:
        if additional:
            raise ClientError(f"{self.mechanism}: unexpected data with success")


class ScramClientMechanism(ClientMechanism):
    def __init__(self, core: scram.ScramClient) -> None:
        self.mechanism = core.mechanism
        self._core = core
        self._state = "first"

    def initial_response(self) -> bytes | None:
        self._state = "final"
        return self._core.first()

    def step(self, challenge: bytes) -> bytes:
        if self._state == "first":  # no initial response was sent: empty challenge
            self._state = "final"
            return self._core.first()
        if self._state == "final":
            self._state = "verify"
            return self._core.final(challenge)
        if self._state == "verify":  # server-final sent as a challenge (e.g. SMTP 334)
            self._core.verify(challenge)
            self._state = "verified"
            return b""
        raise ClientError(f"{self.mechanism}: unexpected challenge")

    def finish(self, additional: bytes | None = None) -> None:
        if additional:
            if self._state != "verify":
                raise ClientError(f"{self.mechanism}: unexpected data with success")
            self._core.verify(additional)
            self._state = "verified"
        if self._state != "verified":
            raise scram.ScramError(scram.ScramErrorCode.OTHER_ERROR,
                                   "server succeeded without proving its key")


class PlainClientMechanism(ClientMechanism):
    mechanism = plain.MECHANISM

    def __init__(self, username: str, password: str, authzid: str | None = None) -> None:
        self._msg = plain.build_plain(username, password, authzid)
        self._sent = False

    def initial_response(self) -> bytes | None:
        self._sent = True
        return self._msg

    def step(self, challenge: bytes) -> bytes:
        if self._sent:
            raise ClientError("PLAIN: unexpected challenge")
        self._sent = True
        return self._msg


class LoginClientMechanism(ClientMechanism):
    mechanism = login.MECHANISM

    def __init__(self, username: str, password: str) -> None:
        self._core = login.LoginClient(username, password)

    def step(self, challenge: bytes) -> bytes:
        try:
            return self._core.respond(challenge)
        except login.LoginError as e:
            raise ClientError(str(e)) from e


class CramMD5ClientMechanism(ClientMechanism):
    mechanism = cram_md5.MECHANISM

    def __init__(self, username: str, password: str) -> None:
        self._username = username
        self._password = password
        self._done = False

    def step(self, challenge: bytes) -> bytes:
        if self._done or not challenge:
            raise ClientError("CRAM-MD5: unexpected challenge")
        self._done = True
        return cram_md5.respond(self._username, self._password, challenge)


def make_client(
    mechanism: str, username: str, password: str, *, authzid: str | None = None,
    channel_bindings: ChannelBindings | None = None, cb_type: str | None = None,
    server_offered_plus: bool = False, nonce: str | None = None,
) -> ClientMechanism:
    """A client for ``mechanism``.

    For SCRAM: a -PLUS name binds to ``cb_type`` (default: the first of CB_PREFERENCE
    the connection provides); a plain SCRAM name sends gs2 ``y`` when the client has
    binding data but the server offered no -PLUS (RFC 5802 §6), else ``n``.
    """
    mech = mechanism.upper()
    try:
        return _make(mech, username, password, authzid, channel_bindings, cb_type,
                     server_offered_plus, nonce)
    except ValueError as e:  # SASLprep refused the user name, or a bad nonce
        raise ClientError(f"{mech}: {e}") from e


def _make(
    mech: str, username: str, password: str, authzid: str | None,
    channel_bindings: ChannelBindings | None, cb_type: str | None,
    server_offered_plus: bool, nonce: str | None,
) -> ClientMechanism:
    if mech in scram.MECHANISMS:
        available = channel_bindings.available if channel_bindings is not None else ()
        if scram.is_plus(mech):
            if channel_bindings is None:
                raise ClientError(f"{mech} needs channel binding data")
            if cb_type is None:
                cb_type = next((t for t in CB_PREFERENCE if t in available), None)
            data = channel_bindings.get(cb_type) if cb_type is not None else None
            if cb_type is None or data is None:
                raise ClientError(f"{mech}: no usable channel binding type")
            core = scram.ScramClient(mech, username, password, authzid=authzid,
                                     cb_type=cb_type, cb_data=data, nonce=nonce)
        else:
            flag = "y" if available and not server_offered_plus else "n"
            core = scram.ScramClient(mech, username, password, authzid=authzid, flag=flag,
                                     nonce=nonce)
        return ScramClientMechanism(core)
    if mech == plain.MECHANISM:
        return PlainClientMechanism(username, password, authzid)
    if mech == login.MECHANISM:
        return LoginClientMechanism(username, password)
    if mech == cram_md5.MECHANISM:
        return CramMD5ClientMechanism(username, password)
    raise ClientError(f"unsupported mechanism {mech}")
