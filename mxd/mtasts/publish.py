"""Publishing our own MTA-STS policy (RFC 8461 §3.1, §3.2): the policy file and its id (pure).

The ``_mta-sts`` TXT record carries an ``id`` that senders compare with the one they cached;
it must change whenever the policy changes (§3.1), so it is derived from the policy text:
the first 20 characters of the base32 SHA-256 of the policy file.  `mxd dns records` prints
it; `mxd dns check` compares the published id with the policy mxd serves.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence

from mxd.mtasts.policy import Mode, MXPattern, Policy


def policy_for(mode: str, max_age: int, mx: Sequence[str]) -> Policy:
    """The policy served for our domains (RFC 8461 §3.2)."""
    return Policy(Mode(mode), max_age, tuple(MXPattern.parse(m) for m in mx))


def policy_id(policy: Policy) -> str:
    """An id (1 to 32 letters or digits, RFC 8461 §3.1) that changes with the policy."""
    digest = hashlib.sha256(policy.to_text().encode("ascii")).digest()
    return base64.b32encode(digest).decode("ascii").rstrip("=")[:20]


def txt_record(policy: Policy) -> str:
    """The ``_mta-sts.<domain>`` TXT record value for ``policy``."""
    return f"v=STSv1; id={policy_id(policy)}"
