"""The MTA-STS policy cache (RFC 8461 §5.1): policies survive restarts and failed fetches.

A cached policy is kept until ``fetched_at + max_age``; the TXT record's ``id`` tells when to
fetch a new one.  Two implementations of ``IPolicyCache``: ``MemoryPolicyCache`` (tests, and
a process without a data directory) and ``JSONFilePolicyCache``, one JSON file in the data
directory written atomically (temporary file, fsync, rename), so a crash never leaves a
half-written cache; an unreadable file is set aside (``.corrupt``) and the cache starts empty.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Protocol

import attrs
from twisted.logger import Logger

from mxd.mtasts.policy import Policy, PolicySyntaxError, parse_policy

log = Logger()


@attrs.frozen
class CachedPolicy:
    """A policy as fetched: its text, the TXT id it was fetched for, and when."""

    domain: str
    policy: Policy
    text: str
    txt_id: str
    fetched_at: float

    @property
    def expires_at(self) -> float:
        return self.fetched_at + self.policy.max_age

    def expired(self, now: float) -> bool:
        return now >= self.expires_at


class IPolicyCache(Protocol):
    """Where policies are kept between lookups and restarts."""

    def get(self, domain: str) -> CachedPolicy | None: ...

    def put(self, entry: CachedPolicy) -> None: ...

    def delete(self, domain: str) -> None: ...

    def domains(self) -> list[str]: ...


def _key(domain: str) -> str:
    return domain.rstrip(".").lower()


class MemoryPolicyCache:
    """A cache in a dict."""

    def __init__(self) -> None:
        self._entries: dict[str, CachedPolicy] = {}

    def get(self, domain: str) -> CachedPolicy | None:
        return self._entries.get(_key(domain))

    def put(self, entry: CachedPolicy) -> None:
        self._entries[_key(entry.domain)] = entry

    def delete(self, domain: str) -> None:
        self._entries.pop(_key(domain), None)

    def domains(self) -> list[str]:
        return sorted(self._entries)


class JSONFilePolicyCache(MemoryPolicyCache):
    """A cache kept in one JSON file (``mta-sts-cache.json`` in the data directory)."""

    VERSION = 1

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self.path = Path(path)
        self._load()

    def _load(self) -> None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict) or doc.get("version") != self.VERSION:
                raise ValueError("unknown cache format")
            for item in doc.get("policies", []):
                entry = _from_json(item)
                self._entries[_key(entry.domain)] = entry
        except (ValueError, TypeError, KeyError, PolicySyntaxError) as e:
            aside = self.path.with_suffix(self.path.suffix + ".corrupt")
            log.warn("MTA-STS cache {path} unreadable ({error}); moved to {aside}",
                     path=str(self.path), error=str(e), aside=str(aside))
            self._entries.clear()
            os.replace(self.path, aside)

    def _save(self) -> None:
        doc = {"version": self.VERSION,
               "policies": [_to_json(e) for _, e in sorted(self._entries.items())]}
        data = json.dumps(doc, indent=1, sort_keys=True).encode()
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        try:
            dfd = os.open(self.path.parent, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def put(self, entry: CachedPolicy) -> None:
        super().put(entry)
        self._save()

    def delete(self, domain: str) -> None:
        if _key(domain) in self._entries:
            super().delete(domain)
            self._save()


def _to_json(e: CachedPolicy) -> dict[str, Any]:
    return {"domain": e.domain, "text": e.text, "txt_id": e.txt_id, "fetched_at": e.fetched_at}


def _from_json(item: dict[str, Any]) -> CachedPolicy:
    text = item["text"]
    if not isinstance(text, str) or not isinstance(item["domain"], str):
        raise TypeError("bad cache entry")
    return CachedPolicy(_key(item["domain"]), parse_policy(text), text, str(item["txt_id"]),
                        float(item["fetched_at"]))
