"""Client autoconfiguration documents (Thunderbird autoconfig, Microsoft POX autodiscover)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mxd.autoconfig import (
    AutoconfigError,
    ClientSettings,
    Endpoint,
    autodiscover_email,
    autodiscover_xml,
    thunderbird_xml,
)

SETTINGS = ClientSettings("example.test", "Mail at example.test",
                          (Endpoint("mx.example.test", 993, "SSL"),
                           Endpoint("mx.example.test", 143, "STARTTLS")),
                          (Endpoint("mx.example.test", 465, "SSL"),))


def test_thunderbird_document_lists_tls_endpoints_only():
    root = ET.fromstring(thunderbird_xml(SETTINGS))
    assert root.tag == "clientConfig" and root.get("version") == "1.1"
    provider = root.find("emailProvider")
    assert provider.get("id") == "example.test"
    incoming = provider.findall("incomingServer")
    assert [(s.findtext("port"), s.findtext("socketType")) for s in incoming] == [
        ("993", "SSL"), ("143", "STARTTLS")]
    (out,) = provider.findall("outgoingServer")
    assert out.get("type") == "smtp" and out.findtext("socketType") == "SSL"
    assert out.findtext("username") == "%EMAILADDRESS%"


REQUEST = b"""<?xml version="1.0" encoding="utf-8"?>
<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006">
  <Request><EMailAddress>you@example.test</EMailAddress>
  <AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a</AcceptableResponseSchema>
  </Request></Autodiscover>"""


def test_autodiscover_round_trip():
    email = autodiscover_email(REQUEST)
    assert email == "you@example.test"
    root = ET.fromstring(autodiscover_xml(SETTINGS, email))
    ns = {"a": "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"}
    protos = root.findall(".//a:Protocol", ns)
    assert [(p.findtext("a:Type", namespaces=ns), p.findtext("a:Port", namespaces=ns),
             p.findtext("a:SSL", namespaces=ns)) for p in protos] == [
        ("IMAP", "993", "on"), ("IMAP", "143", "off"), ("SMTP", "465", "on")]
    assert protos[0].findtext("a:LoginName", namespaces=ns) == "you@example.test"


@pytest.mark.parametrize("body,problem", [
    (b"<!DOCTYPE x [<!ENTITY a 'b'>]><x>&a;</x>", "DTD"),
    (b"<x>", "not XML"),
    (b"<x><EMailAddress>nobody</EMailAddress></x>", "no EMailAddress"),
    (b"<x>" + b"a" * 70000 + b"</x>", "too large"),
])
def test_bad_requests_are_refused(body, problem):
    with pytest.raises(AutoconfigError, match=problem):
        autodiscover_email(body)


@given(st.binary(max_size=300))
def test_any_bytes_give_an_address_or_autoconfig_error(body):
    try:
        assert "@" in autodiscover_email(body)
    except AutoconfigError:
        pass


def test_document_is_valid_against_the_documented_schema():
    """tests/data/autoconfig-v1.1.xsd transcribes Mozilla's documented format."""
    from pathlib import Path

    etree = pytest.importorskip("lxml.etree")
    schema = etree.XMLSchema(etree.parse(str(Path(__file__).parent / "data" /
                                             "autoconfig-v1.1.xsd")))
    assert schema.validate(etree.fromstring(thunderbird_xml(SETTINGS).encode()))
    bad = thunderbird_xml(SETTINGS).replace("<socketType>SSL", "<socketType>TLS")
    assert not schema.validate(etree.fromstring(bad.encode()))
