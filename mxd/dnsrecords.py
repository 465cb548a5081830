"""The DNS records a domain needs to receive and send mail with mxd, with explanations (pure).

``records(inputs)`` lists every record `mxd quickstart` and `mxd dns records` print and
`mxd dns check` verifies: MX (RFC 5321 §5.1), A/AAAA and reverse DNS of the host, SPF
(RFC 7208), DKIM (RFC 6376 §3.6.1), DMARC (RFC 7489 §6.1), MTA-STS (RFC 8461 §3.1),
TLSRPT (RFC 8460 §3) for the domain and the MX host, TLSA 3 1 1 (RFC 7672 §3.1.1) for both
host keys, CAA with the ACME account (RFC 8659, RFC 8657), SRV for mail clients (RFC 6186,
RFC 8314 §5.1) and the autoconfig/autodiscover names.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import attrs

DEFAULT_TTL = 300


@attrs.frozen
class DNSRecord:
    """One record to publish: owner name (no final dot), type, value in zone-file form, what
    it is for (the check's name) and why."""

    name: str
    rtype: str
    value: str
    purpose: str
    explanation: str

    def zone_line(self, ttl: int = DEFAULT_TTL) -> str:
        return f"{self.name}. {ttl} IN {self.rtype} {self.value}"


@attrs.frozen
class RecordInputs:
    """Everything the records are made from (taken from the config and key files)."""

    domain: str  # A-label
    hostname: str  # the MX host, A-label
    public_ips: tuple[str, ...] = ()
    tlsa_spki_sha256: tuple[bytes, ...] = ()  # one per host key
    dkim: tuple[tuple[str, str], ...] = ()  # (owner name, TXT value) per selector
    sts_id: str | None = None
    sts_policy_text: str = ""
    dmarc_policy: str = "reject"
    dmarc_rua: str = ""  # full address
    tlsrpt_rua: str = ""  # full address
    tlsrpt_host_rua: str = ""  # HostTLSRPT: reports about our MX host (empty: tlsrpt_rua)
    caa_issuer: str = ""
    acme_account_uri: str | None = None
    extra_spf_ips: tuple[str, ...] = ()  # public IPs of SOCKS5 transports
    submissions_port: int | None = 465
    submission_port: int | None = None
    imaps_port: int | None = 993
    imap_port: int | None = None
    https: bool = True


def txt_value(text: str) -> str:
    """Zone-file form of a TXT value: quoted character-strings of at most 255 octets."""
    parts = [text[i:i + 255] for i in range(0, len(text), 255)] or [""]
    return " ".join('"' + p.replace("\\", "\\\\").replace('"', '\\"') + '"' for p in parts)


def spf_text(ips: Sequence[str]) -> str:
    """``v=spf1 ip4:… ip6:… -all`` allowing exactly ``ips`` (RFC 7208 §5.6)."""
    terms = []
    for ip in ips:
        a = ipaddress.ip_address(ip)
        terms.append(f"ip{a.version}:{a}")
    return " ".join(["v=spf1", *terms, "-all"])


def dmarc_text(policy: str, rua: str) -> str:
    """``v=DMARC1; p=…; rua=mailto:…`` (RFC 7489 §6.3)."""
    text = f"v=DMARC1; p={policy}"
    if rua:
        text += f"; rua=mailto:{rua}"
    return text


def tlsrpt_text(rua: str) -> str:
    """``v=TLSRPTv1; rua=mailto:…`` (RFC 8460 §3)."""
    return f"v=TLSRPTv1; rua=mailto:{rua}"


def caa_value(issuer: str, account_uri: str | None) -> str:
    """``0 issue "CA; accounturi=…"`` (RFC 8659 §4.2, RFC 8657 §3)."""
    v = issuer + (f"; accounturi={account_uri}" if account_uri else "")
    return f'0 issue "{v}"'


def records(i: RecordInputs) -> list[DNSRecord]:
    d, h = i.domain, i.hostname
    out = [DNSRecord(d, "MX", f"10 {h}.", "mx",
                     "Mail for the domain goes to this host (RFC 5321 §5.1).")]
    for ip in i.public_ips:
        a = ipaddress.ip_address(ip)
        out.append(DNSRecord(h, "A" if a.version == 4 else "AAAA", str(a), "address",
                             "The mail host's address; senders connect to it."))
    for ip in i.public_ips:
        rev = ipaddress.ip_address(ip).reverse_pointer
        out.append(DNSRecord(rev, "PTR", f"{h}.", "iprev",
                             "Reverse DNS, set at your network provider: receivers check that "
                             "the address names this host and the host this address (iprev, "
                             "RFC 8601 §3)."))
    spf_ips = [*i.public_ips, *[x for x in i.extra_spf_ips if x not in i.public_ips]]
    if spf_ips:
        out.append(DNSRecord(d, "TXT", txt_value(spf_text(spf_ips)), "spf",
                             "SPF: only these addresses send mail from the domain (RFC 7208); "
                             "includes the public address of every SOCKS5 transport."))
        out.append(DNSRecord(h, "TXT", txt_value(spf_text(spf_ips)), "spf-host",
                             "SPF for the host name used in HELO and in bounces."))
    for owner, text in i.dkim:
        out.append(DNSRecord(owner, "TXT", txt_value(text), "dkim",
                             "DKIM public key of one selector (RFC 6376 §3.6.1): receivers "
                             "verify our signatures with it. Keep the old selector published "
                             "for a week after a rollover."))
    out.append(DNSRecord(f"_dmarc.{d}", "TXT", txt_value(dmarc_text(i.dmarc_policy, i.dmarc_rua)),
                         "dmarc", "DMARC (RFC 7489): receivers reject mail that fails SPF and "
                         "DKIM alignment and send aggregate reports to the rua address."))
    if i.sts_id is not None:
        out.append(DNSRecord(f"_mta-sts.{d}", "TXT", txt_value(f"v=STSv1; id={i.sts_id}"),
                             "mta-sts", "MTA-STS (RFC 8461 §3.1): senders fetch the policy "
                             "below and require verified TLS to our MX. The id changes with "
                             "the policy; update this record when mxd prints a new one."))
        out.append(DNSRecord(f"mta-sts.{d}", "CNAME", f"{h}.", "mta-sts-host",
                             "Where the policy is served: https://mta-sts." + d +
                             "/.well-known/mta-sts.txt (mxd serves it with an ACME "
                             "certificate for this name)."))
    for owner, rua in ((d, i.tlsrpt_rua), (h, i.tlsrpt_host_rua or i.tlsrpt_rua)):
        if rua:
            out.append(DNSRecord(f"_smtp._tls.{owner}", "TXT", txt_value(tlsrpt_text(rua)),
                                 "tlsrpt" if owner == d else "tlsrpt-host",
                                 "TLS reporting (RFC 8460 §3): senders report TLS failures "
                                 f"for {'MTA-STS of the domain' if owner == d else 'DANE of the MX host'}."))
    for digest in i.tlsa_spki_sha256:
        out.append(DNSRecord(f"_25._tcp.{h}", "TLSA", f"3 1 1 {digest.hex()}", "tlsa",
                             "DANE (RFC 7672 §3.1.1): the SHA-256 of one host key. Needs a "
                             "DNSSEC-signed zone. It stays valid across certificate renewals "
                             "because mxd keeps its host keys; to roll a key, publish the new "
                             "key's TLSA record first (`mxd hostkeys next`), wait two TTLs, "
                             "then switch keys."))
    if i.caa_issuer:
        expl = ("CAA (RFC 8659): only this CA may issue certificates for the domain, and "
                "(RFC 8657) only to mxd's ACME account.")
        if not i.acme_account_uri:
            expl += (" The account URI is added once mxd has registered with the CA: run "
                     "`mxd dns records` again after the first start.")
        out.append(DNSRecord(d, "CAA", caa_value(i.caa_issuer, i.acme_account_uri), "caa", expl))
    srv = [("_submissions._tcp", i.submissions_port, 0), ("_submission._tcp", i.submission_port, 10),
           ("_imaps._tcp", i.imaps_port, 0), ("_imap._tcp", i.imap_port, 10)]
    for label, port, prio in srv:
        value = f"{prio} 1 {port} {h}." if port else "0 0 0 ."
        out.append(DNSRecord(f"{label}.{d}", "SRV", value, "srv",
                             "Mail client service location (RFC 6186 §3, RFC 8314 §5.1); "
                             "target \".\" says the service is not offered."))
    if i.https:
        out.append(DNSRecord(f"autoconfig.{d}", "CNAME", f"{h}.", "autoconfig",
                             "Thunderbird-style autoconfig: clients fetch "
                             f"https://autoconfig.{d}/mail/config-v1.1.xml."))
        out.append(DNSRecord(f"_autodiscover._tcp.{d}", "SRV", f"0 1 443 {h}.", "autodiscover",
                             "Microsoft autodiscover (POX) for Outlook and phones."))
    return out


def render(recs: Sequence[DNSRecord], inputs: RecordInputs) -> str:
    """Records grouped with their explanations, in zone-file syntax."""
    lines = [f"; DNS records for {inputs.domain} (mail host {inputs.hostname}).",
             "; Sign the zone with DNSSEC: DANE and authentic answers depend on it.", ""]
    for r in recs:
        lines.append(f"; {r.explanation}")
        lines.append(r.zone_line())
        lines.append("")
    if inputs.sts_policy_text:
        lines.append(f"; The MTA-STS policy served at https://mta-sts.{inputs.domain}"
                     "/.well-known/mta-sts.txt:")
        lines += [f";   {x}" for x in inputs.sts_policy_text.splitlines()]
    return "\n".join(lines) + "\n"
