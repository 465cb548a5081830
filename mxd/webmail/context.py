"""What webmail pages may use: the store, the account directory, the SASL password
check, the queue, the clock and the sessions; built by the composition layer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThread

from mxd.admin import auth

COOKIE = b"mxd_webmail"  # not the admin's cookie: both may live on one host name


class WebmailContext:
    def __init__(self, *, clock: IReactorTime, store: Any, directory: Any, sasl: Any,
                 queue: Any = None, hosts: frozenset[str] = frozenset(),
                 loopback: bool = True, session_lifetime: float = 12 * 3600.0,
                 session_idle: float = 3600.0, max_sessions: int = 1024,
                 page_size: int = 50, hostname: str = "localhost",
                 run_blocking: Callable[[Callable[[], Any]], Deferred[Any]] | None = None,
                 work_slice: float = 0.004) -> None:
        self.clock = clock
        self.store = store  # IMailStore and IAccountStore
        self.directory = directory  # local or LDAP directory (set_password)
        self.sasl = sasl  # the SASL server: check_password with the IMAP limiter
        self.queue = queue  # the outbound queue (TLS results per domain), or None
        self.hosts = frozenset(h.lower().rstrip(".") for h in hosts)
        self.loopback = loopback
        self.page_size = page_size
        self.hostname = hostname
        self.work_slice = work_slice  # seconds of reactor time before a long loop yields
        self.sessions = auth.Sessions(clock, lifetime=session_lifetime, idle=session_idle,
                                      max_sessions=max_sessions)
        self.run_blocking = run_blocking if run_blocking is not None else deferToThread
        # Sending (the compose pages): an mxd.webmail.submit.WebSubmitter, or None.
        self.submitter: Any = None
        self.max_request_body = 32 * 1024 * 1024  # octets of one request (uploads)

    def session(self, request: Any) -> auth.Session | None:
        return self.sessions.get(
            (request.getCookie(COOKIE) or b"").decode("ascii", "replace"))
