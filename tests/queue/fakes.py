"""Small fakes for the queue tests: a resolver with the shape of mxd.dns's."""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.defer import Deferred, fail, succeed

from mxd.dns.errors import DNSNoData, DNSNotFound, DNSServFail


@attrs.frozen
class _Name:
    ascii: str


@attrs.frozen
class MX:
    preference: int
    exchange: str


@attrs.frozen
class Addr:
    address: str


@attrs.frozen
class Answer:
    records: tuple[Any, ...]
    authentic: bool = False
    canonical_name: str | None = None


class FakeResolver:
    """Answers from a dict {(name, type): records | "nxdomain" | "nodata" | "servfail"}."""

    def __init__(self, data: dict[tuple[str, str], Any] | None = None, authentic: bool = False) -> None:
        self.data = dict(data or {})
        self.authentic = authentic
        self.queries: list[tuple[str, str]] = []

    def _lookup(self, name: Any, rdtype: str) -> Deferred[Any]:
        key = (str(getattr(name, "ascii", name)).rstrip(".").lower(), rdtype)
        self.queries.append(key)
        value = self.data.get(key, "nodata")
        n = _Name(key[0])
        code = {"mx": 15, "a": 1, "aaaa": 28}[rdtype]
        if value == "nxdomain":
            return fail(DNSNotFound(n, code, authentic=self.authentic))  # type: ignore[arg-type]
        if value == "nodata":
            return fail(DNSNoData(n, code, authentic=self.authentic))  # type: ignore[arg-type]
        if value == "servfail":
            return fail(DNSServFail(n, code))  # type: ignore[arg-type]
        if rdtype == "mx":
            recs: tuple[Any, ...] = tuple(MX(p, h) for p, h in value)
        else:
            recs = tuple(Addr(a) for a in value)
        return succeed(Answer(recs, self.authentic, key[0]))

    def lookup_mx(self, name: Any) -> Deferred[Any]:
        return self._lookup(name, "mx")

    def lookup_a(self, name: Any) -> Deferred[Any]:
        return self._lookup(name, "a")

    def lookup_aaaa(self, name: Any) -> Deferred[Any]:
        return self._lookup(name, "aaaa")
