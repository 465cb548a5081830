"""A blocking LDAP client over ldap3: failover, TLS, a connection pool (RFC 4511, RFC 4513).

Everything here blocks and runs only on the LDAP directory's worker threads
(``mxd.directory.ldap``), never on the reactor thread.  ``LDAPClient`` keeps up to
``pool_size`` service-bound connections and as many connections for password checks,
each usable by one thread at a time.

* Servers are tried in the order given; one that fails is skipped for ``retry_down``
  seconds unless every server is down (failover, then fail-back).
* TLS: ``ldaps://`` (TLS from the first octet) or StartTLS (RFC 4513 §3) before any bind;
  the certificate chain and the host name (RFC 6125) are always verified.  A plaintext
  connection is made only when the settings allow it (config checks it is loopback).
* A password is checked with a simple bind as the entry's DN (RFC 4513 §5.1.3) on a
  connection kept for that purpose; an empty password is refused before any bind,
  because RFC 4513 §5.1.2 makes a DN with an empty password an *unauthenticated* bind
  that servers answer with success.

Errors: ``LDAPUnavailable`` (no server answered, TLS failed, timeout, the service bind
was refused — all temporary for the caller) and ``AmbiguousEntry`` (a filter matched
several entries; permanent).
"""

from __future__ import annotations

import contextlib
import queue
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import attrs
from twisted.logger import Logger

from mxd.errors import MxdError

T = TypeVar("T")
log = Logger(namespace="mxd.directory.ldap")

# RFC 4511 §4.1.9 result codes that matter here.
SUCCESS = 0
SIZE_LIMIT_EXCEEDED = 4
NO_SUCH_OBJECT = 32
INVALID_CREDENTIALS = 49
PAGED_RESULTS_OID = "1.2.840.113556.1.4.319"  # RFC 2696 simple paged results control
PAGE_SIZE = 200


class LDAPDirectoryError(MxdError):
    """Base of the LDAP directory's errors."""


class LDAPUnavailable(LDAPDirectoryError):
    """No LDAP server could answer (network, TLS, timeout, refused service bind)."""


class AmbiguousEntry(LDAPDirectoryError):
    """A filter that must match one entry matched several."""


@attrs.frozen
class LDAPServerSpec:
    uri: str
    host: str
    port: int
    use_ssl: bool

    @classmethod
    def parse(cls, uri: str) -> LDAPServerSpec:
        u = urlsplit(uri)
        if u.scheme not in ("ldap", "ldaps") or not u.hostname:
            raise LDAPDirectoryError(f"not an LDAP URI: {uri!r}")
        use_ssl = u.scheme == "ldaps"
        return cls(uri, u.hostname, u.port or (636 if use_ssl else 389), use_ssl)


@attrs.frozen
class ClientSettings:
    uris: tuple[str, ...]
    starttls: bool = False
    ca_file: Path | None = None
    allow_plaintext: bool = False  # only ever set for loopback URIs (config checks it)
    bind_dn: str = ""
    bind_password: str = attrs.field(default="", repr=False)
    pool_size: int = 4
    timeout: float = 5.0
    retry_down: float = 30.0  # seconds a failed server is skipped


@attrs.frozen
class RawEntry:
    """One search result: its DN and attribute values as strings (lists, maybe empty)."""

    dn: str
    attributes: dict[str, list[str]] = attrs.field(factory=dict, hash=False)


class LDAPClient:
    """Blocking operations; call only from worker threads (at most ``pool_size`` at once)."""

    def __init__(self, settings: ClientSettings, *,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._servers = [LDAPServerSpec.parse(u) for u in settings.uris]
        self._down_until = [0.0] * len(self._servers)
        self._now = monotonic
        self._lock = threading.Lock()
        self._search_pool: queue.LifoQueue[Any] = queue.LifoQueue()
        self._bind_pool: queue.LifoQueue[Any] = queue.LifoQueue()
        for spec in self._servers:
            self._make_server(spec)  # refuse plaintext now, not at the first login

    # -- connections ------------------------------------------------------------------

    def _make_server(self, spec: LDAPServerSpec) -> Any:
        import ldap3

        tls = None
        if spec.use_ssl or self.settings.starttls:
            tls = ldap3.Tls(validate=ssl.CERT_REQUIRED,
                            ca_certs_file=str(self.settings.ca_file) if self.settings.ca_file else None,
                            version=ssl.PROTOCOL_TLS_CLIENT)
        elif not self.settings.allow_plaintext:
            raise LDAPDirectoryError(f"{spec.uri}: plaintext LDAP is not allowed")
        return ldap3.Server(spec.host, port=spec.port, use_ssl=spec.use_ssl, tls=tls,
                            connect_timeout=self.settings.timeout, get_info=ldap3.NONE)

    def _order(self) -> list[int]:
        now = self._now()
        with self._lock:
            up = [i for i in range(len(self._servers)) if self._down_until[i] <= now]
            down = [i for i in range(len(self._servers)) if self._down_until[i] > now]
        return up + down

    def _mark(self, i: int, ok: bool) -> None:
        with self._lock:
            self._down_until[i] = 0.0 if ok else self._now() + self.settings.retry_down

    def _open(self, user: str | None, password: str | None) -> Any:
        """A connected (TLS-secured) connection, bound as ``user`` when given (service
        bind) or not bound; LDAPUnavailable when no server works."""
        import ldap3
        from ldap3.core.exceptions import LDAPException

        problems = []
        for i in self._order():
            spec = self._servers[i]
            # A new ldap3.Server each time: one that failed marks its address invalid
            # for minutes, which would outlast the directory's own recovery.
            conn = ldap3.Connection(
                self._make_server(spec), user=user, password=password,
                receive_timeout=max(1, round(self.settings.timeout)), read_only=True,
                raise_exceptions=False, auto_referrals=False)
            try:
                conn.open()
                if self.settings.starttls and not spec.use_ssl and not conn.start_tls():
                    raise LDAPUnavailable(f"StartTLS refused: {conn.result.get('description')}")
                if user is not None and not conn.bind():
                    # The service account's bind is refused: a configuration problem or a
                    # directory in trouble; either way nobody can be looked up for now.
                    raise LDAPUnavailable(
                        f"service bind as {user} refused: {conn.result.get('description')}")
            except (LDAPException, LDAPUnavailable, OSError, ssl.SSLError) as e:
                _close(conn)
                self._mark(i, False)
                problems.append(f"{spec.uri}: {e}")
                log.warn("LDAP server {uri} failed: {error}", uri=spec.uri, error=str(e))
                continue
            self._mark(i, True)
            conn.mxd_server_index = i
            return conn
        raise LDAPUnavailable("no LDAP server available: " + "; ".join(problems))

    def _with(self, pool: queue.LifoQueue[Any], opener: Callable[[], Any],
              op: Callable[[Any], T]) -> T:
        """Run ``op`` on a pooled connection; on a communication error retry once on a
        fresh connection (the pooled one may have been closed by an idle timeout or a
        restarted server), then give up with LDAPUnavailable."""
        from ldap3.core.exceptions import LDAPException

        for attempt in (1, 2):
            conn = None
            if attempt == 1:
                try:
                    conn = pool.get_nowait()
                except queue.Empty:
                    pass
            if conn is None:
                conn = opener()
            try:
                result = op(conn)
            except (LDAPException, OSError, ssl.SSLError) as e:
                _close(conn)
                self._mark(getattr(conn, "mxd_server_index", 0), False)
                if attempt == 2:
                    raise LDAPUnavailable(f"LDAP operation failed: {e}") from None
                # The other idle connections were most likely cut at the same moment
                # (a restarted or failed-over server): drop them, retry on a new one.
                _drain(pool)
                continue
            except BaseException:
                _close(conn)
                raise
            if pool.qsize() < self.settings.pool_size:
                pool.put(conn)
            else:
                _close(conn)
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _service(self) -> Any:
        s = self.settings
        return self._open(s.bind_dn or None, s.bind_password if s.bind_dn else None)

    # -- operations -----------------------------------------------------------------------

    def search(self, base: str, search_filter: str, attributes: Sequence[str],
               limit: int = 0) -> tuple[list[RawEntry], bool]:
        """Entries under ``base`` (subtree) matching ``search_filter`` (already escaped),
        and whether the answer was cut short (by ``limit``, or for a listing with
        ``limit`` 0, by the server's own size limit)."""
        import ldap3

        def op(conn: Any) -> tuple[list[RawEntry], bool]:
            out: list[RawEntry] = []
            truncated = False
            cookie: bytes | None = None
            while True:
                # A listing (no limit) asks for pages (RFC 2696), so that the server's
                # per-search size limit does not cut it short where paging is allowed.
                ok = conn.search(base, search_filter, search_scope=ldap3.SUBTREE,
                                 attributes=list(attributes), size_limit=limit,
                                 time_limit=max(1, int(self.settings.timeout)),
                                 paged_size=None if limit else PAGE_SIZE, paged_cookie=cookie)
                code = conn.result.get("result")
                if code not in (SUCCESS, SIZE_LIMIT_EXCEEDED, NO_SUCH_OBJECT) and not ok:
                    if code is None or code in (51, 52, 80, 81):  # busy, unavailable, other, down
                        from ldap3.core.exceptions import LDAPCommunicationError

                        raise LDAPCommunicationError(conn.result.get("description") or "no answer")
                    raise LDAPUnavailable(f"search failed: {conn.result.get('description')} "
                                          f"({code}) {conn.result.get('message', '')}")
                for r in conn.response or ():
                    if r.get("type") != "searchResEntry":
                        continue
                    attrs_: dict[str, list[str]] = {}
                    for k, v in (r.get("raw_attributes") or {}).items():
                        attrs_[k.lower()] = [_text(x) for x in v]
                    out.append(RawEntry(r["dn"], attrs_))
                truncated = truncated or code == SIZE_LIMIT_EXCEEDED
                if limit or truncated:
                    return out, truncated
                paged = (conn.result.get("controls") or {}).get(PAGED_RESULTS_OID) or {}
                cookie = (paged.get("value") or {}).get("cookie") or None
                if not cookie:
                    return out, truncated

        return self._with(self._search_pool, self._service, op)

    def search_one(self, base: str, search_filter: str,
                   attributes: Sequence[str]) -> RawEntry | None:
        """The one entry matching, None for none; AmbiguousEntry for several."""
        entries, truncated = self.search(base, search_filter, attributes, limit=2)
        if len(entries) > 1 or truncated:
            raise AmbiguousEntry(f"{len(entries)}{'+' if truncated else ''} entries match "
                                 f"{search_filter}")
        return entries[0] if entries else None

    def check_password(self, dn: str, password: str) -> bool:
        """True when a simple bind as ``dn`` with ``password`` succeeds (RFC 4513 §5.1.3);
        False for invalid credentials or another refusal (logged);
        LDAPUnavailable when no server could be asked."""
        if not password or not dn:
            return False  # RFC 4513 §5.1.2: never an unauthenticated bind

        import ldap3

        def op(conn: Any) -> bool:
            conn.authentication = ldap3.SIMPLE
            conn.user, conn.password = dn, password
            ok = bool(conn.bind())
            code = conn.result.get("result")
            if ok:
                return True
            if code is None or code in (51, 52, 80, 81):
                from ldap3.core.exceptions import LDAPCommunicationError

                raise LDAPCommunicationError(conn.result.get("description") or "no answer")
            if code != INVALID_CREDENTIALS:
                # e.g. a password policy refusing the bind (locked, expired): a refusal.
                log.info("LDAP bind as {dn} refused: {description} ({code})", dn=dn,
                         description=conn.result.get("description"), code=code)
            return False

        return self._with(self._bind_pool, lambda: self._open(None, None), op)

    def close(self) -> None:
        for pool in (self._search_pool, self._bind_pool):
            _drain(pool)


def _drain(pool: queue.LifoQueue[Any]) -> None:
    while True:
        try:
            _close(pool.get_nowait())
        except queue.Empty:
            return


def _close(conn: Any) -> None:
    with contextlib.suppress(Exception):  # closing a broken connection; nothing to do
        conn.unbind()


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


__all__ = [
    "AmbiguousEntry",
    "ClientSettings",
    "LDAPClient",
    "LDAPDirectoryError",
    "LDAPServerSpec",
    "LDAPUnavailable",
    "RawEntry",
]
