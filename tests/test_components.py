"""Composition helpers of mxd.components run against a real store."""

from __future__ import annotations

from pathlib import Path

from twisted.internet.defer import Deferred

from mxd.components import sync_config_accounts
from mxd.config import Config, parse_config
from mxd.directory.local import DirectorySettings, LocalDirectory
from tests.store.helpers import open_store


def _config(tmp_path: Path, tls_files: dict[str, Path], extra: str) -> Config:
    """A config with the required keys, data in ``tmp_path``, and ``extra`` TOML."""
    return parse_config(f'''hostname = "mx.example.test"
data_dir = "{tmp_path / "data"}"
[tls]
cert = "{tls_files["cert"]}"
key = "{tls_files["key"]}"
[domains]
names = ["example.test"]
''' + extra, "t.toml")


def test_config_accounts_are_created_then_passwd_works(tmp_path: Path,
                                                       tls_files: dict[str, Path]) -> None:
    """``[[accounts]]`` are created at start-up if missing, as doc/config.md says, with
    their addresses and no password: no login works until `mxd account passwd` (here
    ``set_password``) sets one, which then succeeds (it used to say "no account")."""
    cfg = _config(tmp_path, tls_files, '''[[accounts]]
name = "alice"
addresses = ["alice@example.test"]
''')
    h = open_store(tmp_path / "data", inline=True)
    try:
        h.run(Deferred.fromCoroutine(sync_config_accounts(cfg, h.store)))
        acct = h.run(h.store.get_account("alice"))
        assert acct is not None and acct.addresses == ("alice@example.test",)
        d = LocalDirectory(h.store, DirectorySettings(domains=("example.test",), scrypt_n=2**10,
                                                     scram_iterations=4096))
        assert h.run(d.lookup_secrets("alice")) is None
        h.run(d.set_password("alice", "a good password"))
        secrets = h.run(d.lookup_secrets("alice@example.test"))
        assert secrets is not None and secrets.verify_password("a good password")
        h.run(Deferred.fromCoroutine(sync_config_accounts(cfg, h.store)))  # again: no change
        assert h.run(d.lookup_secrets("alice")) is not None
    finally:
        h.close()


class _Reactor:
    def __init__(self) -> None:
        self.stopped = False
        self.triggers: list[tuple[str, str]] = []

    def stop(self) -> None:
        self.stopped = True

    def addSystemEventTrigger(self, phase: str, event: str, *a: object) -> None:
        self.triggers.append((phase, event))


class _SlowStore:
    data_dir = "/nowhere"

    def __init__(self) -> None:
        self.opening: Deferred[None] = Deferred()

    def open(self) -> Deferred[None]:
        return self.opening

    def close(self) -> Deferred[None]:
        from twisted.internet.defer import succeed

        return succeed(None)


def test_stop_during_start_up_is_a_clean_stop() -> None:
    """Ctrl-C while the store is still opening closes it under the open: that is a clean
    stop (no exit status 1, no reactor stop of ours, no critical line), whatever the
    timing.  A store that fails to open while the server runs still stops it with 1."""
    from twisted.logger import LogLevel, globalLogPublisher

    from mxd.components import StoreService
    from mxd.store.writer import StoreClosed

    events: list[dict[str, object]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        reactor, store = _Reactor(), _SlowStore()
        svc = StoreService(store, [], reactor)
        svc.startService()
        svc.stopService()
        store.opening.errback(StoreClosed("the store is closed"))
        assert not reactor.stopped and reactor.triggers == []
        assert not [e for e in events if e.get("log_level") is LogLevel.critical]

        reactor, store = _Reactor(), _SlowStore()
        svc = StoreService(store, [], reactor)
        svc.startService()
        store.opening.errback(OSError("disk gone"))
        assert reactor.stopped and reactor.triggers == [("after", "shutdown")]
    finally:
        globalLogPublisher.removeObserver(events.append)


def test_tls_reporter_signs_the_report_fields(tmp_path: Path, tls_files: dict[str, Path]) -> None:
    """The composed TLS reporter's DKIM signer covers TLS-Report-Domain and
    TLS-Report-Submitter (RFC 8460 §5.3), not just the default header set."""
    from twisted.application.service import MultiService
    from twisted.internet.task import Clock

    from mxd.components import make_tls_reporter
    from mxd.dns.testing import FakeResolver
    from mxd.metrics import NoopMetrics
    from mxd.msgauth.dkimkeys import generate_key
    from mxd.msgauth.signing import KeyRing

    cfg = _config(tmp_path, tls_files, '''[dkim.selectors]
"example.test" = ["s1"]
''')
    key = generate_key(tmp_path / "keys", "example.test", "s1", "rsa")

    class _Queue:
        class store:
            @staticmethod
            def tls_attempts_between(start: float, end: float) -> object:
                raise AssertionError("not called")

    comps = {"queue": _Queue(), "resolver": FakeResolver(),
             "dkim_keyring": KeyRing({"example.test": [key]})}
    reporter = make_tls_reporter(cfg, comps, Clock(), NoopMetrics(), MultiService())
    message = (b"From: postmaster@example.test\r\nTo: r@b.example\r\nSubject: s\r\n"
               b"TLS-Report-Domain: b.example\r\nTLS-Report-Submitter: mx.example.test\r\n"
               b"\r\nbody\r\n")
    signed = reporter.sign(message, 1_000_000.0)
    h = signed.split(b"\th=", 1)[1].split(b";", 1)[0].replace(b"\r\n\t", b"").split(b":")
    assert b"tls-report-domain" in h and b"tls-report-submitter" in h


def test_backfill_runs_in_batches_until_nothing_is_left() -> None:
    """start_backfill asks the store for batches, pausing between them on the clock, and
    fires with the total once a batch comes back empty; a closed store ends it quietly."""
    from twisted.internet import task
    from twisted.internet.defer import fail, succeed

    from mxd.components import BACKFILL_PAUSE, start_backfill
    from mxd.store.writer import StoreClosed

    class Store:
        def __init__(self, batches: list[int]) -> None:
            self.batches = batches
            self.calls = 0

        def backfill_derived(self, limit: int) -> object:
            self.calls += 1
            if not self.batches:
                return fail(StoreClosed("closed"))
            return succeed(self.batches.pop(0))

    clock = task.Clock()
    store = Store([64, 10, 0])
    done: list[int] = []
    start_backfill(store, clock).addCallback(done.append)
    assert store.calls == 1 and done == []
    clock.advance(BACKFILL_PAUSE)
    clock.advance(BACKFILL_PAUSE)
    assert done == [74] and store.calls == 3
    closed = Store([5])
    start_backfill(closed, clock).addCallback(done.append)
    clock.advance(BACKFILL_PAUSE)
    assert done == [74, 5]


def test_auth_back_off_settings_reach_the_login_limiter(tmp_path: Path,
                                                        tls_files: dict[str, Path]) -> None:
    """``[auth] ip_base_delay`` and ``account_base_delay`` set the limiter's first
    back-offs (defaults 2 s and 1 s, doubling up to the max delays)."""
    from twisted.internet.testing import MemoryReactorClock

    from mxd.components import make_sasl
    from mxd.metrics import NoopMetrics

    cfg = _config(tmp_path, tls_files, '''[auth]
ip_free_failures = 1
ip_base_delay = 30.0
account_free_failures = 1
account_base_delay = 20.0
''')
    directory = LocalDirectory(None, DirectorySettings(domains=("example.test",)))  # type: ignore[arg-type]
    sasl = make_sasl(cfg, directory, MemoryReactorClock(), NoopMetrics())
    limiter = sasl._limiter
    for _ in range(2):
        limiter.failure("192.0.2.1", "alice")
    assert limiter.check("192.0.2.1").retry_after == 30.0
    assert limiter.check("198.51.100.1", "alice").retry_after == 20.0
