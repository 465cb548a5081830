"""The Sender Rewriting Scheme (SRS, "guarded" form): the envelope sender of mail we forward.

A forwarded message leaves from our address, so SPF at the next hop (RFC 7208 §1.2,
"forwarding") judges our servers against the original sender's domain and fails.  SRS
rewrites the envelope sender into an address of our own domain that carries the original
one, so that SPF checks our domain and a bounce comes back to us, to be sent on to the
original sender (the reverse path).  The form is the one of Shevek's paper and libsrs2 /
postsrsd, which other servers and operators know:

    SRS0=HHHHHH=TT=orig-domain=orig-local@our-domain
    SRS1=HHHHHH=first-domain==HHHHHH=TT=orig-domain=orig-local@our-domain

``TT`` is the day (base 32, modulo 1024) and ``HHHHHH`` a keyed hash over the rest, so
only addresses we made are accepted back (no open relay through the reverse path) and
only for ``max_age_days``.  SRS1 is used when the sender is already an SRS0 address of
another forwarder: we keep the first forwarder's address and hash, so a bounce goes back
along the chain without each hop wrapping it again.

Hash and day are base 32 (case-insensitive): relays and mxd's own address normalisation
may change the case of a local part.  The hash is HMAC-SHA256 truncated to 6 characters
(30 bits), checked in constant time.  Pure functions, no I/O.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

import attrs

_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
HASH_LENGTH = 6
SEPARATORS = "=+-"  # what may follow SRS0/SRS1 (libsrs2 accepts all three)


class SRSError(ValueError):
    """The address is not one of ours, is damaged, or has expired."""


def _day(now: float) -> int:
    return int(now // 86400)


def _timestamp(now: float) -> str:
    d = _day(now) % 1024
    return _B32[d >> 5] + _B32[d & 31]


def _age(tt: str, now: float) -> int:
    """Days since the timestamp ``tt`` was made (modulo 1024)."""
    tt = tt.upper()
    if len(tt) != 2 or any(c not in _B32 for c in tt):
        raise SRSError(f"bad SRS timestamp {tt!r}")
    then = (_B32.index(tt[0]) << 5) | _B32.index(tt[1])
    return (_day(now) - then) % 1024


@attrs.frozen
class SRS:
    """Rewrites with ``secret`` (bytes, kept private) into addresses @``domain``."""

    secret: bytes = attrs.field(repr=False)
    max_age_days: int = 21

    def _hash(self, *parts: str) -> str:
        mac = hmac.new(self.secret, "\0".join(p.lower() for p in parts).encode("utf-8"),
                       hashlib.sha256).digest()
        return base64.b32encode(mac).decode("ascii")[:HASH_LENGTH]

    def _check(self, given: str, *parts: str) -> None:
        if not hmac.compare_digest(given.upper().encode("ascii", "replace"),
                                   self._hash(*parts).encode("ascii")):
            raise SRSError("SRS hash does not match (not made here, or damaged)")

    def forward(self, sender: str, domain: str, now: float) -> str:
        """The envelope sender for mail from ``sender`` forwarded by us (@``domain``).

        The null sender stays null (RFC 5321 §4.5.5: a bounce must not be bounced); an
        address already in ``domain`` is kept (our own SPF covers it)."""
        if not sender:
            return ""
        local, at, sdomain = sender.rpartition("@")
        if not at or not local or not sdomain:
            raise SRSError(f"not an address: {sender!r}")
        if sdomain.lower() == domain.lower():
            return sender
        tag = local[:4].upper()
        if tag in ("SRS0", "SRS1") and len(local) > 5 and local[4] in SEPARATORS:
            return self._forward_srs(local, sdomain, domain)
        tt = _timestamp(now)
        h = self._hash(tt, sdomain, local)
        return f"SRS0={h}={tt}={sdomain}={local}@{domain}"

    def _forward_srs(self, local: str, sdomain: str, domain: str) -> str:
        """SRS1 for a sender that is an SRS0 (or SRS1) address of another forwarder."""
        rest = local[5:]
        if local[:4].upper() == "SRS1":
            # SRS1=HHH=first==rest: keep the first forwarder, rehash for us.
            _h, _, tail = rest.partition("=")
            first, sep, srs0 = tail.partition("==")
            if not sep or not first:
                raise SRSError(f"bad SRS1 address {local!r}")
        else:
            first, srs0 = sdomain, rest
        h = self._hash(first, srs0)
        return f"SRS1={h}={first}=={srs0}@{domain}"

    def reverse(self, address: str, now: float) -> str:
        """The address a bounce to our SRS ``address`` goes back to; SRSError when the
        address was not made by us (hash), is malformed, or is older than max_age_days."""
        local, at, _domain = address.rpartition("@")
        if not at or len(local) < 6 or local[:4].upper() not in ("SRS0", "SRS1") \
                or local[4] not in SEPARATORS:
            raise SRSError("not an SRS address")
        rest = local[5:]
        if local[:4].upper() == "SRS1":
            h, _, tail = rest.partition("=")
            first, sep, srs0 = tail.partition("==")
            if not sep or not first or not srs0:
                raise SRSError("bad SRS1 address")
            self._check(h, first, srs0)
            return f"SRS0={srs0}@{first}"
        parts = rest.split("=", 3)
        if len(parts) != 4:
            raise SRSError("bad SRS0 address")
        h, tt, odomain, olocal = parts
        if not odomain or not olocal:
            raise SRSError("bad SRS0 address")
        self._check(h, tt, odomain, olocal)
        if _age(tt, now) > self.max_age_days:
            raise SRSError(f"SRS address older than {self.max_age_days} days")
        return f"{olocal}@{odomain}"


def is_srs(local_part: str) -> bool:
    """Whether a local part has the SRS form (checked before looking up an account)."""
    return len(local_part) > 5 and local_part[:4].upper() in ("SRS0", "SRS1") \
        and local_part[4] in SEPARATORS
