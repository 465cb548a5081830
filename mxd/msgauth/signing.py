"""DKIM signing on submission (the SMTP server's ``IMessageChecker`` for 587/465) and for
mxd's own messages: the keys of the From domain (or its closest configured parent) sign,
one signature per configured selector (RFC 6376 §5, RFC 8463 §3)."""

from __future__ import annotations

from pathlib import Path

from twisted.internet.defer import Deferred, succeed

from mxd.msgauth.dkimkeys import DKIMKey, load_key
from mxd.msgauth.dkimsign import Signer, sign_message
from mxd.msgauth.headers import from_domains, split_fields
from mxd.smtp.interfaces import SessionInfo, Verdict


def load_keys(key_dir: Path, selectors: dict[str, list[str]]) -> dict[str, list[DKIMKey]]:
    """Every configured key, by A-label domain; DKIMKeyError names a missing/bad file."""
    from mxd.config import normalise_domain

    return {normalise_domain(d): [load_key(key_dir, d, s) for s in sels]
            for d, sels in selectors.items()}


class KeyRing:
    """Which keys sign mail from a domain."""

    def __init__(self, keys: dict[str, list[DKIMKey]]) -> None:
        self.keys = keys

    def for_domain(self, domain: str) -> list[DKIMKey]:
        d = domain.lower().rstrip(".")
        while d:
            if d in self.keys:
                return self.keys[d]
            d = d.partition(".")[2]
        return []

    def sign(self, message: bytes, now: float, extra_headers: tuple[str, ...] = ()) -> bytes:
        """Sign a whole message held in memory (DSNs, reports) by its From domain;
        ``extra_headers``: more fields to sign when present (see dkimsign.header_list)."""
        idx = message.find(b"\r\n\r\n")
        domains = from_domains(split_fields(message[: idx + 2] if idx >= 0 else message))
        keys = self.for_domain(domains[0]) if domains else []
        return sign_message(keys, message, int(now), extra_headers) if keys else message


class SubmissionSigner:
    """Signs what authenticated users submit."""

    def __init__(self, ring: KeyRing, clock: object) -> None:
        self.ring = ring
        self.clock = clock

    def begin(self, session: SessionInfo, headers: bytes) -> SigningCheck | None:
        if session.role == "smtp":
            return None
        domains = from_domains(split_fields(headers))
        keys = self.ring.for_domain(domains[0]) if domains else []
        if not keys and session.mail_from:
            keys = self.ring.for_domain(session.mail_from.rpartition("@")[2])
        if not keys:
            return None
        return SigningCheck(keys, headers, self.clock)


class SigningCheck:
    def __init__(self, keys: list[DKIMKey], headers: bytes, clock: object) -> None:
        self.signer = Signer(keys)
        self.headers = headers
        self.clock = clock

    def feed(self, data: bytes) -> None:
        self.signer.feed(data)

    def finish(self) -> Deferred[Verdict]:
        now = int(self.clock.seconds())  # type: ignore[attr-defined]
        return succeed(Verdict(fields=tuple(self.signer.finish(self.headers, now))))
