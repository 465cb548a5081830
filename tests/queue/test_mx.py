"""MX host selection (mxd.queue.mx), RFC 5321 §5.1 and RFC 7505."""

from __future__ import annotations

import random

import pytest
from twisted.internet.defer import Deferred

from mxd.dns.testing import FakeResolver
from mxd.queue import mx


def _result(d: Deferred) -> object:  # type: ignore[type-arg]
    out: list[object] = []
    d.addBoth(out.append)
    assert out, "Deferred did not fire"
    return out[0]


def test_order_by_preference_with_random_tie_breaks() -> None:
    """Lower preference first; equal preferences appear in both orders across random draws."""
    records = [(20, "c.test"), (10, "a.test"), (10, "b.test")]
    seen = set()
    rng = random.Random(1)
    for _ in range(50):
        hosts = mx.order_mx(records, rng.random)
        assert hosts[-1].name == "c.test"
        seen.add(tuple(h.name for h in hosts[:2]))
    assert seen == {("a.test", "b.test"), ("b.test", "a.test")}


def test_null_mx_is_a_permanent_failure() -> None:
    """RFC 7505: a "." exchange fails permanently with 5.1.10."""
    r = FakeResolver()
    r.add("nomail.test", "MX", ["0 ."])
    err = _result(mx.find_mx_hosts(r, "nomail.test", random.random))
    exc = err.value  # type: ignore[attr-defined]
    assert isinstance(exc, mx.NullMX) and exc.permanent and exc.enhanced == "5.1.10"


def test_implicit_mx_when_there_is_no_mx_record() -> None:
    """No MX data: the domain itself is the only host, marked implicit."""
    r = FakeResolver()
    r.add("plain.test", "A", ["192.0.2.1"])
    plan = _result(mx.find_mx_hosts(r, "plain.test", random.random))
    assert isinstance(plan, mx.MXPlan)
    assert plan.hosts == (mx.MXHost("plain.test", 0, implicit=True),)


def test_nxdomain_is_permanent_and_servfail_temporary() -> None:
    """NXDOMAIN bounces (5.1.2); SERVFAIL is a temporary MXError."""
    r = FakeResolver()
    r.fail("gone.test", None, "nxdomain")
    r.fail("flaky.test", "MX", "servfail")
    gone = _result(mx.find_mx_hosts(r, "gone.test", random.random)).value  # type: ignore[attr-defined]
    flaky = _result(mx.find_mx_hosts(r, "flaky.test", random.random)).value  # type: ignore[attr-defined]
    assert isinstance(gone, mx.NoSuchDomain) and gone.permanent
    assert isinstance(flaky, mx.MXTemporaryError) and not flaky.permanent


def test_own_mx_drops_equal_and_worse_preferences() -> None:
    """RFC 5321 §5.1: hosts at or above our own preference are discarded; none left is a loop."""
    records = [(10, "backup.test"), (5, "primary.test"), (10, "me.test"), (20, "far.test")]
    hosts = mx.plan_from_records("d.test", records, random.random, frozenset({"ME.test."}))
    assert [h.name for h in hosts] == ["primary.test"]
    with pytest.raises(mx.MailLoop):
        mx.plan_from_records("d.test", [(10, "me.test")], random.random, frozenset({"me.test"}))


def test_cname_canonical_name_and_authentic_flag_are_kept() -> None:
    """The plan carries the answer's canonical name and authentic flag."""
    r = FakeResolver()
    r.add_cname("alias.test", "real.test", authentic=True)
    r.add("real.test", "MX", ["10 mx.real.test."], authentic=True)
    plan = _result(mx.find_mx_hosts(r, "Alias.test.", random.random))
    assert isinstance(plan, mx.MXPlan)
    assert plan.authentic and plan.canonical_name == "real.test"
    assert plan.hosts[0].name == "mx.real.test"


def test_resolve_host_orders_families_and_types_failures() -> None:
    """IPv4 first by default; no address at all for an NXDOMAIN host is NoSuchDomain."""
    r = FakeResolver()
    r.add("mx.test", "A", ["192.0.2.1"])
    r.add("mx.test", "AAAA", ["2001:db8::1"])
    r.fail("none.test", None, "nxdomain")
    r.fail("bad.test", "A", "servfail")
    r.add("bad.test", "TXT", [b"x"])
    addrs = _result(mx.resolve_host(r, "mx.test"))
    assert [a.ip for a in addrs] == ["192.0.2.1", "2001:db8::1"]  # type: ignore[attr-defined]
    addrs6 = _result(mx.resolve_host(r, "mx.test", prefer_ipv6=True))
    assert [a.ip for a in addrs6][0] == "2001:db8::1"  # type: ignore[attr-defined]
    assert isinstance(_result(mx.resolve_host(r, "none.test")).value, mx.NoSuchDomain)  # type: ignore[attr-defined]
    assert isinstance(_result(mx.resolve_host(r, "bad.test")).value, mx.MXTemporaryError)  # type: ignore[attr-defined]


def test_own_address_check() -> None:
    """Our own listening addresses are recognised in any textual form."""
    assert mx.is_own_address("::ffff:0:0", frozenset({"::ffff:0:0"}))
    assert mx.is_own_address("2001:db8:0::1", frozenset({"2001:db8::1"}))
    assert not mx.is_own_address("192.0.2.9", frozenset({"192.0.2.1"}))
