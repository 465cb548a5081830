"""Keeps a CA-issued certificate in place for every name and host key (RFC 8555).

For each (name, host key) the service orders a certificate when none is in place, and
renews it once 2/3 of its lifetime has passed.  Orders run one at a time in a worker thread
(``run_in_thread``), since the ``acme`` library blocks.  A failure is logged with the
CA's reason and retried with doubling back-off (rate limits, a CA outage, a name that does
not resolve yet); the old certificate — or the self-signed one on the same key — stays in
use until a new one is completely in place, so no listener is ever without a certificate.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.application import service
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from mxd.acme.schedule import renew_at, retry_delay
from mxd.certs import CertifiedKey, CertStore, parse_pem_chain, spki_sha256_of_cert
from mxd.hostkeys import HostKey

log = Logger(namespace="mxd.acme")


@attrs.frozen
class RenewalSettings:
    renew_fraction: float = 2 / 3
    retry_min: float = 60.0
    retry_max: float = 6 * 3600.0


class StoreProvisioner:
    """Challenge answers go to the HTTP-01 responder and the certificate store (both
    lock-protected, so the worker thread may call these directly)."""

    def __init__(self, store: CertStore, http01: Any) -> None:
        self.store = store
        self.http01 = http01

    def add_http01(self, token: str, key_authorization: str) -> None:
        self.http01.add(token, key_authorization)

    def remove_http01(self, token: str) -> None:
        self.http01.remove(token)

    def add_tlsalpn01(self, name: str, key_authorization: str) -> None:
        """RFC 8737 §3: a validation certificate on each host key (RSA signing: this runs
        in the worker thread)."""
        from mxd.acme.tlsalpn import challenge_certificate

        self.store.set_challenge(name, [
            (challenge_certificate(name, key_authorization, hk.key), hk.key)
            for hk in self.store.host_keys])

    def remove_tlsalpn01(self, name: str) -> None:
        self.store.clear_challenge(name)


class ACMEService(service.Service):
    """Orders and renews certificates; ``client.order(name, host_key, provisioner)``
    (blocking) returns a PEM chain or raises."""

    name = "acme"

    def __init__(self, store: CertStore, names: Sequence[str], host_keys: Sequence[HostKey],
                 client: Any, provisioner: Any, clock: Any,
                 run_in_thread: Callable[[Callable[[], bytes]], Deferred[bytes]],
                 settings: RenewalSettings = RenewalSettings()) -> None:
        self.store = store
        self.names = tuple(names)
        self.host_keys = tuple(host_keys)
        self.client = client
        self.provisioner = provisioner
        self.clock = clock
        self.run_in_thread = run_in_thread
        self.settings = settings
        self.failures: dict[tuple[str, str], int] = {}
        self.timers: dict[tuple[str, str], Any] = {}  # IDelayedCall
        self._queue: list[tuple[str, HostKey]] = []
        self._busy = False
        self.last_error: dict[tuple[str, str], str] = {}

    def _now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.UTC)

    def startService(self) -> None:
        super().startService()
        for name in self.names:
            for hk in self.host_keys:
                self._plan(name, hk)

    def stopService(self) -> Any:
        super().stopService()
        for t in self.timers.values():
            if t.active():
                t.cancel()
        self.timers.clear()
        self._queue.clear()
        return None

    def renew_now(self, name: str | None = None) -> None:
        """Order now (all names, or one), whatever the current certificate's age."""
        for n in self.names:
            if name is None or n == name:
                for hk in self.host_keys:
                    self._enqueue(n, hk)

    def _key(self, name: str, hk: HostKey) -> tuple[str, str]:
        return (name, hk.kind.value)

    def _plan(self, name: str, hk: HostKey) -> None:
        current = self.store.get(name, hk.kind)
        if current is None:
            self._enqueue(name, hk)
            return
        when = renew_at(current.not_before, current.not_after, self.settings.renew_fraction)
        delay = max(0.0, (when - self._now()).total_seconds())
        self._later(name, hk, delay)

    def _later(self, name: str, hk: HostKey, delay: float) -> None:
        key = self._key(name, hk)
        old = self.timers.pop(key, None)
        if old is not None and old.active():
            old.cancel()
        self.timers[key] = self.clock.callLater(delay, self._enqueue, name, hk)

    def _enqueue(self, name: str, hk: HostKey) -> None:
        if not self.running:
            return
        if (name, hk) not in self._queue:
            self._queue.append((name, hk))
        self._next()

    def _next(self) -> None:
        if self._busy or not self._queue or not self.running:
            return
        name, hk = self._queue.pop(0)
        self._busy = True
        log.info("ACME: ordering a certificate for {name} ({kind} host key)", name=name,
                 kind=hk.kind.value)
        d = self.run_in_thread(lambda: self.client.order(name, hk, self.provisioner))
        d.addCallback(self._got, name, hk)
        d.addErrback(self._failed, name, hk)
        d.addBoth(self._done)

    def _done(self, _: Any) -> None:
        self._busy = False
        self._next()

    def _got(self, pem: bytes, name: str, hk: HostKey) -> None:
        chain = parse_pem_chain(pem)
        if spki_sha256_of_cert(chain[0]) != hk.spki_sha256:
            raise ValueError("the CA returned a certificate for another key")
        certified = CertifiedKey(chain, hk.key, hk.kind)
        self.store.install(name, certified)
        key = self._key(name, hk)
        self.failures.pop(key, None)
        self.last_error.pop(key, None)
        log.info("ACME: new certificate for {name} ({kind}), valid until {not_after}",
                 name=name, kind=hk.kind.value, not_after=certified.not_after.isoformat())
        if self.running:
            self._plan(name, hk)

    def _failed(self, f: Any, name: str, hk: HostKey) -> None:
        key = self._key(name, hk)
        n = self.failures.get(key, 0) + 1
        self.failures[key] = n
        self.last_error[key] = f.getErrorMessage()
        current = self.store.get(name, hk.kind)
        delay = retry_delay(n, self.settings.retry_min, self.settings.retry_max, self._now(),
                            current.not_after if current else None)
        log.error("ACME: {error}; the {what} stays in use; retry {n} in {delay:.0f} s",
                  error=f.getErrorMessage(), n=n, delay=delay,
                  what="current certificate" if current else "self-signed certificate")
        if self.running:
            self._later(name, hk, delay)
