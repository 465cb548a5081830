"""Route matching (mxd.queue.routes)."""

from __future__ import annotations

import pytest

from mxd.queue.routes import (
    DIRECT,
    Route,
    RouteError,
    RouteTable,
    SmarthostTLS,
    Transport,
    TransportKind,
    choose,
    choose_transport,
    domain_matches,
    validate,
)

SMART = Transport(name="smart", kind=TransportKind.SMTP, host="relay.example.net", port=25)
NOPE = Transport(name="nope", kind=TransportKind.FAIL)
TRANSPORTS = {"smart": SMART, "nope": NOPE}


@pytest.mark.parametrize(("pattern", "domain", "expected"), [
    ("example.com", "example.com", True),
    ("example.com", "EXAMPLE.com.", True),
    ("example.com", "sub.example.com", False),
    (".example.com", "sub.example.com", True),
    (".example.com", "example.com", False),
    (".example.com", "badexample.com", False),
    ("*", "anything.test", True),
    ("bücher.example", "xn--bcher-kva.example", True),
])
def test_domain_patterns(pattern: str, domain: str, expected: bool) -> None:
    """Exact, subdomain and wildcard patterns match as documented."""
    assert domain_matches(pattern, domain) is expected


def test_first_matching_route_wins_and_default_is_direct() -> None:
    """Routes are checked in order; unmatched recipients go direct."""
    routes = (
        Route(transport="nope", to_domains=("blocked.test",)),
        Route(transport="smart", to_domains=(".corp.test",), from_domains=("example.org",)),
        Route(transport="smart", to_domains=("blocked.test",)),
    )
    assert choose_transport(routes, TRANSPORTS, "a@x.test", "b@blocked.test") == NOPE
    assert choose_transport(routes, TRANSPORTS, "a@example.org", "b@mx.corp.test") == SMART
    assert choose_transport(routes, TRANSPORTS, "a@other.org", "b@mx.corp.test") == DIRECT


def test_override_wins_and_unknown_names_are_errors() -> None:
    """A per-recipient override beats routes; an unknown transport name raises RouteError."""
    assert choose_transport((), TRANSPORTS, "a@x", "b@y", override="smart") == SMART
    with pytest.raises(RouteError):
        choose_transport((), TRANSPORTS, "a@x", "b@y", override="missing")
    with pytest.raises(RouteError):
        validate((Route(transport="missing", to_domains=("*",)),), TRANSPORTS)


def test_transport_values_are_validated() -> None:
    """A smarthost transport needs a host; ports and fail codes are range-checked."""
    with pytest.raises(RouteError):
        Transport(name="s", kind=TransportKind.SMTP)
    with pytest.raises(RouteError):
        Transport(name="s", kind=TransportKind.DIRECT, port=70000)
    with pytest.raises(RouteError):
        Transport(name="f", kind=TransportKind.FAIL, fail_code=250)


def test_route_needs_a_criterion() -> None:
    """A route without to_domains, from_domains or min_attempt is refused, with the fix."""
    with pytest.raises(RouteError, match=r'to_domains = \["\*"\]'):
        Route(transport="smart")
    Route(transport="smart", min_attempt=4)  # a criterion of its own


def test_transport_fail_enhanced_class_follows_code() -> None:
    """RFC 3463 §3.1: a 5xx fail transport cannot carry a 4.x.x enhanced code."""
    with pytest.raises(RouteError, match="does not match"):
        Transport(name="f", kind=TransportKind.FAIL, fail_code=554, fail_enhanced="4.7.1")


SUB = Transport(name="sub", kind=TransportKind.SUBMISSION, host="smtp.provider.test")
ALL = {"smart": SMART, "nope": NOPE, "sub": SUB}
TABLE = RouteTable(
    global_routes=(Route("nope", to_domains=("blocked.test",)),
                   Route("smart", min_attempt=4),
                   Route("sub", to_domains=(".corp.test",))),
    domain_routes={"example.org": (Route("sub", to_domains=("blocked.test", "gmail.test")),
                                   Route("direct", from_domains=("example.org",)))},
    account_routes={"alice": (Route("smart", to_domains=("gmail.test",)),)},
)


@pytest.mark.parametrize(("sender", "rcpt", "account", "attempt", "name", "reason"), [
    # account > domain > global
    ("alice@example.org", "x@gmail.test", "alice", 1, "smart", "account alice route 1"),
    ("bob@example.org", "x@gmail.test", "bob", 1, "sub", "domain example.org route 1"),
    ("bob@other.test", "x@gmail.test", "bob", 1, "direct", "default"),
    ("bob@example.org", "x@blocked.test", None, 1, "sub", "domain example.org route 1"),
    ("bob@other.test", "x@blocked.test", None, 1, "nope", "global route 1"),
    # the domain's catch-all "direct" route stops the global ones (even from attempt 4)
    ("bob@EXAMPLE.org", "x@mx.corp.test", None, 5, "direct", "domain example.org route 2"),
    # subdomain pattern: .corp.test matches mx.corp.test, not corp.test
    ("bob@other.test", "x@mx.corp.test", None, 1, "sub", "global route 3"),
    ("bob@other.test", "x@corp.test", None, 1, "direct", "default"),
    # from the 4th attempt through the smarthost
    ("bob@other.test", "x@far.test", None, 3, "direct", "default"),
    ("bob@other.test", "x@far.test", None, 4, "smart", "global route 2"),
    ("bob@other.test", "x@mx.corp.test", None, 4, "smart", "global route 2"),
    # the null reverse-path (a DSN) has no sender domain
    ("", "x@mx.corp.test", None, 1, "sub", "global route 3"),
])
def test_route_table_order(sender: str, rcpt: str, account: str | None, attempt: int,
                           name: str, reason: str) -> None:
    """Account routes, then the sender domain's, then global ones; first match wins."""
    c = choose(TABLE, ALL, sender, rcpt, account=account, attempt=attempt)
    assert (c.transport.name, c.reason) == (name, reason)


def test_override_beats_every_table_and_validate_names_the_table() -> None:
    c = choose(TABLE, ALL, "alice@example.org", "x@gmail.test", account="alice",
               override="nope")
    assert (c.transport, c.reason) == (NOPE, "override")
    bad = RouteTable(domain_routes={"example.org": (Route("gone", min_attempt=2),)})
    with pytest.raises(RouteError, match="domain example.org route names unknown transport 'gone'"):
        validate(bad, ALL)
    validate(TABLE, ALL)


def test_verified_tls_per_kind() -> None:
    """RFC 8689 §4.2: only a verifying smarthost can carry a REQUIRETLS message."""
    assert SMART.verified_tls and DIRECT.verified_tls
    assert not Transport(name="s", kind=TransportKind.SMTP, host="h",
                         tls=SmarthostTLS.REQUIRED).verified_tls
    assert "secret" not in repr(Transport(name="s", kind=TransportKind.SUBMISSION, host="h",
                                          username="u", password="secret"))
