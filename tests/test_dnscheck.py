"""`mxd dns check` on a table resolver: all OK when DNS holds what mxd asks for; each broken
record makes exactly its own check fail, naming the fix."""

from __future__ import annotations

import datetime
from collections import defaultdict

import pytest
from cryptography.hazmat.primitives import serialization

from mxd.certs import CertStore, names_for
from mxd.dane_inbound import served_chains
from mxd.dns.testing import FakeResolver, run_with_reactor
from mxd.dnscheck import DNSSEC, Checker, Status, exit_status
from mxd.dnsrecords import records
from tests.golive_helpers import NOW, host_keys, inputs

POLICY = "version: STSv1\r\nmode: enforce\r\nmx: mx.example.test\r\nmax_age: 604800\r\n"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("check")
    keys = host_keys(d)
    store = CertStore(names_for("mx.example.test", ["example.test"]), keys, d / "certs", now=NOW)
    return keys, served_chains(store, "mx.example.test")


def _resolver(recs, authentic=True, override=None):
    r = FakeResolver(default_authentic=authentic)
    table = defaultdict(list)
    for rec in recs:
        if rec.rtype == "CNAME":
            r.add_cname(rec.name, rec.value.rstrip("."), authentic=authentic)
            continue
        table[(rec.name, rec.rtype)].append(rec.value)
    table[("example.test", "SOA")] = ["ns1.example.test. h.example.test. 1 3600 900 604800 300"]
    for k, v in (override or {}).items():
        table[k] = v
    for (name, rtype), values in table.items():
        if values:
            r.add(name, rtype, values, authentic=authentic)
        else:
            r.fail(name, rtype, "nodata", authentic=authentic)
    return r


def _run(world, override=None, authentic=True, **kw):
    keys, served = world
    x = inputs(keys, **kw)

    async def fetch(domain):
        return POLICY

    checker = Checker(_resolver(records(x), authentic, override), x, served, fetch,
                      sts_policy_text=POLICY, now=NOW)
    return run_with_reactor(lambda reactor: checker.run(), timeout=10)


def _failing(results):
    return sorted({r.name for r in results if r.status is not Status.OK})


def test_all_ok_when_dns_holds_the_suggested_records(world):
    results = _run(world, sts_id="ABC123")
    assert _failing(results) == [], [r.line() for r in results]
    assert exit_status(results) == 0
    assert all(r.dnssec in (DNSSEC.SECURE, DNSSEC.UNKNOWN) for r in results)
    assert {r.name for r in results} >= {"dnssec", "mx", "address", "iprev", "spf", "dkim",
                                         "dmarc", "mta-sts", "mta-sts-policy", "tlsrpt",
                                         "tlsrpt-host", "tlsa", "caa", "srv", "autoconfig"}


BROKEN = [
    ("tlsa", {("_25._tcp.mx.example.test", "TLSA"): ["3 1 1 " + "00" * 32]}),
    ("spf", {("example.test", "TXT"): ['"v=spf1 ip4:198.51.100.1 -all"']}),
    ("mta-sts", {("_mta-sts.example.test", "TXT"): ['"v=STSv1; id=OLD1"']}),
    ("dmarc", {("_dmarc.example.test", "TXT"): ['"v=DMARC1; p=bogus"']}),
    ("dmarc", {("_dmarc.example.test", "TXT"): []}),
    ("mx", {("example.test", "MX"): ["10 other.example.test."]}),
    ("dkim", {("sel1._domainkey.example.test", "TXT"): ['"v=DKIM1; k=ed25519; p=BBBB"']}),
    ("dkim", {("sel1._domainkey.example.test", "TXT"): [
        '"v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="']}),
]


@pytest.mark.parametrize("check,override", BROKEN,
                         ids=[f"{c}-{i}" for i, (c, _) in enumerate(BROKEN)])
def test_a_broken_record_fails_exactly_its_check(world, check, override):
    results = _run(world, override)
    assert _failing(results) == [check], [r.line() for r in results]
    (bad,) = [r for r in results if r.name == check]
    assert bad.status is Status.ERROR and bad.fix.startswith("publish:")
    assert exit_status(results) == 1


def test_tlsa_matching_only_one_key_is_an_error(world):
    keys, _ = world
    rec = f"3 1 1 {keys[1].spki_sha256.hex()}"
    results = _run(world, {("_25._tcp.mx.example.test", "TLSA"): [rec]})
    (t,) = [r for r in results if r.name == "tlsa"]
    assert t.status is Status.ERROR and "rsa2048" in t.detail


def test_unsigned_zone_is_reported_per_check(world):
    """Without DNSSEC the dnssec and tlsa checks fail, and every result says insecure."""
    results = _run(world, authentic=False)
    assert {"dnssec", "tlsa"} <= set(_failing(results))
    assert {r.dnssec for r in results if r.name in ("mx", "spf", "dmarc")} == {DNSSEC.INSECURE}


def test_served_chains_are_der(world):
    _, served = world
    assert [k for k, _ in served] == ["rsa2048", "ecdsap256"]
    from cryptography import x509

    for _, chain in served:
        x509.load_der_x509_certificate(chain[0])
    assert serialization.Encoding.DER
    assert isinstance(NOW, datetime.datetime)


def test_spf_must_allow_the_socks5_transport_addresses(world):
    """An SPF record with only the server's own address fails when mail also leaves through
    a SOCKS5 proxy whose public address it does not allow."""
    keys, served = world
    x = inputs(keys, extra_spf_ips=("198.51.100.7",))
    own_only = records(inputs(keys))

    async def fetch(domain):
        return POLICY

    checker = Checker(_resolver(own_only), x, served, fetch, sts_policy_text=POLICY, now=NOW)
    results = run_with_reactor(lambda reactor: checker.run(), timeout=10)
    (spf,) = [r for r in results if r.name == "spf"]
    assert spf.status is Status.ERROR and "198.51.100.7" in spf.detail
    assert "ip4:198.51.100.7" in spf.fix


def test_prepublished_next_key_tlsa_is_a_warning_not_an_error(world):
    """During a rollover the next keys' TLSA records sit beside ours: still usable for the
    keys in use, so a WARN that names the rollover, not an ERROR."""
    keys, _ = world
    ours = [f"3 1 1 {k.spki_sha256.hex()}" for k in keys]
    results = _run(world, {("_25._tcp.mx.example.test", "TLSA"): [*ours, "3 1 1 " + "cd" * 32]})
    (t,) = [r for r in results if r.name == "tlsa"]
    assert t.status is Status.WARN and "mxd hostkeys next" in t.fix
    assert exit_status(results) == 0


@pytest.mark.parametrize("records,status", [
    ({("example.test", "TXT"): ['"v=spf1 include:_spf.example.test -all"'],
      ("_spf.example.test", "TXT"): ['"v=spf1 ip4:192.0.2.0/24 -all"']}, Status.OK),
    ({("example.test", "TXT"): ['"v=spf1 a:mx.example.test ~all"']}, Status.OK),
    ({("example.test", "TXT"): ['"v=spf1 ip4:192.0.2.10 ?all"']}, Status.WARN),
    ({("example.test", "TXT"): ['"v=spf1 +all"']}, Status.WARN),
    ({("example.test", "TXT"): ['"v=spf1 include:nowhere.example.test -all"']}, Status.ERROR),
])
def test_spf_is_evaluated_by_the_rfc7208_implementation(world, records, status):
    """include:, a: and the all qualifier go through mxd.msgauth.spf's check_host."""
    results = _run(world, records)
    (spf,) = [r for r in results if r.name == "spf"]
    assert spf.status is status, spf.line()
