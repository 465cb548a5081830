"""The recipient lookup cache in front of the directory."""

from __future__ import annotations

from twisted.internet import task

from mxd.smtp.lookup import CachingDirectory
from tests.smtp.helpers import ALICE, FakeDirectory


def test_answers_cached_until_ttl() -> None:
    """A second lookup within the TTL does not reach the directory; after it, it does."""
    clock = task.Clock()
    inner = FakeDirectory()
    cache = CachingDirectory(inner, clock, ttl=10)
    got: list[object] = []
    cache.resolve_recipient("alice@example.test").addCallback(got.append)
    cache.resolve_recipient("alice@example.test").addCallback(got.append)
    assert got == [ALICE, ALICE] and inner.lookups == ["alice@example.test"]
    clock.advance(11)
    cache.resolve_recipient("alice@example.test").addCallback(got.append)
    assert len(inner.lookups) == 2


def test_negative_answers_cached_and_errors_not() -> None:
    """Unknown users are cached as None; a failed lookup is not cached."""
    clock = task.Clock()
    inner = FakeDirectory()
    cache = CachingDirectory(inner, clock, ttl=10)
    got: list[object] = []
    cache.resolve_recipient("nobody@example.test").addCallback(got.append)
    cache.resolve_recipient("nobody@example.test").addCallback(got.append)
    assert got == [None, None] and inner.lookups == ["nobody@example.test"]
    inner.fail = True
    errors: list[object] = []
    cache.resolve_recipient("bob@example.test").addErrback(errors.append)
    inner.fail = False
    cache.resolve_recipient("bob@example.test").addCallback(got.append)
    assert len(errors) == 1 and got[-1] is not None


def test_other_calls_pass_through() -> None:
    """is_local_domain and may_send_as are not cached."""
    inner = FakeDirectory()
    cache = CachingDirectory(inner, task.Clock())
    assert cache.is_local_domain("example.test") and not cache.is_local_domain("x.example")
    got: list[bool] = []
    cache.may_send_as("alice", "alice@example.test").addCallback(got.append)
    assert got == [True]
