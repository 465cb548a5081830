"""mxd's resolver against the real loopback DNSSEC lab (nsd + validating unbound)."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from typing import Any

import pytest

from mxd.dns.errors import DNSNoData, DNSNotFound, DNSServFail
from mxd.dns.names import Domain
from mxd.dns.resolver import Nameserver, Resolver, ResolverSettings
from mxd.dns.results import MX, TLSA
from mxd.dns.testing import run_with_reactor
from tests.integration import dnslab
from tests.integration.dnslab import TLSA_SAMPLE, DNSLab, ZoneSpec

dns_lab = dnslab.dns_lab  # the fixtures, visible to this module's tests
dns_lab_factory = dnslab.dns_lab_factory

pytestmark = pytest.mark.integration


def lookup(lab: DNSLab, method: str, name: str, *, trusted: bool = True) -> Any:
    """Run ``Resolver.<method>(name)`` against the lab's unbound."""

    def go(reactor: Any) -> Any:
        return getattr(Resolver(reactor, lab.resolver_settings(trusted)), method)(name)

    return run_with_reactor(go, timeout=15)


def test_signed_name_is_authentic(dns_lab: DNSLab) -> None:
    """An A record in the signed zone answers with authentic=True."""
    answer = lookup(dns_lab, "lookup_a", "mx.example.test")
    assert answer.records == (ipaddress.IPv4Address("127.0.0.1"),)
    assert answer.authentic is True


def test_unsigned_name_is_not_authentic(dns_lab: DNSLab) -> None:
    """An A record in the unsigned zone answers with authentic=False."""
    answer = lookup(dns_lab, "lookup_a", "mx.insecure.test")
    assert answer.records == (ipaddress.IPv4Address("127.0.0.1"),)
    assert answer.authentic is False


def test_bogus_name_is_servfail_with_ede(dns_lab: DNSLab) -> None:
    """A record whose signature fails validation is a SERVFAIL outcome with EDE 6."""
    with pytest.raises(DNSServFail) as info:
        lookup(dns_lab, "lookup_a", "bogus.example.test")
    assert 6 in [e.code for e in info.value.extended_errors]  # RFC 8914 §4.7 DNSSEC Bogus


def test_tlsa_parsed(dns_lab: DNSLab) -> None:
    """TLSA records parse into usage, selector, matching type and data, authentic."""
    answer = lookup(dns_lab, "lookup_tlsa", "_25._tcp.mx.example.test")
    usage, selector, mtype, data = TLSA_SAMPLE.split()
    assert answer.records == (TLSA(int(usage), int(selector), int(mtype), bytes.fromhex(data)),)
    assert answer.authentic is True


def test_mx_and_txt(dns_lab: DNSLab) -> None:
    """MX gives (preference, Domain); TXT joins a record's strings into one bytes value."""
    mx = lookup(dns_lab, "lookup_mx", "example.test")
    assert mx.records == (MX(10, Domain.parse("mx.example.test")),)
    txt = lookup(dns_lab, "lookup_txt", "long.example.test")
    assert txt.records == (b"first part second part",)


def test_authentic_nxdomain(dns_lab: DNSLab) -> None:
    """A missing name in the signed zone is an authentic NXDOMAIN."""
    with pytest.raises(DNSNotFound) as info:
        lookup(dns_lab, "lookup_a", "nope.example.test")
    assert info.value.authentic is True


def test_authentic_nodata_and_insecure_nodata(dns_lab: DNSLab) -> None:
    """No-data is authentic in the signed zone and not authentic in the unsigned one."""
    with pytest.raises(DNSNoData) as signed:
        lookup(dns_lab, "lookup_tlsa", "nodata.example.test")
    with pytest.raises(DNSNotFound) as unsigned:
        lookup(dns_lab, "lookup_a", "nope.insecure.test")
    with pytest.raises(DNSNoData) as unsigned_nodata:
        lookup(dns_lab, "lookup_aaaa", "mx.insecure.test")
    assert signed.value.authentic is True
    assert unsigned.value.authentic is False
    assert unsigned_nodata.value.authentic is False


def test_cname_chain_canonical_name(dns_lab: DNSLab) -> None:
    """A CNAME chain is followed; canonical_name is the end of the chain."""
    answer = lookup(dns_lab, "lookup_a", "alias.example.test")
    assert answer.canonical_name == Domain.parse("mx.example.test")
    assert answer.records == (ipaddress.IPv4Address("127.0.0.1"),)
    assert answer.authentic is True


def test_ptr(dns_lab: DNSLab) -> None:
    """PTR of an IP address is looked up in the reverse zone."""
    answer = lookup(dns_lab, "lookup_ptr", "192.0.2.1")
    assert answer.records == (Domain.parse("mx.example.test"),)
    assert answer.authentic is True


def test_untrusted_nameserver_ad_ignored(dns_lab: DNSLab) -> None:
    """The same validating unbound listed as not trusted never yields authentic answers."""
    host, port = dns_lab.resolver_address

    def go(reactor: Any) -> Any:
        settings = ResolverSettings(
            nameservers=(Nameserver(host, port, trusted=False),), timeout=2.0)
        return Resolver(reactor, settings).lookup_a("mx.example.test")

    answer = run_with_reactor(go, timeout=15)
    assert answer.records == (ipaddress.IPv4Address("127.0.0.1"),)
    assert answer.authentic is False


def test_untrusted_nxdomain_not_authentic(dns_lab: DNSLab) -> None:
    """An NXDOMAIN from an untrusted nameserver is reported as not authentic."""
    with pytest.raises(DNSNotFound) as info:
        lookup(dns_lab, "lookup_a", "nope.example.test", trusted=False)
    assert info.value.authentic is False


def test_custom_zones_from_factory(dns_lab_factory: Any) -> None:
    """The factory serves caller-defined signed, unsigned and bogus records."""
    lab = dns_lab_factory({
        "mail.test": ZoneSpec(records=["@ MX 5 mx", "mx A 127.0.0.9"],
                              bogus=["bad TXT \"x\""]),
        "plain.test": ZoneSpec(records=["@ TXT \"v=spf1 -all\""], signed=False),
    })
    mx = lookup(lab, "lookup_mx", "mail.test")
    assert mx.records == (MX(5, Domain.parse("mx.mail.test")),) and mx.authentic
    txt = lookup(lab, "lookup_txt", "plain.test")
    assert txt.records == (b"v=spf1 -all",) and not txt.authentic
    with pytest.raises(DNSServFail):
        lookup(lab, "lookup_txt", "bad.mail.test")


def _cli(lab: DNSLab, *argv: str) -> subprocess.CompletedProcess[str]:
    """``mxd dns lookup ARGV --server <lab unbound>`` through the project's CLI."""
    host, port = lab.resolver_address
    return subprocess.run(
        [sys.executable, "-m", "mxd.cli", "dns", "lookup", *argv, "--server", f"{host}:{port}"],
        capture_output=True, text=True, timeout=30,
    )


def test_cli_answer(dns_lab: DNSLab) -> None:
    """The CLI prints records and authenticity and exits 0 on an answer."""
    proc = _cli(dns_lab, "TLSA", "_25._tcp.mx.example.test")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "authentic: yes" in proc.stdout
    assert f"record: {TLSA_SAMPLE}" in proc.stdout


def test_cli_cname_and_nxdomain(dns_lab: DNSLab) -> None:
    """The CLI prints the canonical name; NXDOMAIN exits 1 and says authentic."""
    proc = _cli(dns_lab, "A", "www.example.test")
    assert proc.returncode == 0 and "canonical-name: mx.example.test" in proc.stdout
    proc = _cli(dns_lab, "A", "nope.example.test")
    assert proc.returncode == 1
    assert "status: NXDOMAIN" in proc.stdout and "authentic: yes" in proc.stdout


def test_cli_bogus_prints_ede(dns_lab: DNSLab) -> None:
    """A bogus name exits 2 and prints the extended DNS error."""
    proc = _cli(dns_lab, "A", "bogus.example.test")
    assert proc.returncode == 2
    assert "status: SERVFAIL" in proc.stdout
    assert "extended-error: EDE 6 (DNSSEC Bogus)" in proc.stdout


def test_port53_resolv_conf_for_third_party_tools(tmp_path: Any) -> None:
    """With port53=True, a program reading /etc/resolv.conf (dig) resolves through the lab
    inside ``wrap`` and sees the AD flag."""
    dig = dnslab.require_tool("dig")
    with DNSLab(tmp_path / "lab53") as lab:
        lab.start({"example.test": ZoneSpec(records=["mx A 127.0.0.1"])}, port53=True)
        proc = subprocess.run(lab.wrap([dig, "+time=2", "+tries=1", "mx.example.test", "A"]),
                              capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "127.0.0.1" in proc.stdout and " ad" in proc.stdout.split("flags:")[1].split(";")[0]
    assert f"SERVER: {lab.port53_address}#53" in proc.stdout
