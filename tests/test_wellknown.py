"""The public web endpoints: MTA-STS policy only on mta-sts.<our domain>, autoconfig by
host or address, POX autodiscover, HTTP-01 answers and the redirect to https."""

from __future__ import annotations

import io

import pytest
from twisted.web.test.requesthelper import DummyRequest

from mxd.autoconfig import ClientSettings, Endpoint
from mxd.wellknown import HTTP01Responder, PlainSite, PublicSite

POLICY = "version: STSv1\r\nmode: enforce\r\nmx: mx.example.test\r\nmax_age: 604800\r\n"
SETTINGS = ClientSettings("example.test", "Mail", (Endpoint("mx.example.test", 993, "SSL"),),
                          (Endpoint("mx.example.test", 465, "SSL"),))


def _get(site, path: bytes, host: bytes, method: bytes = b"GET", body: bytes = b"",
         args: dict | None = None):
    req = DummyRequest(path.lstrip(b"/").split(b"/"))
    req.path = path
    req.uri = path
    req.method = method
    req.requestHeaders.setRawHeaders(b"host", [host])
    req.args = args or {}
    req.content = io.BytesIO(body)
    out = site.render(req)
    return req.responseCode or 200, out, req


@pytest.fixture
def public():
    return PublicSite(["example.test"], lambda: POLICY, lambda d: SETTINGS)


@pytest.mark.parametrize("host,code", [
    (b"mta-sts.example.test", 200), (b"mta-sts.example.test:8443", 200),
    (b"MTA-STS.Example.Test.", 200), (b"mx.example.test", 404),
    (b"mta-sts.other.test", 404), (b"", 404)])
def test_policy_only_on_the_policy_host(public, host, code):
    status, body, req = _get(public, b"/.well-known/mta-sts.txt", host)
    assert status == code
    if code == 200:
        assert body.decode() == POLICY
        assert req.responseHeaders.getRawHeaders(b"content-type")[0].startswith(b"text/plain")


@pytest.mark.parametrize("host,args,code", [
    (b"autoconfig.example.test", {}, 200),
    (b"example.test", {}, 200),
    (b"mx.example.test", {b"emailaddress": [b"you@example.test"]}, 200),
    (b"mx.example.test", {b"emailaddress": [b"you@other.test"]}, 404),
    (b"autoconfig.other.test", {}, 404)])
def test_autoconfig_by_host_or_address(public, host, args, code):
    status, body, _ = _get(public, b"/mail/config-v1.1.xml", host, args=args)
    assert status == code
    if code == 200:
        assert b"<clientConfig" in body


def test_autodiscover_post(public):
    body = (b'<Autodiscover><Request><EMailAddress>you@example.test</EMailAddress></Request>'
            b'</Autodiscover>')
    status, out, _ = _get(public, b"/Autodiscover/Autodiscover.xml", b"x", b"POST", body)
    assert status == 200 and b"<LoginName>you@example.test</LoginName>" in out
    status, out, _ = _get(public, b"/autodiscover/autodiscover.xml", b"x", b"POST", b"<x/>")
    assert status == 400 and b"no EMailAddress" in out
    status, _, _ = _get(public, b"/autodiscover/autodiscover.xml", b"x", b"POST",
                        body.replace(b"example.test", b"other.test"))
    assert status == 404


def test_http01_answer_and_redirect():
    responder = HTTP01Responder()
    site = PlainSite(responder)
    status, _, _ = _get(site, b"/.well-known/acme-challenge/tok", b"mx.example.test")
    assert status == 404
    responder.add("tok", "tok.thumb")
    status, body, _ = _get(site, b"/.well-known/acme-challenge/tok", b"mx.example.test")
    assert (status, body) == (200, b"tok.thumb")
    responder.remove("tok")
    status, _, req = _get(site, b"/mail/config-v1.1.xml?x=1", b"autoconfig.example.test")
    assert status == 301
    assert req.responseHeaders.getRawHeaders(b"location") == [
        b"https://autoconfig.example.test/mail/config-v1.1.xml?x=1"]
    status, _, _ = _get(site, b"/", b"bad host\r\nx: y")
    assert status == 400
