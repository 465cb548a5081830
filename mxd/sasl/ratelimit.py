"""Authentication failure limiting: per client IP, per (account, IP) and per account.

Three failure tables, each key with a score that halves every ``half_life`` seconds
(a fail2ban-style sliding window without a list of timestamps).  While a key's score is
within its free allowance nothing happens; past it, each further failure blocks the key
for a delay that doubles per failure, up to a cap.  A blocked attempt is refused at once,
without checking the password (the caller's job, ``mxd.sasl.server``): nothing waits on
the reactor or keeps a connection open for the attacker's benefit.

* **IP** (IPv6 grouped by ``ipv6_prefix``, one /64 is usually one client): every failure
  from the address counts, whatever account it named, and a success does **not** clear
  it.  So mixing correct logins to one's own account with guesses at others (password
  spraying) checks no more passwords than plain guessing does.
* **network** (IPv4 /24, IPv6 /48): the same for a whole network, with a larger free
  allowance, so that a guesser with many addresses of one network (mox counts /26 and
  /21 the same way) gets no more than a few addresses' worth of guesses.
* **(account, IP)**: the failures of one address against one account.  A success clears
  this one only.  It is the only table that still applies to a *trusted* pair (below),
  so a shared address that knows a password cannot guess it in a loop either.
* **account**: failures against one name from any address (unknown names too, so
  refusals do not reveal which accounts exist).  It stops distributed guessing, but
  only for addresses that have no recent successful login to that account: an address
  that logged in successfully within ``trusted_for`` seconds (a *trusted pair*) passes
  the account and IP limits, so the owner keeps working while others are refused.

The design takes Dovecot's auth penalty (per IP, delays doubling per failure) and mox's
limiter (an address and its enclosing networks counted together), but where both reset
the address's count on a success — the hole that password spraying uses — a success here
clears only what it proves, the (account, IP) pair; the per-account table and trusted
pairs are added against lock-out attacks.  Pure apart from
reading the clock passed in; memory is bounded by ``max_entries`` per table.

Several processes (``[server] workers = N``) keep one table each and tell each other
every outcome: ``on_outcome`` is called after each local ``failure``/``success``, and
``apply`` records one that another process saw (mxd.limitsync carries them), so a
guesser spreading connections over the workers gains no attempts.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import attrs
from twisted.internet.interfaces import IReactorTime

from mxd.clientnet import network_key
from mxd.metrics import IMetrics, NoopMetrics


@attrs.frozen
class AuthLimiterSettings:
    ip_free_failures: int = 5
    ip_base_delay: float = 2.0  # seconds blocked after the first failure past the free ones
    ip_max_delay: float = 600.0
    network_free_failures: int = 20  # one IPv4 /24 or IPv6 /48
    account_ip_free_failures: int = 5  # one address against one account
    account_free_failures: int = 10
    account_base_delay: float = 1.0
    account_max_delay: float = 300.0
    half_life: float = 900.0  # seconds for a failure score to halve
    trusted_for: float = 30 * 86400.0  # a success makes its (account, IP) pair trusted
    ipv6_prefix: int = 64
    max_entries: int = 100_000  # per table; the oldest entries go first beyond it


@attrs.frozen
class Verdict:
    allowed: bool
    retry_after: float = 0.0  # seconds until the attempt would be allowed
    scope: str | None = None  # "ip", "network", "account_ip", "account": which refused it


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
        self._entries: dict[object, _Entry] = {}

    def _score(self, e: _Entry, now: float) -> float:
        decay: float = 0.5 ** (max(0.0, now - e.updated) / self._half_life)
        return e.score * decay

    def retry_after(self, key: object, now: float) -> float:
        e = self._entries.get(key)
        return 0.0 if e is None else max(0.0, e.blocked_until - now)

    def failure(self, key: object, now: float) -> None:
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

    def clear(self, key: object) -> None:
        self._entries.pop(key, None)

    def _prune(self, now: float) -> None:
        for key in [k for k, e in self._entries.items()
                    if self._score(e, now) < 0.5 and e.blocked_until <= now]:
            del self._entries[key]
        while len(self._entries) > self._max:
            del self._entries[next(iter(self._entries))]

    def __len__(self) -> int:
        return len(self._entries)


class _Trust:
    """(account, IP) pairs with a recent successful login, bounded, oldest first out."""

    def __init__(self, ttl: float, max_entries: int) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._at: dict[tuple[str, str], float] = {}

    def add(self, key: tuple[str, str], now: float) -> None:
        self._at.pop(key, None)
        self._at[key] = now
        while len(self._at) > self._max:
            del self._at[next(iter(self._at))]

    def __contains__(self, item: tuple[tuple[str, str], float]) -> bool:
        key, now = item
        at = self._at.get(key)
        return at is not None and now - at < self._ttl

    def __len__(self) -> int:
        return len(self._at)


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
    """Tracks failures; ``check`` before verifying a credential, then report the outcome
    with ``failure`` or ``success``.

    ``account`` is the login name as the directory normalises it (the caller's job, so
    that every spelling of one account shares its counters)."""

    def __init__(
        self, clock: IReactorTime, settings: AuthLimiterSettings | None = None,
        metrics: IMetrics | None = None,
    ) -> None:
        self._clock = clock
        self.settings = s = settings if settings is not None else AuthLimiterSettings()
        self._metrics: IMetrics = metrics if metrics is not None else NoopMetrics()
        ip_policy = _Policy(s.ip_free_failures, s.ip_base_delay, s.ip_max_delay)
        self._ips = _Table(ip_policy, s.half_life, s.max_entries)
        self._networks = _Table(_Policy(s.network_free_failures, s.ip_base_delay,
                                        s.ip_max_delay), s.half_life, s.max_entries)
        self._pairs = _Table(_Policy(s.account_ip_free_failures, s.ip_base_delay,
                                     s.ip_max_delay), s.half_life, s.max_entries)
        self._accounts = _Table(
            _Policy(s.account_free_failures, s.account_base_delay, s.account_max_delay),
            s.half_life, s.max_entries)
        self._trusted = _Trust(s.trusted_for, s.max_entries)
        # Told (kind, remote_ip, account) after each local outcome, for other processes.
        self.on_outcome: Callable[[str, str, str | None], None] | None = None

    def _ip(self, remote_ip: str) -> str:
        return ip_key(remote_ip, self.settings.ipv6_prefix)

    def trusted(self, remote_ip: str, account: str) -> bool:
        """Did ``remote_ip`` log in to ``account`` successfully within ``trusted_for``?"""
        return ((account, self._ip(remote_ip)), self._clock.seconds()) in self._trusted

    def check(self, remote_ip: str, account: str | None = None) -> Verdict:
        """May an attempt from ``remote_ip`` (for ``account``, when known) go ahead now?"""
        now = self._clock.seconds()
        ip = self._ip(remote_ip)
        trusted = account is not None and ((account, ip), now) in self._trusted
        checks: list[tuple[str, _Table, object]] = []
        if not trusted:
            checks.append(("ip", self._ips, ip))
            checks.append(("network", self._networks, network_key(remote_ip)))
        if account is not None:
            checks.append(("account_ip", self._pairs, (account, ip)))
            if not trusted:
                checks.append(("account", self._accounts, account))
        for scope, table, key in checks:
            wait = table.retry_after(key, now)
            if wait > 0:
                self._metrics.inc("sasl_rate_limited_total", scope=scope)
                return Verdict(False, wait, scope)
        return Verdict(True)

    def failure(self, remote_ip: str, account: str | None = None) -> None:
        self._failure(remote_ip, account)
        if self.on_outcome is not None:
            self.on_outcome("failure", remote_ip, account)

    def success(self, remote_ip: str, account: str | None = None) -> None:
        """Clears only the (account, IP) pair and trusts it; the IP's and the account's
        failures stay (see the module docstring)."""
        self._success(remote_ip, account)
        if self.on_outcome is not None:
            self.on_outcome("success", remote_ip, account)

    def apply(self, kind: str, remote_ip: str, account: str | None = None) -> None:
        """Record an outcome another process saw (not passed on to ``on_outcome``)."""
        if kind == "failure":
            self._failure(remote_ip, account)
        elif kind == "success":
            self._success(remote_ip, account)

    def _failure(self, remote_ip: str, account: str | None) -> None:
        now = self._clock.seconds()
        ip = self._ip(remote_ip)
        self._ips.failure(ip, now)
        self._networks.failure(network_key(remote_ip), now)
        if account is not None:
            self._pairs.failure((account, ip), now)
            self._accounts.failure(account, now)

    def _success(self, remote_ip: str, account: str | None) -> None:
        if account is None:
            return
        key = (account, self._ip(remote_ip))
        self._pairs.clear(key)
        self._trusted.add(key, self._clock.seconds())

    @property
    def tracked(self) -> tuple[int, int]:
        """(addresses, accounts) currently remembered; for tests and the admin page."""
        return len(self._ips), len(self._accounts)
