"""The SASL server (RFC 4422) that mxd's SMTP and IMAP servers share.

``SASLServer`` implements ``api.ISASLServer``: it decides which mechanisms to offer on a
connection, runs exchanges over the pure mechanism cores (``scram``, ``cram_md5``,
``plain``, ``login``), looks secrets up through the callable it is given, applies the
``AuthLimiter`` and logs and counts outcomes, never secrets.

Choices (see also ``SASLSettings``):

* -PLUS variants are offered only when the connection can provide at least one channel
  binding type; the server then accepts every type that the connection provides
  (``ChannelBindings.available``: tls-exporter, tls-unique, tls-server-end-point), so
  that each client may use the type it implements.
* Nothing is offered without TLS, except on a loopback connection when
  ``allow_plaintext_on_loopback`` is set (SCRAM without TLS exposes the exchange to an
  offline dictionary attack, so it is not offered there either by default).
* An unknown user gets a SCRAM exchange that is shaped like any other: a salt derived
  from a server secret and the user name *as the directory normalises it* (stable
  across attempts and spellings: ``Nobody@`` and ``nobody@`` get one salt, as one
  account would; RFC 5802 §9), the usual iteration count, and a final
  ``e=invalid-proof``, exactly as for a wrong password.  PLAIN/LOGIN for an unknown
  user run one scrypt of the same cost against a random digest (nothing to build
  first, so the first attempt after start costs what every other does).
* Password hashing runs through ``run_blocking`` (the composition layer passes a
  bounded thread pool, ``mxd.sasl.hashpool``), never on the reactor thread; a full
  pool answers "temporarily unavailable" instead of queueing without bound.
* A successful PLAIN/LOGIN check may be remembered for ``verified_cache_ttl`` seconds
  (``mxd.sasl.verified``): the same password for the same stored hash then succeeds
  without scrypt; wrong passwords always pay the full cost.
* No proxy authorization: an authzid that differs from the authcid is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import unicodedata
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import attrs
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mxd.metrics import IMetrics, NoopMetrics
from mxd.sasl import cram_md5, login, plain, scram
from mxd.sasl.api import (
    ConnectionInfo,
    Continue,
    Failure,
    Outcome,
    Success,
    UnknownMechanism,
)
from mxd.sasl.credentials import (
    DEFAULT_SCRAM_ITERATIONS,
    SCRAM_HASHES,
    SCRYPT_N,
    SCRYPT_P,
    SCRYPT_R,
    AccountSecrets,
    CramMD5Secret,
    CredentialsUnavailable,
    PasswordHash,
    ScramSecret,
)
from mxd.sasl.ratelimit import AuthLimiter
from mxd.sasl.saslprep import saslprep
from mxd.sasl.verified import VerifiedCache

T = TypeVar("T")

ALL_MECHANISMS: tuple[str, ...] = (
    "SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-256", "SCRAM-SHA-1",
    "CRAM-MD5", "PLAIN", "LOGIN",
)

AUTH_FAILED = "authentication failed"
RATE_LIMITED = "too many failed attempts, try again later"
TEMPORARY = "authentication is temporarily unavailable"
MALFORMED = "malformed SASL message"

LookupSecrets = Callable[[str], "Deferred[AccountSecrets | None]"]
NormaliseUser = Callable[[str], str]
RunBlocking = Callable[[Callable[[], Any]], "Deferred[Any]"]


@attrs.frozen
class SASLSettings:
    mechanisms: tuple[str, ...] = ALL_MECHANISMS  # offered, in this order of preference
    allow_plaintext_on_loopback: bool = False
    # Secret for unknown users' fake SCRAM salts; None: random per process (fake salts
    # then change on restart).  Give 32 stable random bytes to keep them stable.
    fake_salt_key: bytes | None = attrs.field(default=None, repr=False)
    fake_scram_iterations: int = DEFAULT_SCRAM_ITERATIONS  # match the accounts' count
    fake_scrypt_n: int = SCRYPT_N  # match the accounts' scrypt cost
    # Seconds a successful PLAIN/LOGIN check is remembered (mxd.sasl.verified); 0: off.
    verified_cache_ttl: float = 0.0

    def __attrs_post_init__(self) -> None:
        unknown = [m for m in self.mechanisms if m not in ALL_MECHANISMS]
        if unknown:
            raise ValueError(f"unknown SASL mechanisms: {', '.join(unknown)}")


def _inline(f: Callable[[], T]) -> Deferred[T]:
    return maybeDeferred(f)


def default_login_key(name: str) -> str:
    """NFC and ASCII lower case: how the store compares account names (COLLATE NOCASE).
    The composition layer passes the directory's own function instead."""
    return "".join(c.lower() if c.isascii() else c for c in unicodedata.normalize("NFC", name))


class HashingBusy(Exception):
    """``run_blocking`` refused work: the hashing pool is full (a temporary failure)."""


def _stamp(secrets: AccountSecrets | None) -> bytes | None:
    """What identifies a stored password hash (a new password changes it); None for
    credentials checked elsewhere (an LDAP bind), which are never cached."""
    pw = getattr(secrets, "password", None)
    return pw.salt + pw.digest if isinstance(pw, PasswordHash) else None


def _for_log(user: str | None) -> str | None:
    """User names are client-chosen: bound their length in logs."""
    return user if user is None or len(user) <= 128 else user[:128] + "..."


_DUMMY_CRAM = CramMD5Secret.derive("mxd-dummy-cram-md5")


class SASLServer:
    """``api.ISASLServer``.

    ``lookup_secrets(name)`` fires with the account's ``AccountSecrets`` or None when there
    is no such account (or it may not log in); an errback makes the attempt fail
    temporarily, as does ``CredentialsUnavailable`` from ``verify_password``.  A success
    names the account (``AccountSecrets.account``), which may differ from the login name.
    ``run_blocking`` runs the scrypt check of PLAIN/LOGIN (default: inline; the
    composition layer passes a bounded pool, ``mxd.sasl.hashpool.HashPool``; it may
    errback with ``HashingBusy``).  ``dummy_verify(password)`` (blocking) is the check
    made for an unknown user so that it costs what a real one costs: by default one scrypt
    against a random digest; a directory that checks passwords by binding passes a bind
    that must fail (``LDAPDirectory.dummy_verify``).  ``normalise_user`` maps a login name
    to the directory's key for it (limiter counters and unknown users' fake SCRAM salts
    use that key).
    """

    log = Logger()

    def __init__(
        self, lookup_secrets: LookupSecrets, settings: SASLSettings, limiter: AuthLimiter,
        clock: IReactorTime, hostname: str, *, metrics: IMetrics | None = None,
        run_blocking: RunBlocking | None = None,
        dummy_verify: Callable[[str], bool] | None = None,
        normalise_user: NormaliseUser | None = None,
    ) -> None:
        self._lookup = lookup_secrets
        self._dummy_verify = dummy_verify
        self._key: NormaliseUser = normalise_user if normalise_user is not None else default_login_key
        self.settings = settings
        self._limiter = limiter
        self._clock = clock
        self._hostname = hostname
        self._metrics: IMetrics = metrics if metrics is not None else NoopMetrics()
        self._run_blocking: RunBlocking = run_blocking if run_blocking is not None else _inline
        self._fake_key = settings.fake_salt_key or os.urandom(32)
        # PLAIN/LOGIN for unknown users: one scrypt of the accounts' cost against a
        # random digest that no password matches.  Built here, costing nothing.
        self._verified = VerifiedCache(clock, settings.verified_cache_ttl)
        self._dummy_hash = PasswordHash(os.urandom(16), settings.fake_scrypt_n, SCRYPT_R,
                                        SCRYPT_P, os.urandom(32))

    # -- ISASLServer --------------------------------------------------------------------

    def plaintext_allowed(self, conn: ConnectionInfo) -> bool:
        """May credentials be used on this connection at all: over TLS, or on loopback
        with ``allow_plaintext_on_loopback``.  (IMAP: LOGINDISABLED when False.)"""
        return conn.tls or (self.settings.allow_plaintext_on_loopback and conn.loopback)

    def advertised(self, conn: ConnectionInfo) -> list[str]:
        plaintext_ok = self.plaintext_allowed(conn)
        can_bind = conn.channel_bindings is not None and bool(conn.channel_bindings.available)
        out = []
        for mech in self.settings.mechanisms:
            if scram.is_plus(mech):
                if can_bind:
                    out.append(mech)
            elif plaintext_ok:
                out.append(mech)
        return out

    def start(self, mechanism: str, conn: ConnectionInfo) -> ServerExchangeBase:
        offered = self.advertised(conn)
        name = mechanism.upper()
        if name not in offered:
            raise UnknownMechanism(mechanism)
        if name in scram.MECHANISMS:
            plus_advertised = any(scram.is_plus(m) for m in offered)
            return _ScramExchange(self, name, conn, plus_advertised)
        if name == cram_md5.MECHANISM:
            return _CramMD5Exchange(self, name, conn)
        if name == plain.MECHANISM:
            return _PlainExchange(self, name, conn)
        return _LoginExchange(self, name, conn)

    def check_password(self, username: str, password: str, conn: ConnectionInfo) -> Deferred[Outcome]:
        """IMAP LOGIN: refused without checking when ``plaintext_allowed(conn)`` is False."""
        if not self.plaintext_allowed(conn):
            self._count("PASSWORD", conn, "failure")
            return succeed(Failure("password login requires TLS"))
        return Deferred.fromCoroutine(self._check_plaintext("PASSWORD", username, password, conn))

    @property
    def limiter(self) -> AuthLimiter:
        """The failure limiter (shared with other processes by the composition layer)."""
        return self._limiter

    # -- shared pieces ------------------------------------------------------------------

    def _limited(self, mech: str, conn: ConnectionInfo, user: str | None) -> Failure | None:
        verdict = self._limiter.check(conn.remote_ip, None if user is None else self._key(user))
        if verdict.allowed:
            return None
        self.log.info(
            "SASL {mechanism} refused (rate limit by {scope}, retry in {retry_after:.0f}s) "
            "for {username!r} from {remote_ip} on {service}",
            mechanism=mech, scope=verdict.scope, retry_after=verdict.retry_after,
            username=_for_log(user), remote_ip=conn.remote_ip, service=conn.service)
        self._count(mech, conn, "rate_limited")
        return Failure(RATE_LIMITED, rate_limited=True)

    def _count(self, mech: str, conn: ConnectionInfo, result: str) -> None:
        self._metrics.inc("sasl_auth_total", mechanism=mech, result=result, service=conn.service)

    def _succeeded(self, mech: str, conn: ConnectionInfo, user: str,
                  additional: bytes | None = None, account: str | None = None) -> Success:
        self._limiter.success(conn.remote_ip, self._key(user))
        user = account or user  # the account's own name, whatever login name was used
        self._count(mech, conn, "success")
        self.log.info("SASL {mechanism} success for {username!r} from {remote_ip} on {service}",
                      mechanism=mech, username=_for_log(user), remote_ip=conn.remote_ip,
                      service=conn.service)
        return Success(authcid=user, authzid=None, additional=additional, mechanism=mech)

    def _failed(self, mech: str, conn: ConnectionInfo, user: str | None, why: str,
               reason: str = AUTH_FAILED, additional: bytes | None = None) -> Failure:
        self._limiter.failure(conn.remote_ip, None if user is None else self._key(user))
        self._count(mech, conn, "failure")
        self.log.info(
            "SASL {mechanism} failure for {username!r} from {remote_ip} on {service}: {why}",
            mechanism=mech, username=_for_log(user), remote_ip=conn.remote_ip,
            service=conn.service, why=why)
        return Failure(reason, additional=additional)

    def _temporary(self, mech: str, conn: ConnectionInfo, user: str | None) -> Failure:
        self._count(mech, conn, "temporary")
        self.log.failure("SASL {mechanism} secret lookup failed for {username!r}",
                         mechanism=mech, username=_for_log(user))
        return Failure(TEMPORARY, temporary=True)

    def _fake_scram_secret(self, hash_name: str, user: str) -> ScramSecret:
        """RFC 5802 §9 ("unknown-user"): a believable, stable salt for a missing user."""
        key = self._key(user)
        mac = hmac.new(self._fake_key, f"{hash_name}\0{key}".encode(), hashlib.sha256)
        salt = mac.digest()[:16]
        size = hashlib.new(SCRAM_HASHES[hash_name]).digest_size
        return ScramSecret(hash_name, salt, self.settings.fake_scram_iterations,
                           os.urandom(size), os.urandom(size))

    async def _find(self, user: str) -> AccountSecrets | None:
        return await self._lookup(user)

    async def _check_plaintext(
        self, mech: str, username: str, password: str, conn: ConnectionInfo,
        authzid: str | None = None,
    ) -> Outcome:
        try:
            user = saslprep(username)
            authz = saslprep(authzid) if authzid else None
        except ValueError:
            return self._failed(mech, conn, None, "user name fails SASLprep", MALFORMED)
        if not user:
            return self._failed(mech, conn, None, "empty user name", MALFORMED)
        limited = self._limited(mech, conn, user)
        if limited is not None:
            return limited
        if authz is not None and authz != user:
            return self._failed(mech, conn, user, "authzid differs (no proxy authorization)",
                               "authorization identity not permitted")
        try:
            secrets = await self._find(user)
        except Exception:  # noqa: BLE001 - any store error: fail temporarily, logged
            return self._temporary(mech, conn, user)
        key = self._key(user)
        stamp = _stamp(secrets)
        if (secrets is not None and stamp is not None
                and self._verified.matches(key, stamp, password)):
            return self._succeeded(mech, conn, user, account=secrets.account)
        verify: Callable[[str], bool]
        if secrets is not None:
            verify = secrets.verify_password
        else:
            verify = self._dummy_verify or self._dummy_hash.verify
        try:
            ok = await self._run_blocking(lambda: verify(password))
        except CredentialsUnavailable:
            return self._temporary(mech, conn, user)
        except HashingBusy:
            self._count(mech, conn, "temporary")
            self.log.warn("SASL {mechanism} for {username!r} from {remote_ip}: the password "
                          "hashing pool is full", mechanism=mech, username=_for_log(user),
                          remote_ip=conn.remote_ip)
            return Failure(TEMPORARY, temporary=True)
        if secrets is None:
            return self._failed(mech, conn, user, "no such user")
        if not ok:
            return self._failed(mech, conn, user, "wrong password")
        if stamp is not None:
            self._verified.remember(key, stamp, password)
        return self._succeeded(mech, conn, user, account=secrets.account)


# --- exchanges -------------------------------------------------------------------------


class ServerExchangeBase:
    """One exchange; ``step`` fires with Continue, Success or Failure, never errbacks."""

    def __init__(self, server: SASLServer, mechanism: str, conn: ConnectionInfo) -> None:
        self.mechanism = mechanism
        self._server = server
        self._conn = conn
        self._done = False
        self._busy = False

    def step(self, data: bytes | None) -> Deferred[Outcome]:
        if self._done:
            return Deferred.fromCoroutine(self._after_end())
        if self._busy:
            return Deferred.fromCoroutine(self._after_end())
        self._busy = True
        return Deferred.fromCoroutine(self._guarded(data))

    async def _after_end(self) -> Outcome:
        return Failure("SASL exchange out of order")

    async def _guarded(self, data: bytes | None) -> Outcome:
        try:
            outcome = await self._step(data)
        except Exception:  # noqa: BLE001 - a bug must not kill the connection; logged
            self._server.log.failure("SASL {mechanism} exchange crashed", mechanism=self.mechanism)
            outcome = Failure(TEMPORARY, temporary=True)
        self._busy = False
        if not isinstance(outcome, Continue):
            self._done = True
        return outcome

    def _step(self, data: bytes | None) -> Coroutine[Any, Any, Outcome]:
        raise NotImplementedError


class _ScramExchange(ServerExchangeBase):
    def __init__(self, server: SASLServer, mechanism: str, conn: ConnectionInfo,
                 plus_advertised: bool) -> None:
        super().__init__(server, mechanism, conn)
        self._core = scram.ScramServer(
            mechanism, conn.channel_bindings, plus_advertised=plus_advertised)
        self._state = "first"
        self._user: str | None = None
        self._known = False
        self._account: str | None = None

    async def _step(self, data: bytes | None) -> Outcome:
        s, conn, mech = self._server, self._conn, self.mechanism
        if self._state == "first":
            if not data:  # RFC 4422 §5: no initial response: send an empty challenge
                self._state = "first-again"
                return Continue(b"")
            return await self._first(data)
        if self._state == "first-again":
            return await self._first(data or b"")
        if self._state == "final":
            try:
                verifier = self._core.client_final(data or b"")
            except scram.ScramError as e:
                why = f"{e.code} ({e.detail})" + ("" if self._known else ", no such user")
                return s._failed(mech, conn, self._user, why, additional=e.server_final)
            if not self._known or self._user is None:
                # Unreachable with random stored keys; never let a fake secret succeed.
                return s._failed(mech, conn, self._user, "no such user",
                                additional=b"e=invalid-proof")
            return s._succeeded(mech, conn, self._user, additional=verifier,
                                account=self._account)
        return Failure("SASL exchange out of order")

    async def _first(self, data: bytes) -> Outcome:
        s, conn, mech = self._server, self._conn, self.mechanism
        try:
            self._core.client_first(data)
        except scram.ScramError as e:
            if e.code == scram.ScramErrorCode.CHANNEL_BINDING_NOT_SUPPORTED and not scram.is_plus(mech):
                s.log.warn(
                    "SASL {mechanism}: client from {remote_ip} sent gs2 p= under a non-PLUS "
                    "mechanism name (a known Cyrus SASL client bug); refused",
                    mechanism=mech, remote_ip=conn.remote_ip)
            return s._failed(mech, conn, None, f"{e.code} ({e.detail})", additional=e.server_final)
        self._user = user = self._core.username
        limited = s._limited(mech, conn, user)
        if limited is not None:
            return limited
        try:
            secrets = await s._find(user)
        except Exception:  # noqa: BLE001 - any store error: fail temporarily, logged
            return s._temporary(mech, conn, user)
        secret = secrets.scram.get(self._core.hash_name) if secrets is not None else None
        self._known = secret is not None
        if secrets is not None:
            self._account = secrets.account
            if secret is None:
                s.log.info("SASL {mechanism}: account {username!r} has no {hash} secret "
                           "(PLAIN over TLS still works)", mechanism=mech,
                           username=_for_log(user), hash=self._core.hash_name)
        if secret is None:
            secret = s._fake_scram_secret(self._core.hash_name, user)
        self._state = "final"
        return Continue(self._core.server_first(secret))


class _CramMD5Exchange(ServerExchangeBase):
    def __init__(self, server: SASLServer, mechanism: str, conn: ConnectionInfo) -> None:
        super().__init__(server, mechanism, conn)
        self._challenge: bytes | None = None

    async def _step(self, data: bytes | None) -> Outcome:
        s, conn, mech = self._server, self._conn, self.mechanism
        if self._challenge is None:
            if data:  # RFC 2195: the server speaks first; no initial response
                return s._failed(mech, conn, None, "initial response", MALFORMED)
            self._challenge = cram_md5.make_challenge(s._hostname, s._clock.seconds())
            return Continue(self._challenge)
        try:
            resp = cram_md5.parse_response(data or b"")
            user = saslprep(resp.username)
        except (cram_md5.CramMD5Error, ValueError):
            return s._failed(mech, conn, None, "malformed response", MALFORMED)
        limited = s._limited(mech, conn, user)
        if limited is not None:
            return limited
        try:
            secrets = await s._find(user)
        except Exception:  # noqa: BLE001 - any store error: fail temporarily, logged
            return s._temporary(mech, conn, user)
        stored = secrets.cram_md5 if secrets is not None else None
        # The same work whether or not the user exists.
        ok = cram_md5.verify(stored or _DUMMY_CRAM, self._challenge, resp.digest)
        if stored is None:
            return s._failed(mech, conn, user, "no such user or no CRAM-MD5 secret")
        if not ok:
            return s._failed(mech, conn, user, "wrong digest")
        return s._succeeded(mech, conn, user, account=secrets.account if secrets else None)


class _PlainExchange(ServerExchangeBase):
    def __init__(self, server: SASLServer, mechanism: str, conn: ConnectionInfo) -> None:
        super().__init__(server, mechanism, conn)
        self._asked = False

    async def _step(self, data: bytes | None) -> Outcome:
        s, conn, mech = self._server, self._conn, self.mechanism
        if data is None and not self._asked:  # RFC 4616 §2: an empty challenge first
            self._asked = True
            return Continue(b"")
        try:
            msg = plain.parse_plain(data or b"")
        except plain.PlainError as e:
            return s._failed(mech, conn, None, str(e), MALFORMED)
        return await s._check_plaintext(mech, msg.authcid, msg.password, conn, msg.authzid)


class _LoginExchange(ServerExchangeBase):
    def __init__(self, server: SASLServer, mechanism: str, conn: ConnectionInfo) -> None:
        super().__init__(server, mechanism, conn)
        self._core = login.LoginServer()

    async def _step(self, data: bytes | None) -> Outcome:
        s, conn, mech = self._server, self._conn, self.mechanism
        try:
            out = self._core.step(data)
        except login.LoginError as e:
            return s._failed(mech, conn, None, str(e), MALFORMED)
        if isinstance(out, bytes):
            return Continue(out)
        return await s._check_plaintext(mech, out.username, out.password, conn)
