"""Forwarding: local addresses whose mail is sent on to other addresses, and the way
back for bounces (SRS, ``mxd.srs``).

A rule maps one local address (``[[forward]]`` in the config) to up to ``MAX_TARGETS``
addresses, keeping a local copy or not.  The SMTP server asks ``rule_for`` at RCPT; a
forwarded message is queued like a relayed one, with its envelope sender rewritten by
``envelope_sender`` (SRS) so that SPF at the next hop checks our domain (RFC 7208 §1.2.1
names forwarding as what breaks SPF; SRS is the usual remedy), and the message checker
adds an ARC set (RFC 8617 §5.1) so the next hop can see how the message authenticated
here.  Bounces come back to the SRS address; ``bounce_target`` checks it was made here
(a keyed hash, so the reverse path is no open relay) and names the original sender.

Pure: no I/O; the clock and the secret are passed in.
"""

from __future__ import annotations

import attrs

from mxd.srs import SRS, SRSError, is_srs

MAX_TARGETS = 10


@attrs.frozen
class ForwardRule:
    address: str  # normalised local address (local@a-label-domain)
    targets: tuple[str, ...]
    keep_copy: bool = False

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2]


class Forwarder:
    """The forwarding rules of this server and its SRS secret."""

    def __init__(self, rules: list[ForwardRule], srs: SRS, clock: object,
                 separator: str = "+") -> None:
        self.rules = {r.address: r for r in rules}
        self.srs = srs
        self.clock = clock
        self.separator = separator

    def _now(self) -> float:
        return float(self.clock.seconds())  # type: ignore[attr-defined]

    def rule_for(self, normalised: str) -> ForwardRule | None:
        """The rule for a normalised recipient, also for ``local+tag@domain``."""
        rule = self.rules.get(normalised)
        if rule is None and self.separator:
            local, _, domain = normalised.rpartition("@")
            base = local.split(self.separator, 1)[0]
            if base and base != local:
                rule = self.rules.get(f"{base}@{domain}")
        return rule

    @staticmethod
    def is_bounce_address(local_part: str) -> bool:
        return is_srs(local_part)

    def bounce_target(self, address: str) -> str:
        """Where mail to our SRS ``address`` goes (the original sender); SRSError when it
        was not made here or has expired."""
        return self.srs.reverse(address, self._now())

    def unwrap(self, address: str) -> str:
        """The original sender behind one of our SRS addresses, else ``address``: a DSN
        the queue makes about a forwarded copy goes straight to the original sender."""
        if not is_srs(address.rpartition("@")[0]):
            return address
        try:
            return self.bounce_target(address)
        except SRSError:
            return address

    def envelope_sender(self, mail_from: str, domain: str) -> str:
        """The envelope sender of a forwarded copy: ``mail_from`` rewritten into
        ``domain`` (the forwarding address's domain); the null sender stays null."""
        try:
            return self.srs.forward(mail_from, domain, self._now())
        except SRSError:
            return ""  # not an address at all: send it on as a bounce would be


__all__ = ["MAX_TARGETS", "ForwardRule", "Forwarder", "SRSError"]
