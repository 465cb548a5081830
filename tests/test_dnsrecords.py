"""The records mxd asks for: one per purpose, in zone-file syntax, with the RFC's values."""

from __future__ import annotations

import dns.rdata
import dns.rdataclass
import dns.rdatatype
import pytest

from mxd.dnsrecords import caa_value, records, render, spf_text, txt_value
from tests.golive_helpers import host_keys, inputs


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return host_keys(tmp_path_factory.mktemp("keys"))


def _by(recs, purpose):
    return [r for r in recs if r.purpose == purpose]


def test_every_record_is_valid_zone_file_rdata(keys):
    """dnspython parses every value as its type (what nsd will load)."""
    for r in records(inputs(keys)):
        dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(r.rtype), r.value,
                            origin=dns.name.root)


@pytest.mark.parametrize("purpose,name,rtype,value", [
    ("mx", "example.test", "MX", "10 mx.example.test."),
    ("address", "mx.example.test", "A", "192.0.2.10"),
    ("iprev", "10.2.0.192.in-addr.arpa", "PTR", "mx.example.test."),
    ("spf", "example.test", "TXT", '"v=spf1 ip4:192.0.2.10 -all"'),
    ("dmarc", "_dmarc.example.test", "TXT",
     '"v=DMARC1; p=reject; rua=mailto:dmarc@example.test"'),
    ("mta-sts", "_mta-sts.example.test", "TXT", '"v=STSv1; id=ABC123"'),
    ("mta-sts-host", "mta-sts.example.test", "CNAME", "mx.example.test."),
    ("tlsrpt", "_smtp._tls.example.test", "TXT", '"v=TLSRPTv1; rua=mailto:tls@example.test"'),
    ("tlsrpt-host", "_smtp._tls.mx.example.test", "TXT",
     '"v=TLSRPTv1; rua=mailto:tls@example.test"'),
    ("caa", "example.test", "CAA", '0 issue "letsencrypt.org; accounturi=https://ca.test/acct/1"'),
    ("autoconfig", "autoconfig.example.test", "CNAME", "mx.example.test."),
    ("autodiscover", "_autodiscover._tcp.example.test", "SRV", "0 1 443 mx.example.test."),
])
def test_record_table(keys, purpose, name, rtype, value):
    (r,) = _by(records(inputs(keys)), purpose)
    assert (r.name, r.rtype, r.value) == (name, rtype, value)
    assert r.explanation


def test_tlsa_3_1_1_for_both_host_keys_with_rollover_advice(keys):
    """RFC 7672 §3.1.1: one DANE-EE SPKI SHA-256 record per host key."""
    tlsa = _by(records(inputs(keys)), "tlsa")
    assert [r.value for r in tlsa] == [f"3 1 1 {k.spki_sha256.hex()}" for k in keys]
    assert all(r.name == "_25._tcp.mx.example.test" for r in tlsa)
    assert "publish the new key's TLSA record first" in tlsa[0].explanation


def test_srv_records_rfc6186(keys):
    """Offered services point at the host; services not offered get target "."."""
    srv = {r.name: r.value for r in _by(records(inputs(keys, imap_port=None,
                                                       submission_port=587)), "srv")}
    assert srv["_submissions._tcp.example.test"] == "0 1 465 mx.example.test."
    assert srv["_imaps._tcp.example.test"] == "0 1 993 mx.example.test."
    assert srv["_submission._tcp.example.test"] == "10 1 587 mx.example.test."
    assert srv["_imap._tcp.example.test"] == "0 0 0 ."


def test_spf_allows_socks5_transport_addresses():
    assert spf_text(["192.0.2.10", "2001:db8::1"]) == "v=spf1 ip4:192.0.2.10 ip6:2001:db8::1 -all"


def test_spf_includes_extra_ips(keys):
    (r,) = _by(records(inputs(keys, extra_spf_ips=("198.51.100.7",))), "spf")
    assert "ip4:198.51.100.7" in r.value


def test_caa_without_account_says_when_it_comes(keys):
    (r,) = _by(records(inputs(keys, acme_account_uri=None)), "caa")
    assert r.value == '0 issue "letsencrypt.org"'
    assert "run `mxd dns records` again" in r.explanation
    assert caa_value("ca.test", "u") == '0 issue "ca.test; accounturi=u"'


def test_long_txt_values_are_split_into_255_octet_strings():
    v = txt_value("x" * 600)
    parts = v.split(" ")
    assert [len(p) - 2 for p in parts] == [255, 255, 90]


def test_render_has_every_record_and_the_policy(keys):
    i = inputs(keys)
    text = render(records(i), i)
    for r in records(i):
        assert r.zone_line() in text
    assert ";   mode: enforce" in text


def test_host_tlsrpt_address_for_the_mx_host_record(keys):
    """HostTLSRPT ([tlsrpt] host_address): _smtp._tls.<host> names its own address, the
    domain's record keeps the domain's."""
    recs = records(inputs(keys, tlsrpt_host_rua="host-reports@example.test"))
    (dom,) = _by(recs, "tlsrpt")
    (host,) = _by(recs, "tlsrpt-host")
    assert "mailto:host-reports@example.test" in host.value
    assert "host-reports" not in dom.value
