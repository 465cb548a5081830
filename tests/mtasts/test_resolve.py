"""MTA-STS cache (RFC 8461 §5.1), per-domain lookup and per-MX verdicts (mxd.mtasts)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from mxd.dns.testing import FakeResolver
from mxd.mtasts.cache import CachedPolicy, JSONFilePolicyCache, MemoryPolicyCache
from mxd.mtasts.fetch import FetchedPolicy, PolicyFetchError
from mxd.mtasts.policy import Mode, parse_policy
from mxd.mtasts.resolve import STSResolver, mx_verdict
from mxd.tlsrpt.results import PolicyType, ResultType

ENFORCE = "version: STSv1\nmode: enforce\nmx: mx.example.test\nmx: *.backup.test\nmax_age: 86400\n"
TESTING = ENFORCE.replace("enforce", "testing")
NONE = "version: STSv1\nmode: none\nmax_age: 86400\n"


class FakeFetcher:
    """Answers fetches from a dict: policy text, or a PolicyFetchError."""

    def __init__(self) -> None:
        self.answers: dict[str, str | PolicyFetchError] = {}
        self.calls: list[str] = []

    def fetch(self, domain: str) -> Deferred[FetchedPolicy]:
        self.calls.append(domain)
        a = self.answers.get(domain, PolicyFetchError("connection refused"))
        if isinstance(a, PolicyFetchError):
            return fail(a)
        return succeed(FetchedPolicy(parse_policy(a), a))


def _run(coro: Any) -> Any:
    out: list[Any] = []
    Deferred.fromCoroutine(coro).addBoth(out.append)
    assert out, "did not fire"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


@pytest.fixture
def world() -> tuple[FakeResolver, FakeFetcher, MemoryPolicyCache, Clock, STSResolver]:
    r = FakeResolver()
    f = FakeFetcher()
    c = MemoryPolicyCache()
    clock = Clock()
    clock.advance(1_800_000_000)
    return r, f, c, clock, STSResolver(r, f, c, clock)


def test_first_lookup_fetches_and_caches(world: Any) -> None:
    """A valid TXT record and a fetched policy: the policy is used and cached with its id."""
    r, f, c, clock, sts = world
    r.add("_mta-sts.example.test", "TXT", [b"v=STSv1; id=1"])
    f.answers["example.test"] = ENFORCE
    got = _run(sts.lookup("Example.Test"))
    assert got.enforce and got.policy_id == "1" and not got.from_cache
    assert c.get("example.test").txt_id == "1"
    assert f.calls == ["example.test"]


def test_same_id_uses_cache_without_fetch(world: Any) -> None:
    """RFC 8461 §5.1: an unchanged id means no new fetch."""
    r, f, c, clock, sts = world
    r.add("_mta-sts.example.test", "TXT", [b"v=STSv1; id=1"])
    f.answers["example.test"] = ENFORCE
    _run(sts.lookup("example.test"))
    got = _run(sts.lookup("example.test"))
    assert got.from_cache and got.enforce and f.calls == ["example.test"]


def test_new_id_refetches(world: Any) -> None:
    """A changed TXT id triggers a fetch that replaces the cached policy."""
    r, f, c, clock, sts = world
    r.add("_mta-sts.example.test", "TXT", [b"v=STSv1; id=1"])
    f.answers["example.test"] = ENFORCE
    _run(sts.lookup("example.test"))
    r.add("_mta-sts.example.test", "TXT", [b"v=STSv1; id=2"])
    f.answers["example.test"] = TESTING
    got = _run(sts.lookup("example.test"))
    assert got.testing and got.policy_id == "2" and len(f.calls) == 2


def test_failed_refetch_keeps_cached_policy(world: Any) -> None:
    """A fetch failure with an unexpired cached policy keeps enforcing it and reports."""
    r, f, c, clock, sts = world
    r.add("_mta-sts.example.test", "TXT", [b"v=STSv1; id=1"])
    f.answers["example.test"] = ENFORCE
    _run(sts.lookup("example.test"))
    r.add("_mta-sts.example.test", "TXT", [b"v=STSv1; id=2"])
    f.answers["example.test"] = PolicyFetchError("timeout")
    got = _run(sts.lookup("example.test"))
    assert got.enforce and got.from_cache and got.policy_id == "1"
    assert got.failure is ResultType.STS_POLICY_FETCH_ERROR


def test_fetch_failure_without_cache_is_no_policy(world: Any) -> None:
    """First contact failing to fetch: no policy (trust on first use) with the failure."""
    r, f, c, clock, sts = world
    r.add("_mta-sts.example.test", "TXT", [b"v=STSv1; id=1"])
    f.answers["example.test"] = PolicyFetchError("bad", ResultType.STS_POLICY_INVALID)
    got = _run(sts.lookup("example.test"))
    assert got.policy is None and got.failure is ResultType.STS_POLICY_INVALID
    assert got.policy_info().type is PolicyType.NO_POLICY_FOUND


def test_missing_txt_keeps_unexpired_cache_until_max_age(world: Any) -> None:
    """Removing the TXT record does not withdraw a cached policy before it expires (§8.3)."""
    r, f, c, clock, sts = world
    r.add("_mta-sts.example.test", "TXT", [b"v=STSv1; id=1"])
    f.answers["example.test"] = ENFORCE
    _run(sts.lookup("example.test"))
    r.add("_mta-sts.example.test", "TXT", [b"v=spf1 -all"])
    assert _run(sts.lookup("example.test")).enforce
    clock.advance(86400)
    got = _run(sts.lookup("example.test"))
    assert got.policy is None


def test_txt_failure_uses_cache(world: Any) -> None:
    """A SERVFAIL on the TXT lookup falls back to the cached policy, without a fetch."""
    r, f, c, clock, sts = world
    r.add("_mta-sts.example.test", "TXT", [b"v=STSv1; id=1"])
    f.answers["example.test"] = ENFORCE
    _run(sts.lookup("example.test"))
    r.fail("_mta-sts.example.test", "TXT", "servfail")
    got = _run(sts.lookup("example.test"))
    assert got.enforce and got.from_cache and "TXT lookup failed" in got.detail
    assert len(f.calls) == 1


def test_no_txt_no_policy(world: Any) -> None:
    """No TXT record and nothing cached: no policy, no fetch."""
    r, f, c, clock, sts = world
    got = _run(sts.lookup("example.test"))
    assert got.policy is None and f.calls == []


def test_mode_none_is_cached_and_means_no_policy(world: Any) -> None:
    """A mode none policy replaces an enforced one and blocks nothing."""
    r, f, c, clock, sts = world
    r.add("_mta-sts.example.test", "TXT", [b"v=STSv1; id=9"])
    f.answers["example.test"] = NONE
    got = _run(sts.lookup("example.test"))
    assert got.policy is not None and got.policy.mode is Mode.NONE
    assert not got.enforce and c.get("example.test").txt_id == "9"
    assert got.policy_info().type is PolicyType.NO_POLICY_FOUND


def test_policy_info_for_reports(world: Any) -> None:
    """The RFC 8460 policy description lists the policy lines and mx patterns."""
    r, f, c, clock, sts = world
    r.add("_mta-sts.example.test", "TXT", [b"v=STSv1; id=1"])
    f.answers["example.test"] = ENFORCE
    info = _run(sts.lookup("example.test")).policy_info()
    assert info.type is PolicyType.STS and info.domain == "example.test"
    assert "mode: enforce" in info.strings and info.mx_host == ("mx.example.test", "*.backup.test")


@pytest.mark.parametrize("text,host,allowed,verify,report_only", [
    (None, "any.test", True, False, False),
    (NONE, "any.test", True, False, False),
    (ENFORCE, "mx.example.test", True, True, False),
    (ENFORCE, "a.backup.test", True, True, False),
    (ENFORCE, "evil.test", False, False, False),
    (TESTING, "mx.example.test", True, True, True),
    (TESTING, "evil.test", True, True, True),
])
def test_mx_verdict(text: str | None, host: str, allowed: bool, verify: bool,
                    report_only: bool) -> None:
    """Enforce blocks unlisted MX hosts and verifies listed ones; testing only reports."""
    v = mx_verdict(parse_policy(text) if text else None, host)
    assert (v.allowed, v.verify, v.report_only) == (allowed, verify, report_only)


# -- the JSON file cache ---------------------------------------------------------------------

def _entry(domain: str = "example.test", text: str = ENFORCE, at: float = 100.0) -> CachedPolicy:
    return CachedPolicy(domain, parse_policy(text), text, "id1", at)


def test_json_cache_survives_restart(tmp_path: Path) -> None:
    """Entries written by one cache object are read by the next (a restart)."""
    path = tmp_path / "mta-sts-cache.json"
    JSONFilePolicyCache(path).put(_entry())
    again = JSONFilePolicyCache(path)
    got = again.get("EXAMPLE.test")
    assert got == _entry() and got.expires_at == 100.0 + 86400
    assert again.domains() == ["example.test"]
    again.delete("example.test")
    assert JSONFilePolicyCache(path).get("example.test") is None


def test_json_cache_corrupt_file_is_set_aside(tmp_path: Path) -> None:
    """An unreadable cache file is moved aside and the cache starts empty."""
    path = tmp_path / "c.json"
    path.write_text("{not json")
    cache = JSONFilePolicyCache(path)
    assert cache.domains() == []
    assert (tmp_path / "c.json.corrupt").read_text() == "{not json"
    cache.put(_entry())
    assert json.loads(path.read_text())["policies"][0]["domain"] == "example.test"


def test_json_cache_invalid_policy_text_is_set_aside(tmp_path: Path) -> None:
    """A cache entry whose policy no longer parses invalidates the file, not the process."""
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"version": 1, "policies": [
        {"domain": "x.test", "text": "garbage", "txt_id": "1", "fetched_at": 0}]}))
    assert JSONFilePolicyCache(path).get("x.test") is None
    assert (tmp_path / "c.json.corrupt").exists()


def test_cache_expiry() -> None:
    """An entry expires max_age seconds after it was fetched."""
    e = _entry(at=1000.0)
    assert not e.expired(1000.0 + 86399) and e.expired(1000.0 + 86400)


# -- refresh (RFC 8461 §5.1) ---------------------------------------------------------------------

def test_refresh_fetches_even_with_unchanged_id(world: Any) -> None:
    """refresh() fetches again for the same id and restarts max_age."""
    r, f, c, clock, sts = world
    r.add("_mta-sts.example.test", "TXT", [b"v=STSv1; id=1"])
    f.answers["example.test"] = ENFORCE
    _run(sts.lookup("example.test"))
    clock.advance(80000)
    got = _run(sts.refresh("example.test"))
    assert got.enforce and not got.from_cache and len(f.calls) == 2
    assert c.get("example.test").fetched_at == clock.seconds()


def test_refresh_failure_keeps_cache(world: Any) -> None:
    """A failed refresh reports the failure and keeps the cached policy."""
    r, f, c, clock, sts = world
    r.add("_mta-sts.example.test", "TXT", [b"v=STSv1; id=1"])
    f.answers["example.test"] = ENFORCE
    _run(sts.lookup("example.test"))
    f.answers["example.test"] = PolicyFetchError("down")
    got = _run(sts.refresh("example.test"))
    assert got.enforce and got.from_cache and got.failure is ResultType.STS_POLICY_FETCH_ERROR
    assert c.get("example.test").fetched_at == 1_800_000_000


def test_due_for_refresh_orders_and_bounds() -> None:
    """Only policies expiring within refresh_before are due, soonest first, bounded."""
    from mxd.mtasts.refresh import RefreshSettings, due_for_refresh

    entries = [_entry("a.test", at=0.0), _entry("b.test", at=-1000.0), _entry("c.test", at=5e5)]
    settings = RefreshSettings(refresh_before=86400 + 10, max_per_round=5)
    assert due_for_refresh(entries, 20.0, settings) == ["b.test", "a.test"]
    assert due_for_refresh(entries, 20.0, RefreshSettings(refresh_before=86400 + 10,
                                                          max_per_round=1)) == ["b.test"]


def test_refresher_service_runs_on_the_clock(world: Any) -> None:
    """The service refreshes a policy nearing expiry on its interval, and drops an expired
    policy whose TXT record is gone; stopping cancels the timer."""
    from mxd.mtasts.refresh import RefreshSettings, STSRefresher

    r, f, c, clock, sts = world
    r.add("_mta-sts.example.test", "TXT", [b"v=STSv1; id=1"])
    f.answers["example.test"] = ENFORCE
    _run(sts.lookup("example.test"))
    service = STSRefresher(sts, c, clock, RefreshSettings(interval=3600, refresh_before=7200))
    service.startService()
    clock.advance(0)
    assert len(f.calls) == 1  # not due yet
    clock.advance(86400 - 7200)
    assert len(f.calls) == 2  # refreshed within refresh_before of expiry
    r.fail("_mta-sts.example.test", "TXT", "nxdomain")
    for _ in range(30):
        clock.advance(3600)
    assert c.get("example.test") is None
    service.stopService()
    assert not clock.getDelayedCalls()


# -- withdrawal (RFC 8461 §8.3) --------------------------------------------------------------


@pytest.mark.parametrize("text,dns,kept", [
    (NONE, "gone", False),  # mode none, TXT removed: forgotten
    (NONE, "servfail", True),  # a failed lookup is not a removal
    (ENFORCE, "gone", True),  # an enforce policy stays in force until it expires (§5.1)
])
def test_cached_none_policy_removed_when_txt_record_is_gone(world: Any, text: str, dns: str,
                                                            kept: bool) -> None:
    r, f, c, clock, sts = world
    r.add("_mta-sts.example.test", "TXT", [b"v=STSv1; id=1"])
    f.answers["example.test"] = text
    _run(sts.lookup("example.test"))
    assert c.get("example.test") is not None
    r2 = FakeResolver()
    if dns == "servfail":
        r2.fail("_mta-sts.example.test", "TXT", "servfail")
    sts._resolver = r2
    got = _run(sts.lookup("example.test"))
    assert (c.get("example.test") is not None) is kept
    assert (got.policy is not None) is kept


def test_refresher_drops_an_expired_policy_whose_txt_record_is_gone(world: Any) -> None:
    """Regression: refresh() used to report the cached id when the TXT record was gone, so
    the refresher never removed withdrawn, expired entries."""
    from mxd.mtasts.refresh import RefreshSettings, STSRefresher

    r, f, c, clock, sts = world
    r.add("_mta-sts.example.test", "TXT", [b"v=STSv1; id=1"])
    f.answers["example.test"] = ENFORCE
    _run(sts.lookup("example.test"))
    sts._resolver = FakeResolver()
    clock.advance(86400 + 1)
    refresher = STSRefresher(sts, c, clock, RefreshSettings())
    _run(refresher.run_once())
    assert c.get("example.test") is None
