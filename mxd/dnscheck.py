"""`mxd dns check`: a domain's published records against what mxd serves, like an offline
internet.nl mail test.

Every check goes through mxd's resolver and records whether the answers it used were
DNSSEC-authenticated (``secure``), unsigned (``insecure``) or failed validation (``bogus``).
Each result is OK, WARN or ERROR with what to fix; ``mxd dns check`` exits non-zero on any
ERROR.  Collaborators come in as arguments: the resolver, the expected records
(``mxd.dnsrecords.RecordInputs``), the chains served per key kind, a policy fetcher.
"""

from __future__ import annotations

import datetime
import enum
import ipaddress
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs

from mxd import dane
from mxd.dane_inbound import InboundStatus, evaluate
from mxd.dns.errors import DNSLookupError, DNSNegativeAnswer, DNSServFail
from mxd.dnsrecords import RecordInputs, dmarc_text, spf_text, tlsrpt_text


class Status(enum.StrEnum):
    OK = "OK"
    WARN = "WARN"
    ERROR = "ERROR"


class DNSSEC(enum.StrEnum):
    SECURE = "secure"
    INSECURE = "insecure"
    BOGUS = "bogus"
    UNKNOWN = "unknown"  # no answer to judge (lookup failed) or no DNS involved


@attrs.frozen
class CheckResult:
    name: str
    status: Status
    dnssec: DNSSEC
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status.value:<5} {self.name:<13} [{self.dnssec.value}] {self.detail}"
        if self.fix:
            text += f"\n      fix: {self.fix}"
        return text

    def as_dict(self) -> dict[str, str]:
        return {"check": self.name, "status": self.status.value, "dnssec": self.dnssec.value,
                "detail": self.detail, "fix": self.fix}


@attrs.frozen
class _Looked:
    records: tuple[Any, ...]
    dnssec: DNSSEC
    error: str = ""
    missing: bool = False  # authoritative no-data / no-such-name


async def _lookup(resolver: Any, name: str, rdtype: str) -> _Looked:
    try:
        answer = await resolver.query(name, rdtype)
    except DNSNegativeAnswer as e:
        return _Looked((), DNSSEC.SECURE if e.authentic else DNSSEC.INSECURE,
                       f"no {rdtype} record at {name}", missing=True)
    except DNSServFail as e:
        bogus = any(x.code in (6, 7, 8, 9, 10, 12) for x in e.extended_errors)
        return _Looked((), DNSSEC.BOGUS if bogus else DNSSEC.UNKNOWN,
                       f"{name} {rdtype}: {e}")
    except DNSLookupError as e:
        return _Looked((), DNSSEC.UNKNOWN, f"{name} {rdtype}: {e}")
    return _Looked(tuple(answer.records), DNSSEC.SECURE if answer.authentic else DNSSEC.INSECURE)


def _txt(records: Sequence[Any], prefix: str) -> list[str]:
    out = []
    for r in records:
        text = r.decode("utf-8", "replace") if isinstance(r, bytes) else str(r)
        if text.lower().startswith(prefix.lower()):
            out.append(text)
    return out


def _tags(text: str) -> dict[str, str]:
    out = {}
    for part in text.split(";"):
        k, eq, v = part.strip().partition("=")
        if eq:
            out[k.strip().lower()] = v.strip()
    return out


def _failed(name: str, looked: _Looked, fix: str) -> CheckResult:
    status = Status.ERROR
    return CheckResult(name, status, looked.dnssec, looked.error, fix)


PolicyFetch = Callable[[str], Awaitable[str]]


class Checker:
    """Runs every check for one domain."""

    def __init__(self, resolver: Any, expected: RecordInputs,
                 served: Sequence[tuple[str, Sequence[bytes]]], fetch_policy: PolicyFetch | None,
                 *, sts_policy_text: str = "", acme: bool = False,
                 now: datetime.datetime | None = None) -> None:
        self.r = resolver
        self.x = expected
        self.served = served
        self.fetch_policy = fetch_policy
        self.sts_policy_text = sts_policy_text
        self.acme = acme
        self.now = now or datetime.datetime.now(datetime.UTC)

    async def run(self) -> list[CheckResult]:
        out = [await self.dnssec(), await self.mx()]
        out += await self.addresses()
        out += [await self.spf(), *await self.dkim(), await self.dmarc()]
        if self.x.sts_id is not None:
            out += [await self.mta_sts(), await self.mta_sts_policy()]
        out += [await self.tlsrpt(self.x.domain, "tlsrpt"),
                await self.tlsrpt(self.x.hostname, "tlsrpt-host"), await self.tlsa()]
        if self.x.caa_issuer:
            out.append(await self.caa())
        out.append(await self.srv())
        if self.x.https:
            out.append(await self.autoconfig())
        return out

    # -- the checks -------------------------------------------------------------------

    async def dnssec(self) -> CheckResult:
        looked = await _lookup(self.r, self.x.domain, "SOA")
        if looked.dnssec is DNSSEC.SECURE:
            return CheckResult("dnssec", Status.OK, looked.dnssec,
                               f"{self.x.domain} is DNSSEC-signed and validates")
        if looked.dnssec is DNSSEC.BOGUS:
            return CheckResult("dnssec", Status.ERROR, looked.dnssec,
                               f"{self.x.domain} fails DNSSEC validation: {looked.error}",
                               "re-sign the zone and check the DS record at the parent")
        return CheckResult("dnssec", Status.ERROR, looked.dnssec,
                           looked.error or f"{self.x.domain} is not DNSSEC-signed (or mxd's "
                           "resolver does not validate)",
                           "sign the zone and publish its DS at the registrar; run a "
                           "validating resolver (unbound) for mxd")

    async def mx(self) -> CheckResult:
        looked = await _lookup(self.r, self.x.domain, "MX")
        fix = f"publish: {self.x.domain}. MX 10 {self.x.hostname}."
        if looked.error:
            return _failed("mx", looked, fix)
        hosts = sorted(str(m.host.ascii).rstrip(".").lower() for m in looked.records)
        if self.x.hostname in hosts:
            status = Status.OK if len(hosts) == 1 else Status.WARN
            return CheckResult("mx", status, looked.dnssec, "MX → " + ", ".join(hosts),
                               "" if status is Status.OK else "other MX hosts also receive "
                               "mail for the domain; remove them unless intended")
        return CheckResult("mx", Status.ERROR, looked.dnssec,
                           "MX → " + (", ".join(hosts) or "nothing") + f", not {self.x.hostname}",
                           fix)

    async def addresses(self) -> list[CheckResult]:
        found: list[str] = []
        sec = []
        for rtype in ("A", "AAAA"):
            looked = await _lookup(self.r, self.x.hostname, rtype)
            found += [str(a) for a in looked.records]
            sec.append(looked.dnssec)
        dnssec = DNSSEC.SECURE if all(s is DNSSEC.SECURE for s in sec) else sec[0]
        want = [str(ipaddress.ip_address(i)) for i in self.x.public_ips]
        out = []
        if not found:
            out.append(CheckResult("address", Status.ERROR, dnssec,
                                   f"{self.x.hostname} has no A or AAAA record",
                                   "publish the host's address records"))
        elif not want:
            out.append(CheckResult("address", Status.WARN, dnssec,
                                   f"{self.x.hostname} → {', '.join(found)}",
                                   "set [dns].public_ips so mxd can compare"))
        elif set(want) - set(found):
            out.append(CheckResult("address", Status.ERROR, dnssec,
                                   f"{self.x.hostname} → {', '.join(found)}; missing "
                                   f"{', '.join(sorted(set(want) - set(found)))}",
                                   "publish A/AAAA records for every public IP"))
        else:
            extra = set(found) - set(want)
            out.append(CheckResult("address", Status.WARN if extra else Status.OK, dnssec,
                                   f"{self.x.hostname} → {', '.join(found)}",
                                   f"{', '.join(sorted(extra))} not in [dns].public_ips"
                                   if extra else ""))
        out.append(await self.iprev(found))
        return out

    async def iprev(self, addresses: Sequence[str]) -> CheckResult:
        """RFC 8601 §3 iprev: each address's PTR names the host (forward-confirmed)."""
        bad = []
        sec = DNSSEC.SECURE
        for ip in addresses:
            try:
                answer = await self.r.lookup_ptr(ip)
            except DNSLookupError as e:
                bad.append(f"{ip}: no PTR ({e.__class__.__name__})")
                sec = DNSSEC.UNKNOWN
                continue
            if not answer.authentic:
                sec = DNSSEC.INSECURE
            names = [str(n.ascii).rstrip(".").lower() for n in answer.records]
            if self.x.hostname not in names:
                bad.append(f"{ip} → {', '.join(names)}")
        if not addresses:
            return CheckResult("iprev", Status.WARN, DNSSEC.UNKNOWN, "no addresses to check")
        if bad:
            return CheckResult("iprev", Status.WARN, sec, "; ".join(bad),
                               f"ask your network provider for PTR records naming "
                               f"{self.x.hostname}")
        return CheckResult("iprev", Status.OK, sec, f"{', '.join(addresses)} → {self.x.hostname}")

    async def spf(self) -> CheckResult:
        """Each of our IPs (and the SOCKS5 transports') must get ``pass`` from the domain's
        SPF policy, evaluated by mxd's own SPF implementation (RFC 7208 §4, check_host);
        an address that is not ours should get ``fail`` or ``softfail``."""
        from mxd.msgauth.spf import SPFResult, check_host

        name = self.x.domain
        want = [*self.x.public_ips, *self.x.extra_spf_ips]
        fix = f'publish: {name}. TXT "{spf_text(want)}"' if want else "set [dns].public_ips"
        looked = await _lookup(self.r, name, "TXT")
        if looked.error and not looked.missing:
            return _failed("spf", looked, fix)
        recs = _txt(looked.records, "v=spf1")
        if len(recs) != 1:
            return CheckResult("spf", Status.ERROR, looked.dnssec,
                               f"{len(recs)} SPF records at {name} (need exactly one, RFC 7208 "
                               "§4.5)", fix)
        sender = f"postmaster@{name}"
        failing = []
        for ip in want:
            out = await check_host(self.r, ip, name, sender, self.x.hostname)
            if out.result is not SPFResult.PASS:
                failing.append(f"{ip}: {out.result.value}" + (f" ({out.reason})"
                                                              if out.reason else ""))
        if failing:
            return CheckResult("spf", Status.ERROR, looked.dnssec,
                               f"{recs[0]!r} does not pass " + "; ".join(failing), fix)
        if not want:
            return CheckResult("spf", Status.WARN, looked.dnssec, recs[0], fix)
        # An RFC 5737 documentation address, never a real sender (and not one of ours).
        probe = next(a for a in ("203.0.113.254", "198.51.100.254", "192.0.2.254")
                     if a not in want)
        other = await check_host(self.r, probe, name, sender, self.x.hostname)
        if other.result not in (SPFResult.FAIL, SPFResult.SOFTFAIL):
            return CheckResult("spf", Status.WARN, looked.dnssec,
                               f"{recs[0]} gives {other.result.value} to other addresses",
                               "end the record with -all so others cannot send as the domain")
        return CheckResult("spf", Status.OK, looked.dnssec, f"{recs[0]} (our addresses pass)")

    async def dkim(self) -> list[CheckResult]:
        """Each configured selector's record must hold our public key in a form verifiers
        accept (parsed by mxd's DKIM verifier, RFC 6376 §3.6.1)."""
        from mxd.msgauth.dkim import DKIMSyntaxError, parse_key, parse_tags

        if not self.x.dkim:
            return [CheckResult("dkim", Status.ERROR, DNSSEC.UNKNOWN,
                                "no DKIM key configured for the domain",
                                "run `mxd dkim genkey DOMAIN` and list the selectors under "
                                "[dkim].selectors")]
        out = []
        for owner, text in self.x.dkim:
            looked = await _lookup(self.r, owner, "TXT")
            fix = f'publish: {owner}. TXT "{text}"'
            if looked.error:
                out.append(_failed("dkim", looked, fix))
                continue
            want = parse_tags(text).get("p", "")
            problems, found = [], False
            for raw in looked.records:
                try:
                    parse_key(bytes(raw))
                except DKIMSyntaxError as e:
                    problems.append(str(e))
                    continue
                got = parse_tags(bytes(raw).decode("ascii")).get("p", "")
                found = found or "".join(got.split()) == want
            if found:
                out.append(CheckResult("dkim", Status.OK, looked.dnssec,
                                       f"{owner} has our public key"))
            else:
                detail = f"{owner} does not hold our public key"
                out.append(CheckResult("dkim", Status.ERROR, looked.dnssec,
                                       detail + (f" ({'; '.join(problems)})" if problems
                                                 else ""), fix))
        return out

    async def dmarc(self) -> CheckResult:
        """One DMARC record, parsed as receivers parse it (mxd.msgauth.dmarc, RFC 7489
        §6.3); p=none or no rua= is a warning."""
        from mxd.msgauth.dmarc import DMARCSyntaxError, Policy, is_dmarc, parse_record

        name = f"_dmarc.{self.x.domain}"
        fix = f'publish: {name}. TXT "{dmarc_text(self.x.dmarc_policy, self.x.dmarc_rua)}"'
        looked = await _lookup(self.r, name, "TXT")
        if looked.error and not looked.missing:
            return _failed("dmarc", looked, fix)
        recs = [t for t in _txt(looked.records, "") if is_dmarc(t)]
        if len(recs) != 1:
            return CheckResult("dmarc", Status.ERROR, looked.dnssec,
                               f"{len(recs)} DMARC records at {name} (need exactly one, RFC "
                               "7489 §6.6.3)", fix)
        try:
            rec = parse_record(recs[0])
        except DMARCSyntaxError as e:
            return CheckResult("dmarc", Status.ERROR, looked.dnssec, f"{recs[0]!r}: {e}", fix)
        if rec.policy is Policy.NONE or not rec.rua:
            return CheckResult("dmarc", Status.WARN, looked.dnssec, recs[0],
                               "use p=reject (or quarantine) and a rua= address")
        return CheckResult("dmarc", Status.OK, looked.dnssec, recs[0])

    async def mta_sts(self) -> CheckResult:
        from mxd.mtasts.policy import TXTRecordError, select_txt_record

        name = f"_mta-sts.{self.x.domain}"
        fix = f'publish: {name}. TXT "v=STSv1; id={self.x.sts_id}"'
        looked = await _lookup(self.r, name, "TXT")
        if looked.error and not looked.missing:
            return _failed("mta-sts", looked, fix)
        try:
            rec = select_txt_record(looked.records)
        except TXTRecordError as e:
            return CheckResult("mta-sts", Status.ERROR, looked.dnssec, f"{name}: {e}", fix)
        if rec.id != self.x.sts_id:
            return CheckResult("mta-sts", Status.ERROR, looked.dnssec,
                               f"id={rec.id} but the policy mxd serves has id={self.x.sts_id}: "
                               "senders keep their cached policy", fix)
        return CheckResult("mta-sts", Status.OK, looked.dnssec, f"id={rec.id} matches")

    async def mta_sts_policy(self) -> CheckResult:
        from mxd.mtasts.policy import Mode, parse_policy

        host = f"mta-sts.{self.x.domain}"
        looked = await _lookup(self.r, host, "A")
        if self.fetch_policy is None:
            return CheckResult("mta-sts-policy", Status.WARN, looked.dnssec, "not fetched")
        try:
            text = await self.fetch_policy(self.x.domain)
        except Exception as e:  # noqa: BLE001 - any fetch failure is the check's finding
            return CheckResult("mta-sts-policy", Status.ERROR, looked.dnssec,
                               f"https://{host}/.well-known/mta-sts.txt: {e}",
                               f"point {host} at this server (CNAME {self.x.hostname}.) and "
                               "make sure its certificate is valid")
        policy = parse_policy(text)
        if not policy.matches(self.x.hostname):
            return CheckResult("mta-sts-policy", Status.ERROR, looked.dnssec,
                               f"policy does not allow our MX {self.x.hostname}",
                               "serve the policy mxd generates")
        if self.sts_policy_text and text.replace("\r\n", "\n") != \
                self.sts_policy_text.replace("\r\n", "\n"):
            return CheckResult("mta-sts-policy", Status.WARN, looked.dnssec,
                               "the served policy differs from mxd's configuration",
                               "restart mxd after changing [mta_sts]")
        status = Status.OK if policy.mode is Mode.ENFORCE else Status.WARN
        return CheckResult("mta-sts-policy", status, looked.dnssec,
                           f"mode {policy.mode.value}, max_age {policy.max_age}",
                           "" if status is Status.OK else "switch to mode enforce once reports "
                           "look clean")

    async def tlsrpt(self, owner: str, check: str) -> CheckResult:
        name = f"_smtp._tls.{owner}"
        rua = (self.x.tlsrpt_host_rua or self.x.tlsrpt_rua) if check == "tlsrpt-host" \
            else self.x.tlsrpt_rua
        fix = (f'publish: {name}. TXT "{tlsrpt_text(rua)}"' if rua
               else "set [dns].tlsrpt_rua")
        looked = await _lookup(self.r, name, "TXT")
        if looked.error and not looked.missing:
            return _failed(check, looked, fix)
        recs = _txt(looked.records, "v=TLSRPTv1")
        if len(recs) != 1 or "rua" not in _tags(recs[0]):
            return CheckResult(check, Status.WARN, looked.dnssec,
                               f"{len(recs)} valid TLSRPT records at {name} (RFC 8460 §3)", fix)
        return CheckResult(check, Status.OK, looked.dnssec, recs[0])

    async def tlsa(self) -> CheckResult:
        """RFC 7672 §3.1.1: the TLSA records must match every certificate we may serve."""
        name = dane.tlsa_base_name(self.x.hostname)
        lookup = await dane.lookup_tlsa(self.r, self.x.hostname)
        sec = {dane.TLSAOutcome.RECORDS: DNSSEC.SECURE, dane.TLSAOutcome.DENIAL: DNSSEC.SECURE,
               dane.TLSAOutcome.INSECURE: DNSSEC.INSECURE}.get(lookup.outcome, DNSSEC.UNKNOWN)
        fix = "publish: " + "; ".join(f"{name}. TLSA 3 1 1 {d.hex()}"
                                      for d in self.x.tlsa_spki_sha256)
        r = evaluate(lookup, self.served, (self.x.hostname,), self.now)
        if r.status is InboundStatus.OK:
            usable, unusable = dane.classify(lookup.records)
            stale = [x for x in usable if x.usage == 3 and x.selector == 1 and x.mtype == 1
                     and x.data not in self.x.tlsa_spki_sha256]
            if stale or unusable:
                return CheckResult("tlsa", Status.WARN, sec,
                                   f"{r.detail}; {len(stale) + len(unusable)} record(s) match "
                                   "no host key in use",
                                   "fine for the next keys of a rollover (`mxd hostkeys "
                                   "next`); remove an old key's records once it is retired")
            return CheckResult("tlsa", Status.OK, sec, f"{name}: {r.detail} (DANE-EE usable)")
        if r.status is InboundStatus.PARTIAL:
            return CheckResult("tlsa", Status.ERROR, sec, r.detail, fix)
        return CheckResult("tlsa", Status.ERROR, sec, f"{name}: {r.detail}", fix)

    async def caa(self) -> CheckResult:
        want = self.x.caa_issuer
        looked = await _lookup(self.r, self.x.domain, "CAA")
        fix = f"publish: {self.x.domain}. CAA 0 issue \"{want}" + (
            f"; accounturi={self.x.acme_account_uri}\"" if self.x.acme_account_uri else "\"")
        if looked.error and not looked.missing:
            return _failed("caa", looked, fix)
        texts = [getattr(r, "text", str(r)) for r in looked.records]
        issue = [t for t in texts if " issue " in f" {t} "]
        if not issue:
            return CheckResult("caa", Status.WARN, looked.dnssec,
                               "no CAA issue record: any CA may issue for the domain", fix)
        ours = [t for t in issue if want in t]
        if not ours:
            return CheckResult("caa", Status.ERROR, looked.dnssec,
                               f"CAA does not allow {want}: renewals will fail", fix)
        if self.x.acme_account_uri and not any(self.x.acme_account_uri in t for t in ours):
            return CheckResult("caa", Status.WARN, looked.dnssec,
                               "CAA does not name mxd's ACME account (RFC 8657)", fix)
        return CheckResult("caa", Status.OK, looked.dnssec, "; ".join(ours))

    async def srv(self) -> CheckResult:
        bad, sec = [], DNSSEC.SECURE
        for label, port in (("_submissions._tcp", self.x.submissions_port),
                            ("_imaps._tcp", self.x.imaps_port)):
            if not port:
                continue
            looked = await _lookup(self.r, f"{label}.{self.x.domain}", "SRV")
            if looked.dnssec is not DNSSEC.SECURE:
                sec = looked.dnssec
            texts = [getattr(r, "text", "") for r in looked.records]
            targets = [t.split()[-1].rstrip(".").lower() for t in texts if t.split()]
            if self.x.hostname not in targets:
                bad.append(f"{label}.{self.x.domain} SRV 0 1 {port} {self.x.hostname}.")
        if bad:
            return CheckResult("srv", Status.WARN, sec, "client SRV records missing (RFC 6186)",
                               "publish: " + "; ".join(bad))
        return CheckResult("srv", Status.OK, sec, "submissions and imaps SRV records point here")

    async def autoconfig(self) -> CheckResult:
        name = f"autoconfig.{self.x.domain}"
        looked = await _lookup(self.r, name, "A")
        if not looked.records:
            return CheckResult("autoconfig", Status.WARN, looked.dnssec,
                               f"{name} does not resolve",
                               f"publish: {name}. CNAME {self.x.hostname}.")
        return CheckResult("autoconfig", Status.OK, looked.dnssec, f"{name} resolves")


def exit_status(results: Sequence[CheckResult]) -> int:
    return 1 if any(r.status is Status.ERROR for r in results) else 0
