"""Authentication failure limiting, per remote IP and per account, with back-off.

Each key (a remote address, or an account name) has a failure score that halves every
``half_life`` seconds.  While the score is within the free allowance nothing happens;
past it, each further failure blocks the key for a delay that doubles per failure, up
to a cap.  So guessing gets slow fast, and a forgotten burst decays away by itself.

* The per-IP limit is the strict one; IPv6 addresses are grouped by ``ipv6_prefix``
  (one /64 is usually one client).  A success from an address clears that address.
* The per-account limit is softer (more free failures, a short cap), so that others'
  guessing at an account slows them without locking its owner out for long; a success
  does not clear it (the guessers' addresses keep their own, stricter, limits).

A limited attempt is answered without checking the password (the caller's job, see
``mxd.sasl.server``).  Pure apart from reading the clock passed in.
"""

from __future__ import annotations

import ipaddress
from typing import Protocol

import attrs


class IClock(Protocol):
    """The part of ``twisted.internet.interfaces.IReactorTime`` used here (the reactor,
    or ``task.Clock`` in tests)."""

    def seconds(self) -> float: ...


class IMetrics(Protocol):
    """The tiny metrics interface the SASL layer counts through."""

    def inc(self, name: str, **labels: str) -> None: ...


class NoMetrics:
    """The default: counts nothing."""

    def inc(self, name: str, **labels: str) -> None:
        return None


@attrs.frozen
class AuthLimiterSettings:
    ip_free_failures: int = 5
    ip_base_delay: float = 2.0  # seconds blocked after the first failure past the free ones
    ip_max_delay: float = 600.0
    account_free_failures: int = 10
    account_base_delay: float = 1.0
    account_max_delay: float = 30.0
    half_life: float = 900.0  # seconds for a failure score to halve
    ipv6_prefix: int = 64
    max_entries: int = 100_000  # per table; the oldest entries go first beyond it


@attrs.frozen
class Verdict:
    allowed: bool
    retry_after: float = 0.0  # seconds until the attempt would be allowed
    scope: str | None = None  # "ip" or "account": which limit refused it


@attrs.define
class _Entry:
    score: float
    updated: float
    blocked_until: float = 0.0


@attrs.frozen
class _Policy:
    free: int
    base: float
    cap: float


class _Table:
    def __init__(self, policy: _Policy, half_life: float, max_entries: int) -> None:
        self._policy = policy
        self._half_life = half_life
        self._max = max_entries
        self._entries: dict[str, _Entry] = {}

    def _score(self, e: _Entry, now: float) -> float:
        decay: float = 0.5 ** (max(0.0, now - e.updated) / self._half_life)
        return e.score * decay

    def retry_after(self, key: str, now: float) -> float:
        e = self._entries.get(key)
        return 0.0 if e is None else max(0.0, e.blocked_until - now)

    def failure(self, key: str, now: float) -> None:
        e = self._entries.pop(key, None)  # re-inserted last: the dict stays in age order
        score = (self._score(e, now) if e is not None else 0.0) + 1.0
        entry = _Entry(score, now, e.blocked_until if e is not None else 0.0)
        over = score - self._policy.free
        if over > 0:
            delay = min(self._policy.cap, self._policy.base * 2.0 ** (over - 1.0))
            entry.blocked_until = max(entry.blocked_until, now + delay)
        self._entries[key] = entry
        if len(self._entries) > self._max:
            self._prune(now)

    def clear(self, key: str) -> None:
        self._entries.pop(key, None)

    def _prune(self, now: float) -> None:
        for key in [k for k, e in self._entries.items()
                    if self._score(e, now) < 0.5 and e.blocked_until <= now]:
            del self._entries[key]
        while len(self._entries) > self._max:
            del self._entries[next(iter(self._entries))]

    def __len__(self) -> int:
        return len(self._entries)


def ip_key(remote_ip: str, ipv6_prefix: int = 64) -> str:
    """The limiter key of an address: IPv4 as is, IPv6 as its /prefix network."""
    try:
        addr = ipaddress.ip_address(remote_ip.split("%", 1)[0])
    except ValueError:
        return remote_ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, ipv6_prefix), strict=False))
    return str(addr)


class AuthLimiter:
    """Tracks failures; ``check`` before verifying a credential, then report the outcome."""

    def __init__(
        self, clock: IClock, settings: AuthLimiterSettings | None = None,
        metrics: IMetrics | None = None,
    ) -> None:
        self._clock = clock
        self.settings = s = settings if settings is not None else AuthLimiterSettings()
        self._metrics: IMetrics = metrics if metrics is not None else NoMetrics()
        self._ips = _Table(_Policy(s.ip_free_failures, s.ip_base_delay, s.ip_max_delay),
                           s.half_life, s.max_entries)
        self._accounts = _Table(
            _Policy(s.account_free_failures, s.account_base_delay, s.account_max_delay),
            s.half_life, s.max_entries)

    def _ip(self, remote_ip: str) -> str:
        return ip_key(remote_ip, self.settings.ipv6_prefix)

    @staticmethod
    def _account(account: str) -> str:
        return account.casefold()

    def check(self, remote_ip: str, account: str | None = None) -> Verdict:
        """May an attempt from ``remote_ip`` (for ``account``, when known) go ahead now?"""
        now = self._clock.seconds()
        wait = self._ips.retry_after(self._ip(remote_ip), now)
        if wait > 0:
            self._metrics.inc("sasl_rate_limited_total", scope="ip")
            return Verdict(False, wait, "ip")
        if account is not None:
            wait = self._accounts.retry_after(self._account(account), now)
            if wait > 0:
                self._metrics.inc("sasl_rate_limited_total", scope="account")
                return Verdict(False, wait, "account")
        return Verdict(True)

    def failure(self, remote_ip: str, account: str | None = None) -> None:
        now = self._clock.seconds()
        self._ips.failure(self._ip(remote_ip), now)
        if account is not None:
            self._accounts.failure(self._account(account), now)

    def success(self, remote_ip: str, account: str | None = None) -> None:
        self._ips.clear(self._ip(remote_ip))

    @property
    def tracked(self) -> tuple[int, int]:
        """(addresses, accounts) currently remembered; for tests and the admin page."""
        return len(self._ips), len(self._accounts)
