"""The MTA-STS policy of a recipient domain and what it means per MX host (RFC 8461 §4, §5).

``STSResolver.lookup(domain)`` combines the ``_mta-sts`` TXT record, the cache and the
fetcher (RFC 8461 §5.1):

* a valid TXT record whose ``id`` equals the cached policy's: the cached policy, no fetch;
* a new ``id`` or nothing cached: fetch; store the result; on failure keep using an
  unexpired cached policy (and report the failure, RFC 8460 §4.3.2);
* no (valid) TXT record, or a failed TXT lookup: an unexpired cached policy stays in force
  (RFC 8461 §8.3: a policy is withdrawn with mode ``none``, not by deleting the record);
  without one there is no policy;
* a fetch failure with nothing cached: no policy (trust on first use, RFC 8461 §10.2), with
  the failure recorded for TLS reporting.

Policies are always looked up for the recipient domain itself, never a CNAME target of
its MX (RFC 8461 §4).  ``mx_verdict`` is the pure per-host decision.
"""

from __future__ import annotations

from typing import Protocol

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mxd.dns.errors import DNSError, DNSNegativeAnswer
from mxd.dns.interfaces import IResolver
from mxd.mtasts.cache import CachedPolicy, IPolicyCache
from mxd.mtasts.fetch import FetchedPolicy, PolicyFetchError
from mxd.mtasts.policy import Mode, Policy, TXTRecordError, select_txt_record
from mxd.tlsrpt.results import PolicyInfo, PolicyType, ResultType

log = Logger()


class Fetcher(Protocol):
    def fetch(self, domain: str) -> Deferred[FetchedPolicy]: ...


@attrs.frozen
class STSLookup:
    """The policy in force for ``domain`` (None: no MTA-STS), and what went wrong on the way.

    ``failure``/``detail``: a TXT or fetch problem for TLS reporting (sts-policy-fetch-error,
    sts-policy-invalid, sts-webpki-invalid), also when a cached policy was used instead.
    """

    domain: str
    policy: Policy | None
    policy_id: str | None = None
    from_cache: bool = False
    failure: ResultType | None = None
    detail: str = ""

    @property
    def enforce(self) -> bool:
        return self.policy is not None and self.policy.mode is Mode.ENFORCE

    @property
    def testing(self) -> bool:
        return self.policy is not None and self.policy.mode is Mode.TESTING

    def policy_info(self) -> PolicyInfo:
        """RFC 8460 §4.4 policy description for TLS reports."""
        if self.policy is None or self.policy.mode is Mode.NONE:
            return PolicyInfo.none_found(self.domain)
        return PolicyInfo(PolicyType.STS, self.domain, self.policy.to_strings(),
                          tuple(p.text for p in self.policy.mx))


@attrs.frozen
class MXVerdict:
    """What an STS policy says about one MX host.

    ``allowed``: the host may be used (always True without an enforced policy);
    ``verify``: its certificate must be WebPKI-valid for its name (enforce) or is checked
    and the result only reported (testing, ``report_only``).
    """

    allowed: bool
    verify: bool
    report_only: bool
    matched: bool


def mx_verdict(policy: Policy | None, mx_host: str) -> MXVerdict:
    """RFC 8461 §4.1, §5: the per-host consequence of a policy."""
    if policy is None or policy.mode is Mode.NONE:
        return MXVerdict(True, False, False, True)
    matched = policy.matches(mx_host)
    if policy.mode is Mode.ENFORCE:
        return MXVerdict(matched, matched, False, matched)
    return MXVerdict(True, True, True, matched)  # testing: report, never block (§5)


class STSResolver:
    """Looks up MTA-STS policies through the resolver, cache and fetcher given."""

    def __init__(self, resolver: IResolver, fetcher: Fetcher, cache: IPolicyCache,
                 clock: IReactorTime) -> None:
        self._resolver = resolver
        self._fetcher = fetcher
        self._cache = cache
        self._clock = clock

    def cached(self, domain: str) -> CachedPolicy | None:
        """The unexpired cached policy of ``domain``, if any."""
        entry = self._cache.get(domain)
        if entry is None or entry.expired(self._clock.seconds()):
            return None
        return entry

    async def _txt_id(self, domain: str) -> tuple[str | None, str]:
        """(id, problem): the id of the valid STSv1 record, or None and why not."""
        try:
            answer = await self._resolver.lookup_txt(f"_mta-sts.{domain}")
        except DNSNegativeAnswer:
            return None, ""
        except DNSError as e:  # SERVFAIL, timeout, or a name that is not a domain
            return None, f"TXT lookup failed: {e}"
        try:
            return select_txt_record(answer.records).id, ""
        except TXTRecordError as e:
            return None, f"_mta-sts TXT record: {e}"

    def _forget_withdrawn(self, domain: str, cached: CachedPolicy | None, txt_id: str | None,
                          problem: str) -> CachedPolicy | None:
        """RFC 8461 §8.3: a domain leaves MTA-STS by publishing mode "none" and then removing
        the TXT record.  A cached "none" policy is dropped once the TXT record is cleanly
        gone (NXDOMAIN or no data; not on a failed lookup, which keeps what we know)."""
        if (cached is not None and txt_id is None and not problem
                and cached.policy.mode is Mode.NONE):
            self._cache.delete(domain)
            log.info("MTA-STS policy of {domain} (mode none) removed: TXT record gone",
                     domain=domain)
            return None
        return cached

    async def lookup(self, domain: str) -> STSLookup:
        """The policy in force for the recipient ``domain`` (see the module docstring)."""
        domain = domain.rstrip(".").lower()
        txt_id, problem = await self._txt_id(domain)
        cached = self._forget_withdrawn(domain, self.cached(domain), txt_id, problem)
        if txt_id is None:
            if cached is not None:
                return STSLookup(domain, cached.policy, cached.txt_id, True, None, problem)
            return STSLookup(domain, None, None, False, None, problem)
        if cached is not None and cached.txt_id == txt_id:
            return STSLookup(domain, cached.policy, txt_id, True)
        try:
            fetched = await self._fetcher.fetch(domain)
        except PolicyFetchError as e:
            log.info("MTA-STS policy of {domain} not fetched: {error}", domain=domain,
                     error=e.detail)
            if cached is not None:
                return STSLookup(domain, cached.policy, cached.txt_id, True, e.result_type,
                                 e.detail)
            return STSLookup(domain, None, txt_id, False, e.result_type, e.detail)
        entry = CachedPolicy(domain, fetched.policy, fetched.text, txt_id, self._clock.seconds())
        self._cache.put(entry)
        return STSLookup(domain, fetched.policy, txt_id, False)

    def lookup_deferred(self, domain: str) -> Deferred[STSLookup]:
        return Deferred.fromCoroutine(self.lookup(domain))

    async def refresh(self, domain: str) -> STSLookup:
        """Fetch the policy again even if the TXT id is unchanged (RFC 8461 §5.1: refresh
        before expiry), when the domain still publishes a valid TXT record.  A failure
        keeps the cached policy."""
        domain = domain.rstrip(".").lower()
        txt_id, problem = await self._txt_id(domain)
        cached = self._forget_withdrawn(domain, self.cached(domain), txt_id, problem)
        if txt_id is None:
            # policy_id None: no TXT record now (the refresher drops expired entries then).
            return STSLookup(domain, cached.policy if cached else None, None,
                             cached is not None, None, problem)
        try:
            fetched = await self._fetcher.fetch(domain)
        except PolicyFetchError as e:
            return STSLookup(domain, cached.policy if cached else None, txt_id, cached is not None,
                             e.result_type, e.detail)
        self._cache.put(CachedPolicy(domain, fetched.policy, fetched.text, txt_id,
                                     self._clock.seconds()))
        return STSLookup(domain, fetched.policy, txt_id, False)
