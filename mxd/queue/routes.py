"""Route choice for outbound mail: which transport carries a recipient on this attempt.

Routes come in three tables, checked in this order on *every* delivery attempt (so a route
with ``min_attempt`` can switch a message to another transport after some failures):

1. the routes of the account that submitted the message,
2. the routes of the sender's domain (the domain of the reverse-path),
3. the global routes.

The first route that matches wins; no match, or a route naming "" or "direct", means
direct delivery (MX lookup, RFC 5321 §5).  A per-recipient override set by the
administrator (``mxd queue transport``) wins over all routes.

A route matches when each criterion it sets holds: the recipient's domain matches one of
``to_domains``, the sender's domain one of ``from_domains``, and the attempt number is at
least ``min_attempt``.  A route sets at least one criterion (``to_domains = ["*"]`` is the
explicit catch-all).  Domain patterns: ``example.com`` matches that domain only,
``.example.com`` its subdomains (not itself), ``*`` every domain.  Comparison is on the
ASCII (A-label) form, case-insensitively.

Everything here is a plain value or a pure function; the queue runner does the delivery.
"""

from __future__ import annotations

import enum

import attrs

from mxd.errors import MxdError


class RouteError(MxdError):
    """Invalid route or transport settings."""


class TransportKind(enum.StrEnum):
    DIRECT = "direct"  # MX lookup, RFC 5321 §5
    SMTP = "smtp"  # a smarthost, usually port 25, no AUTH (RFC 5321)
    SUBMISSION = "submission"  # a smarthost on 587, STARTTLS then SASL AUTH (RFC 6409)
    SUBMISSIONS = "submissions"  # a smarthost on 465, implicit TLS then SASL (RFC 8314)
    SOCKS5 = "socks5"  # direct delivery through a SOCKS5 proxy (RFC 1928)
    FAIL = "fail"  # refuse: the recipient fails with the given code and text


class SmarthostTLS(enum.StrEnum):
    """How a smarthost transport uses TLS."""

    VERIFIED = "verified"  # TLS required, certificate verified (PKIX, RFC 6125 host name)
    REQUIRED = "required"  # TLS required, certificate not checked
    OPPORTUNISTIC = "opportunistic"  # STARTTLS when offered (RFC 7435)
    NONE = "none"  # never TLS (a relay on loopback)


DEFAULT_PORTS = {TransportKind.SMTP: 25, TransportKind.SUBMISSION: 587,
                 TransportKind.SUBMISSIONS: 465, TransportKind.SOCKS5: 1080}


@attrs.frozen
class Transport:
    """A named way to deliver.  Fields not used by a kind are left at their defaults.

    ``host``/``port``: the smarthost (smtp, submission, submissions) or the SOCKS5 proxy.
    ``password``/``proxy_password`` are the secrets read from their files at start-up
    (never written in the main config, never shown in a repr).
    """

    name: str
    kind: TransportKind
    host: str | None = None
    port: int | None = None
    tls: SmarthostTLS = SmarthostTLS.VERIFIED
    username: str | None = None  # submission SASL
    password: str | None = attrs.field(default=None, repr=False)
    mechanisms: tuple[str, ...] = ()  # empty: the most secure the server offers
    proxy_username: str | None = None  # socks5, RFC 1929
    proxy_password: str | None = attrs.field(default=None, repr=False)
    remote_ips: tuple[str, ...] = ()  # socks5: the proxy's public addresses (SPF check)
    ehlo_hostname: str | None = None  # the name to say in EHLO through this transport
    fail_code: int = 554
    fail_enhanced: str = "5.7.1"
    fail_text: str = "delivery to this domain is not allowed"

    def __attrs_post_init__(self) -> None:
        if self.kind in DEFAULT_PORTS and not self.host:
            raise RouteError(f"transport {self.name!r} ({self.kind}): host is required")
        if self.port is not None and not 0 < self.port < 65536:
            raise RouteError(f"transport {self.name!r}: port {self.port} out of range "
                             "(1 to 65535)")
        if self.kind is TransportKind.FAIL:
            if not 400 <= self.fail_code < 600:
                raise RouteError(f"transport {self.name!r}: fail code must be 4xx or 5xx")
            if self.fail_enhanced[:1] != str(self.fail_code)[0]:
                # RFC 3463 §3.1: the class of the enhanced code follows the reply code.
                raise RouteError(f"transport {self.name!r}: enhanced code "
                                 f"{self.fail_enhanced} does not match {self.fail_code}")

    @property
    def address(self) -> tuple[str, int]:
        """The smarthost's or proxy's (host, port), with the kind's default port."""
        assert self.host is not None
        return self.host, self.port or DEFAULT_PORTS[self.kind]

    @property
    def smarthost(self) -> bool:
        return self.kind in (TransportKind.SMTP, TransportKind.SUBMISSION,
                             TransportKind.SUBMISSIONS)

    @property
    def verified_tls(self) -> bool:
        """Whether this transport can give verified TLS to the next hop (RFC 8689 §4.2):
        direct and socks5 by DANE/MTA-STS per host, a smarthost only when it verifies."""
        if self.kind in (TransportKind.DIRECT, TransportKind.SOCKS5):
            return True
        return self.tls is SmarthostTLS.VERIFIED


DIRECT = Transport(name="direct", kind=TransportKind.DIRECT)


@attrs.frozen
class Route:
    """One route; an empty tuple / 0 means the criterion is not set."""

    transport: str
    to_domains: tuple[str, ...] = ()
    from_domains: tuple[str, ...] = ()
    min_attempt: int = 0

    def __attrs_post_init__(self) -> None:
        if not self.to_domains and not self.from_domains and self.min_attempt <= 1:
            raise RouteError("a route needs at least one of to_domains, from_domains or "
                             "min_attempt (use to_domains = [\"*\"] for every message)")

    def matches(self, sender_domain: str, recipient_domain: str, attempt: int) -> bool:
        if self.to_domains and not any(domain_matches(p, recipient_domain)
                                       for p in self.to_domains):
            return False
        if self.from_domains and not any(domain_matches(p, sender_domain)
                                         for p in self.from_domains):
            return False
        return attempt >= self.min_attempt


@attrs.frozen
class RouteTable:
    """Account, domain and global routes (see the module docstring for the order)."""

    global_routes: tuple[Route, ...] = ()
    domain_routes: dict[str, tuple[Route, ...]] = attrs.field(factory=dict)
    account_routes: dict[str, tuple[Route, ...]] = attrs.field(factory=dict)

    def all_routes(self) -> list[tuple[str, Route]]:
        """(where, route) for every route, for validation and display."""
        out = [(f"account {a}", r) for a, rs in self.account_routes.items() for r in rs]
        out += [(f"domain {d}", r) for d, rs in self.domain_routes.items() for r in rs]
        return out + [("global", r) for r in self.global_routes]


@attrs.frozen
class Choice:
    """The transport chosen for an attempt and why (for logs and the attempts log)."""

    transport: Transport
    reason: str  # "override", "account alice route 1", "domain example.org route 2", ...


def _normalise(domain: str) -> str:
    d = domain.strip().rstrip(".").lower()
    try:
        return d.encode("idna").decode("ascii") if not d.isascii() else d
    except UnicodeError:
        return d


def domain_matches(pattern: str, domain: str) -> bool:
    """Whether ``domain`` matches one route pattern (see the module docstring)."""
    if pattern == "*":
        return True
    d = _normalise(domain)
    if pattern.startswith("."):
        return d.endswith("." + _normalise(pattern[1:]))
    return d == _normalise(pattern)


def domain_of(address: str) -> str:
    """The domain of ``local@domain`` (the last '@'); '' for the null path or no '@'."""
    return address.rpartition("@")[2] if "@" in address else ""


def _named(transports: dict[str, Transport], name: str, reason: str) -> Choice:
    if name in ("", "direct") and name not in transports:
        return Choice(DIRECT, reason)
    try:
        return Choice(transports[name], reason)
    except KeyError:
        raise RouteError(f"{reason} names unknown transport {name!r}") from None


def choose(table: RouteTable, transports: dict[str, Transport], sender: str, recipient: str,
           *, account: str | None = None, attempt: int = 1,
           override: str | None = None) -> Choice:
    """The transport for one recipient on attempt number ``attempt`` (1 = the first).

    Raises RouteError for a route or override naming an unknown transport."""
    if override:
        return _named(transports, override, "override")
    sdom, rdom = domain_of(sender), domain_of(recipient)
    tables: list[tuple[str, tuple[Route, ...]]] = []
    if account is not None and account in table.account_routes:
        tables.append((f"account {account}", table.account_routes[account]))
    if sdom:
        nd = _normalise(sdom)
        for dom, routes in table.domain_routes.items():
            if _normalise(dom) == nd:
                tables.append((f"domain {dom}", routes))
                break
    tables.append(("global", table.global_routes))
    for where, routes in tables:
        for i, route in enumerate(routes, 1):
            if route.matches(sdom, rdom, attempt):
                return _named(transports, route.transport, f"{where} route {i}")
    return Choice(DIRECT, "default")


def choose_transport(
    routes: tuple[Route, ...],
    transports: dict[str, Transport],
    sender: str,
    recipient: str,
    override: str | None = None,
    attempt: int = 1,
) -> Transport:
    """``choose`` with global routes only; raises RouteError for an unknown name."""
    return choose(RouteTable(global_routes=routes), transports, sender, recipient,
                  attempt=attempt, override=override).transport


def validate(routes: tuple[Route, ...] | RouteTable, transports: dict[str, Transport]) -> None:
    """Raise RouteError when a route names a transport that is not defined."""
    table = routes if isinstance(routes, RouteTable) else RouteTable(global_routes=routes)
    for where, route in table.all_routes():
        if route.transport not in ("", "direct") and route.transport not in transports:
            raise RouteError(f"{where} route names unknown transport {route.transport!r}")
