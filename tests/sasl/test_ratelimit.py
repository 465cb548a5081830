"""AuthLimiter: back-off per IP and per account, on a task.Clock."""

from __future__ import annotations

import pytest
from twisted.internet import task

from mxd.sasl.ratelimit import AuthLimiter, AuthLimiterSettings, ip_key

from .helpers import FakeMetrics

S = AuthLimiterSettings(ip_free_failures=3, ip_base_delay=2.0, ip_max_delay=60.0,
                        account_free_failures=5, account_base_delay=1.0, account_max_delay=8.0,
                        half_life=600.0)


def _limiter(settings: AuthLimiterSettings = S) -> tuple[AuthLimiter, task.Clock, FakeMetrics]:
    clock = task.Clock()
    metrics = FakeMetrics()
    return AuthLimiter(clock, settings, metrics), clock, metrics


def test_free_failures_then_doubling_delays() -> None:
    """The first failures are free; then each failure blocks for twice as long, up to the cap."""
    lim, clock, _ = _limiter()
    delays = []
    for _ in range(10):
        lim.failure("192.0.2.1")
        delays.append(round(lim.check("192.0.2.1").retry_after, 3))
    assert delays == [0.0, 0.0, 0.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]


def test_block_expires_with_time() -> None:
    """A blocked address is allowed again once the delay has passed."""
    lim, clock, metrics = _limiter()
    for _ in range(4):
        lim.failure("192.0.2.1")
    v = lim.check("192.0.2.1")
    assert not v.allowed and v.scope == "ip" and v.retry_after == pytest.approx(2.0)
    assert metrics.total("sasl_rate_limited_total", scope="ip") == 1
    clock.advance(2.0)
    assert lim.check("192.0.2.1").allowed


def test_scores_decay() -> None:
    """After several half-lives the failures are forgotten: the free allowance is back."""
    lim, clock, _ = _limiter()
    for _ in range(6):
        lim.failure("192.0.2.1")
    clock.advance(6000)  # ten half-lives
    lim.failure("192.0.2.1")
    assert lim.check("192.0.2.1").allowed


def test_success_clears_only_its_account_and_ip() -> None:
    """A success clears the (account, IP) pair; the IP's own failures stay, so other
    accounts are still refused from that address."""
    lim, clock, _ = _limiter()
    for i in range(4):
        lim.failure("192.0.2.1", f"victim{i}")
    assert not lim.check("192.0.2.1", "victim9").allowed
    lim.success("192.0.2.1", "mine")
    v = lim.check("192.0.2.1", "victim9")
    assert not v.allowed and v.scope == "ip"


def test_spraying_checks_no_more_passwords_than_guessing() -> None:
    """Alternating 4 guesses at other accounts with 1 correct login to one's own (the
    spray trick) gets exactly as many guesses checked as plain guessing, in the same time."""
    def run(spray: bool) -> int:
        lim, clock, _ = _limiter()
        checked = 0
        for step in range(300):  # 30 s in 0.1 s steps
            clock.advance(0.1)
            if spray and step % 5 == 4:
                if lim.check("192.0.2.7", "mine").allowed:
                    lim.success("192.0.2.7", "mine")
                continue
            victim = f"victim{step}"
            if lim.check("192.0.2.7", victim).allowed:
                checked += 1
                lim.failure("192.0.2.7", victim)
        return checked

    plain, spray = run(False), run(True)
    assert spray <= plain
    assert plain <= 8  # 3 free, then 2+4+8+16 s of back-off in 30 s


def test_owner_keeps_working_while_the_account_is_attacked() -> None:
    """Distributed guessing blocks the account for untrusted addresses only: an address
    with a recent successful login to it passes, others (new or guessing) are refused."""
    lim, clock, metrics = _limiter()
    lim.success("203.0.113.5", "alice")  # the owner's usual address
    for i in range(40):
        clock.advance(0.5)
        lim.failure(f"198.51.100.{i % 12}", "alice")
        assert lim.check("203.0.113.5", "alice").allowed
    v = lim.check("192.0.2.200", "alice")  # a clean but untrusted address
    assert not v.allowed and v.scope == "account"
    assert metrics.total("sasl_rate_limited_total", scope="account") == 1
    assert lim.check("192.0.2.200", "bob").allowed


def test_trusted_pair_still_has_its_own_limit() -> None:
    """A trusted address guessing at its account is stopped by the (account, IP) limit."""
    lim, clock, _ = _limiter()
    lim.success("203.0.113.5", "alice")
    for _ in range(S.account_ip_free_failures + 1):
        lim.failure("203.0.113.5", "alice")
    v = lim.check("203.0.113.5", "alice")
    assert not v.allowed and v.scope == "account_ip"
    clock.advance(v.retry_after)
    lim.success("203.0.113.5", "alice")
    assert lim.check("203.0.113.5", "alice").allowed


def test_trust_expires() -> None:
    """Trust lasts trusted_for seconds after the last success."""
    lim, clock, _ = _limiter(AuthLimiterSettings(trusted_for=100.0, account_free_failures=1))
    lim.success("203.0.113.5", "alice")
    assert lim.trusted("203.0.113.5", "alice")
    clock.advance(101)
    assert not lim.trusted("203.0.113.5", "alice")
    for i in range(3):
        lim.failure(f"198.51.100.{i}", "alice")
    assert not lim.check("203.0.113.5", "alice").allowed


def test_account_limit_for_distributed_guessing() -> None:
    """Failures for one account from many addresses delay that account up to its cap,
    and other accounts are unaffected."""
    lim, clock, _ = _limiter()
    for i in range(20):
        lim.failure(f"198.51.100.{i}", "alice")
    v = lim.check("203.0.113.9", "alice")
    assert not v.allowed and v.scope == "account" and v.retry_after <= S.account_max_delay
    assert lim.check("203.0.113.9", "bob").allowed
    clock.advance(S.account_max_delay)
    assert lim.check("203.0.113.9", "alice").allowed


def test_ip_limit_strict_for_one_guesser() -> None:
    """One address guessing many accounts is stopped by the IP limit."""
    lim, clock, _ = _limiter()
    for i in range(10):
        lim.failure("192.0.2.66", f"user{i}")
    v = lim.check("192.0.2.66", "someone-else")
    assert not v.allowed and v.scope == "ip" and v.retry_after > S.account_max_delay


@pytest.mark.parametrize(("addr", "key"), [
    ("192.0.2.1", "192.0.2.1"),
    ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
    ("2001:db8:1:2::ffff", "2001:db8:1:2::/64"),
    ("::ffff:192.0.2.1", "192.0.2.1"),
    ("fe80::1%eth0", "fe80::/64"),
    ("not-an-ip", "not-an-ip"),
])
def test_ip_key(addr: str, key: str) -> None:
    """IPv6 addresses are grouped per /64; IPv4-mapped addresses count as IPv4."""
    assert ip_key(addr) == key


def test_ipv6_neighbours_share_a_limit() -> None:
    """Two addresses in one /64 share the IP limit."""
    lim, _, _ = _limiter()
    for i in range(4):
        lim.failure(f"2001:db8::{i + 1}")
    assert not lim.check("2001:db8::ffff").allowed
    assert lim.check("2001:db8:0:1::1").allowed


def test_memory_is_bounded() -> None:
    """The tables never hold more than max_entries keys."""
    lim, clock, _ = _limiter(AuthLimiterSettings(max_entries=50))
    for i in range(500):
        lim.failure(f"10.0.{i // 256}.{i % 256}", f"user{i}")
        clock.advance(1)
    ips, accounts = lim.tracked
    assert ips <= 50 and accounts <= 50


def test_many_addresses_of_one_network_share_a_limit() -> None:
    """Guessing from many addresses of one /24 is limited by the network table."""
    lim, _, _ = _limiter(AuthLimiterSettings(ip_free_failures=3, network_free_failures=10,
                                             account_free_failures=1000))
    for i in range(11):
        lim.failure(f"203.0.113.{i + 1}", f"user{i}")
    v = lim.check("203.0.113.200", "someone")
    assert not v.allowed and v.scope == "network"
    assert lim.check("198.51.100.1", "someone").allowed
