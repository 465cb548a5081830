"""The LOGIN SASL mechanism (draft-murchison-sasl-login-00).

Obsolete but still sent by many clients: the server asks ``Username:`` then
``Password:``; the client answers each with the bare value.  A client may send the
user name as an initial response.  Pure state machines, no I/O.
"""

from __future__ import annotations

import attrs

from mxd.sasl.api import SASLError

MECHANISM = "LOGIN"
USERNAME_CHALLENGE = b"Username:"
PASSWORD_CHALLENGE = b"Password:"
MAX_FIELD = 1024


class LoginError(SASLError):
    """A LOGIN exchange is malformed."""


@attrs.frozen
class LoginCredentials:
    username: str
    password: str = attrs.field(repr=False)


def _decode(data: bytes, what: str) -> str:
    if len(data) > MAX_FIELD or b"\0" in data:
        raise LoginError(f"bad {what}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LoginError(f"{what} is not UTF-8") from e


class LoginServer:
    """``step`` returns the next challenge, or LoginCredentials once both are in."""

    def __init__(self) -> None:
        self._username: str | None = None
        self._started = False

    def step(self, data: bytes | None) -> bytes | LoginCredentials:
        if not self._started:
            self._started = True
            if not data:  # no initial response (None) or the empty one ("=")
                return USERNAME_CHALLENGE
        if self._username is None:
            if data is None or not data:
                raise LoginError("empty username")
            self._username = _decode(data, "username")
            return PASSWORD_CHALLENGE
        if data is None:
            raise LoginError("missing password")
        return LoginCredentials(self._username, _decode(data, "password"))


class LoginClient:
    """Answers ``Username:`` then ``Password:`` (by position, as deployed servers vary)."""

    def __init__(self, username: str, password: str) -> None:
        self._answers = [username.encode("utf-8"), password.encode("utf-8")]

    def respond(self, challenge: bytes) -> bytes:
        if not self._answers:
            raise LoginError("unexpected extra challenge")
        return self._answers.pop(0)
