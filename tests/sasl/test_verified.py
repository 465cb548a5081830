"""VerifiedCache and the SASL server's use of it: a successful PLAIN/LOGIN check is
remembered, wrong or changed passwords always take the full check."""

from __future__ import annotations

from twisted.internet import task
from twisted.internet.defer import succeed

from mxd.sasl.api import Failure, Success
from mxd.sasl.client import make_client
from mxd.sasl.ratelimit import AuthLimiter
from mxd.sasl.server import SASLServer, SASLSettings
from mxd.sasl.verified import VerifiedCache

from .helpers import TEST_ITERATIONS, TEST_SCRYPT_N, result, run_exchange, secrets_for, tls_conn


def test_cache_matches_only_the_same_password_and_stamp_within_ttl() -> None:
    """A remembered check matches the same password for the same stamp until ttl."""
    clock = task.Clock()
    c = VerifiedCache(clock, ttl=60)
    c.remember("alice", b"stamp1", "pencil")
    assert c.matches("alice", b"stamp1", "pencil")
    assert not c.matches("alice", b"stamp1", "pencil2")
    assert not c.matches("alice", b"stamp2", "pencil")  # the password was changed
    assert not c.matches("bob", b"stamp1", "pencil")
    clock.advance(60)
    assert not c.matches("alice", b"stamp1", "pencil")


def test_cache_off_and_bounded() -> None:
    """ttl 0 remembers nothing; the table never exceeds max_entries."""
    clock = task.Clock()
    off = VerifiedCache(clock, ttl=0)
    off.remember("alice", b"s", "pw")
    assert not off.matches("alice", b"s", "pw") and len(off) == 0
    small = VerifiedCache(clock, ttl=60, max_entries=3)
    for i in range(10):
        small.remember(f"user{i}", b"s", "pw")
    assert len(small) == 3 and small.matches("user9", b"s", "pw")


def _server(ttl: float) -> tuple[SASLServer, list[int], dict]:  # type: ignore[type-arg]
    clock = task.Clock()
    accounts = {"user": secrets_for("pencil")}
    hashed: list[int] = []

    def counting(f):  # type: ignore[no-untyped-def]
        hashed.append(1)
        return succeed(f())

    st = SASLSettings(fake_salt_key=b"k" * 32, fake_scram_iterations=TEST_ITERATIONS,
                      fake_scrypt_n=TEST_SCRYPT_N, verified_cache_ttl=ttl)
    server = SASLServer(lambda n: succeed(accounts.get(n)), st, AuthLimiter(clock), clock,
                        "mx.example.test", run_blocking=counting)
    return server, hashed, accounts


def test_second_login_skips_scrypt_wrong_password_does_not() -> None:
    """The second correct LOGIN costs no scrypt; a wrong password always does; after a
    password change the old password fails with a full check."""
    server, hashed, accounts = _server(ttl=900)
    conn = tls_conn()
    assert isinstance(result(server.check_password("user", "pencil", conn)), Success)
    assert isinstance(result(server.check_password("user", "pencil", conn)), Success)
    assert isinstance(run_exchange(server, make_client("PLAIN", "user", "pencil"), conn), Success)
    assert hashed == [1]
    assert isinstance(result(server.check_password("user", "wrong", conn)), Failure)
    assert hashed == [1, 1]
    accounts["user"] = secrets_for("new-password")
    assert isinstance(result(server.check_password("user", "pencil", conn)), Failure)
    assert hashed == [1, 1, 1]


def test_no_cache_by_default() -> None:
    """Without verified_cache_ttl every login pays the full check."""
    server, hashed, _ = _server(ttl=0)
    for _ in range(2):
        assert isinstance(result(server.check_password("user", "pencil", tls_conn())), Success)
    assert hashed == [1, 1]
