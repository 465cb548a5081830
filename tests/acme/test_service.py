"""The renewal service on a task.Clock with a fake CA: first order at start, renewal at 2/3
of the lifetime, back-off on errors, and the old certificate kept until a new one is in."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import task
from twisted.internet.defer import fail, succeed

from mxd.acme.client import ACMEError
from mxd.acme.service import ACMEService, RenewalSettings
from mxd.certs import CertStore
from mxd.hostkeys import KeyKind
from tests.golive_helpers import NOW, host_keys

DAY = 86400.0


class FakeCA:
    """Signs CSR-less orders for the host key with a fixed lifetime; can be made to fail."""

    def __init__(self, clock: task.Clock, lifetime_days: float = 90) -> None:
        self.clock = clock
        self.lifetime = lifetime_days
        self.failing: Exception | None = None
        self.orders: list[tuple[str, str, float]] = []
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        self.other_key = False

    def order(self, name, hk, provisioner):
        self.orders.append((name, hk.kind.value, self.clock.seconds()))
        if self.failing is not None:
            raise self.failing
        now = datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.UTC)
        issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Fake CA")])
        pub = ec.generate_private_key(ec.SECP256R1()).public_key() if self.other_key \
            else hk.key.public_key()
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                .issuer_name(issuer).public_key(pub)
                .serial_number(len(self.orders)).not_valid_before(now)
                .not_valid_after(now + datetime.timedelta(days=self.lifetime))
                .sign(self.ca_key, hashes.SHA256()))
        return cert.public_bytes(serialization.Encoding.PEM)


def _sync(f):
    try:
        return succeed(f())
    except Exception as e:
        return fail(e)


@pytest.fixture
def setup(tmp_path):
    keys = host_keys(tmp_path)[1:]  # the ECDSA key is enough here
    clock = task.Clock()
    clock.advance(NOW.timestamp())
    store = CertStore(["mx.example.test"], keys, tmp_path / "certs", now=NOW)
    ca = FakeCA(clock)
    svc = ACMEService(store, ["mx.example.test"], keys, ca, None, clock, _sync,
                      RenewalSettings(2 / 3, 60, 3600))
    return svc, store, ca, clock, keys[0]


def test_orders_at_start_and_renews_at_two_thirds(setup):
    svc, store, ca, clock, hk = setup
    svc.startService()
    assert len(ca.orders) == 1
    first = store.get("mx.example.test", KeyKind.ECDSAP256)
    assert first is not None and not first.self_signed
    clock.advance(59.9 * DAY)
    assert len(ca.orders) == 1
    clock.advance(0.2 * DAY)
    assert len(ca.orders) == 2
    second = store.get("mx.example.test", KeyKind.ECDSAP256)
    assert second.leaf.serial_number != first.leaf.serial_number
    assert second.leaf.public_key().public_numbers() == hk.key.public_key().public_numbers()


def test_errors_back_off_and_keep_the_old_certificate(setup):
    svc, store, ca, clock, _ = setup
    svc.startService()
    first = store.get("mx.example.test", KeyKind.ECDSAP256)
    ca.failing = ACMEError("rateLimited: too many certificates")
    clock.advance(60 * DAY)  # renewal due: fails
    for _ in range(40 * 5):
        clock.advance(30)
    times = [t for _, _, t in ca.orders[1:]]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert gaps[:4] == [60, 120, 240, 480]
    assert store.get("mx.example.test", KeyKind.ECDSAP256) == first
    assert "rateLimited" in svc.last_error[("mx.example.test", "ecdsap256")]
    ca.failing = None
    clock.advance(3600)
    assert store.get("mx.example.test", KeyKind.ECDSAP256) != first
    assert ("mx.example.test", "ecdsap256") not in svc.failures


def test_a_certificate_for_another_key_is_refused(setup):
    """If the CA answered with a certificate for a different key, TLSA would break: the
    service refuses it and keeps serving the self-signed certificate on the host key."""
    svc, store, ca, clock, _ = setup
    ca.other_key = True
    svc.startService()
    assert store.get("mx.example.test", KeyKind.ECDSAP256) is None
    assert "another key" in svc.last_error[("mx.example.test", "ecdsap256")]


def test_stop_cancels_timers(setup):
    svc, _, ca, clock, _ = setup
    svc.startService()
    svc.stopService()
    clock.advance(100 * DAY)
    assert len(ca.orders) == 1
    assert not clock.getDelayedCalls()
