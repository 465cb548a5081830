"""Inbound DANE at start-up: our TLSA records against the certificates we serve, with a loud
log line when DANE senders would defer our mail."""

from __future__ import annotations

import pytest
from twisted.logger import LogLevel, globalLogPublisher

from mxd.certs import CertStore, names_for
from mxd.dane_inbound import InboundDANECheck, InboundStatus, check
from mxd.dns.testing import FakeResolver, run_with_reactor
from tests.golive_helpers import NOW, host_keys

TLSA = "_25._tcp.mx.example.test"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("inbound")
    return CertStore(names_for("mx.example.test", ["example.test"]), host_keys(d),
                     d / "certs", now=NOW)


def _resolver(records, authentic=True):
    r = FakeResolver(default_authentic=authentic)
    if records is None:
        r.fail(TLSA, "TLSA", "nodata", authentic=authentic)
    elif records == "servfail":
        r.fail(TLSA, "TLSA", "servfail")
    else:
        r.add(TLSA, "TLSA", records, authentic=authentic)
    return r


def _ours(store):
    return [f"3 1 1 {k.spki_sha256.hex()}" for k in store.host_keys]


@pytest.mark.parametrize("case,status", [
    ("both", InboundStatus.OK),
    ("rsa-only", InboundStatus.PARTIAL),
    ("wrong", InboundStatus.MISMATCH),
    ("none", InboundStatus.NO_RECORDS),
    ("unsigned", InboundStatus.INSECURE),
    ("servfail", InboundStatus.LOOKUP_FAILED),
])
def test_status_table(store, case, status):
    records = {"both": _ours(store), "rsa-only": _ours(store)[:1],
               "wrong": ["3 1 1 " + "00" * 32], "none": None, "unsigned": _ours(store),
               "servfail": "servfail"}[case]
    resolver = _resolver(records, authentic=case != "unsigned")
    result = run_with_reactor(lambda reactor: check(resolver, store, "mx.example.test"),
                              timeout=10)
    assert result.status is status
    if case == "rsa-only":
        assert result.unmatched == ("ecdsap256",)


def test_startup_check_logs_critical_on_mismatch(store):
    """A mismatch is logged at critical level naming the fix."""
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        svc = InboundDANECheck(_resolver(["3 1 1 " + "00" * 32]), store, "mx.example.test")
        svc.startService()
        assert svc.result is not None and svc.result.called
    finally:
        globalLogPublisher.removeObserver(events.append)
    loud = [e for e in events if e.get("log_namespace") == "mxd.dane_inbound"]
    assert loud and loud[0]["log_level"] is LogLevel.critical
    assert "will defer mail" in loud[0]["log_format"]
