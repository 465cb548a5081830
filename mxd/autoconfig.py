"""Mail client autoconfiguration: Thunderbird autoconfig and Microsoft autodiscover (pure).

* Thunderbird's ``config-v1.1.xml`` (the "autoconfig" format documented by Mozilla, fetched
  from ``https://autoconfig.<domain>/mail/config-v1.1.xml?emailaddress=...``);
* Microsoft's "POX" autodiscover (``POST /autodiscover/autodiscover.xml``, the
  ``outlook/responseschema/2006a`` response), used by Outlook and many phones;
* SRV records (RFC 6186 §3) are printed by ``mxd.dnsrecords``.

Only implicit TLS (RFC 8314 §3) and STARTTLS endpoints are offered, never plain text, and
only SASL mechanisms that keep the password off the wire when the client can do them.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape, quoteattr

import attrs

from mxd.errors import MxdError

MAX_REQUEST = 64 * 1024
POX_REQUEST_NS = "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"
POX_RESPONSE_NS = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"


class AutoconfigError(MxdError):
    """A client's autodiscover request cannot be understood."""


@attrs.frozen
class Endpoint:
    """One server a client can use: host, port and ``ssl`` (implicit TLS) or ``starttls``."""

    host: str
    port: int
    socket: str  # "SSL" or "STARTTLS" (Thunderbird's socketType words)


@attrs.frozen
class ClientSettings:
    """What clients of one domain are told."""

    domain: str
    display_name: str
    imap: tuple[Endpoint, ...]
    submission: tuple[Endpoint, ...]


def thunderbird_xml(settings: ClientSettings) -> str:
    """The ``clientConfig`` document (version 1.1) for ``settings``."""
    d = escape(settings.domain)
    lines = ['<?xml version="1.0" encoding="UTF-8"?>',
             '<clientConfig version="1.1">',
             f'  <emailProvider id={quoteattr(settings.domain)}>',
             f"    <domain>{d}</domain>",
             f"    <displayName>{escape(settings.display_name)}</displayName>",
             f"    <displayShortName>{d}</displayShortName>"]
    for kind, endpoints in (("incomingServer", settings.imap),
                            ("outgoingServer", settings.submission)):
        for e in endpoints:
            proto = "imap" if kind == "incomingServer" else "smtp"
            lines += [f'    <{kind} type="{proto}">',
                      f"      <hostname>{escape(e.host)}</hostname>",
                      f"      <port>{e.port}</port>",
                      f"      <socketType>{e.socket}</socketType>",
                      "      <username>%EMAILADDRESS%</username>",
                      "      <authentication>password-encrypted</authentication>",
                      "      <authentication>password-cleartext</authentication>",
                      f"    </{kind}>"]
    lines += ["  </emailProvider>", "</clientConfig>"]
    return "\n".join(lines) + "\n"


def autodiscover_email(body: bytes) -> str:
    """The ``EMailAddress`` of a POX autodiscover request; AutoconfigError if absent."""
    if len(body) > MAX_REQUEST:
        raise AutoconfigError("request too large")
    if b"<!DOCTYPE" in body.upper() or b"<!ENTITY" in body.upper():
        raise AutoconfigError("DTDs are not accepted")
    try:
        root = ET.fromstring(body)  # no DTDs (checked above), size-limited
    except ET.ParseError as e:
        raise AutoconfigError(f"not XML: {e}") from None
    for el in root.iter():
        if el.tag.rsplit("}", 1)[-1] == "EMailAddress" and el.text and "@" in el.text:
            return el.text.strip()
    raise AutoconfigError("no EMailAddress in the request")


def autodiscover_xml(settings: ClientSettings, email: str) -> str:
    """The POX ``Autodiscover`` response (responseschema 2006a) for ``email``."""
    out = ['<?xml version="1.0" encoding="utf-8"?>',
           '<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/'
           'responseschema/2006">',
           f'  <Response xmlns="{POX_RESPONSE_NS}">',
           "    <Account>",
           "      <AccountType>email</AccountType>",
           "      <Action>settings</Action>"]
    for proto, endpoints in (("IMAP", settings.imap), ("SMTP", settings.submission)):
        for e in endpoints:
            out += ["      <Protocol>",
                    f"        <Type>{proto}</Type>",
                    f"        <Server>{escape(e.host)}</Server>",
                    f"        <Port>{e.port}</Port>",
                    f"        <LoginName>{escape(email)}</LoginName>",
                    "        <SPA>off</SPA>",
                    f"        <SSL>{'on' if e.socket == 'SSL' else 'off'}</SSL>",
                    f"        <Encryption>{'SSL' if e.socket == 'SSL' else 'TLS'}</Encryption>",
                    "        <AuthRequired>on</AuthRequired>",
                    "      </Protocol>"]
    out += ["    </Account>", "  </Response>", "</Autodiscover>"]
    return "\n".join(out) + "\n"
