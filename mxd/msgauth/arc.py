"""Authenticated Received Chain (ARC), RFC 8617: chain validation and sealing.

An ARC set is one ARC-Authentication-Results (AAR), ARC-Message-Signature (AMS) and
ARC-Seal (AS) with the same instance ``i=``.  ``validate`` implements §5.2: the sets must
be complete and numbered 1..N (N ≤ 50), AS(1) has cv=none and every later AS cv=pass,
the newest AMS verifies (a DKIM-style signature over the header fields it lists and the
body, §4.1.2), and every AS verifies over the sets up to its own (§4.1.3, relaxed header
canonicalisation).  ``seal`` adds the next set when mxd forwards a message (§5.1).
Keys come through the resolver passed in, so ``authentic`` says whether every key
record was DNSSEC-validated.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import re
from typing import Any

import attrs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, padding

from mxd.dns.errors import DNSNegativeAnswer, DNSTemporaryError, DomainError
from mxd.dns.interfaces import IResolver
from mxd.dns.names import Domain
from mxd.msgauth.dkim import (
    BodyHasher,
    DKIMSyntaxError,
    canon_header,
    parse_key,
    parse_tags,
    signed_data,
)
from mxd.msgauth.dkimkeys import DKIMKey
from mxd.msgauth.headers import Field, split_fields

MAX_INSTANCE = 50  # RFC 8617 §4.2.1
ARC_NAMES = ("arc-authentication-results", "arc-message-signature", "arc-seal")


class ARCResult(enum.StrEnum):
    """Chain validation status, cv= (RFC 8617 §4.4)."""

    NONE = "none"
    PASS = "pass"
    FAIL = "fail"


@attrs.frozen
class ARCOutcome:
    result: ARCResult
    instances: int = 0
    reason: str = ""
    authentic: bool = False
    temporary: bool = False  # a key lookup failed temporarily (the result says fail)


class _Fail(Exception):
    """Ends validation with cv=fail (control flow, not an error)."""

    def __init__(self, reason: str, temporary: bool = False) -> None:
        self.reason = reason
        self.temporary = temporary


@attrs.frozen
class _Set:
    aar: Field
    ams: Field
    ams_tags: dict[str, str]
    seal: Field
    seal_tags: dict[str, str]


# A missing c= in an AMS: RFC 8617 §4.1.2 inherits DKIM's default (simple/simple), but the
# ValiMail ARC test suite (following the drafts) signs such AMS relaxed/relaxed and expects
# them to pass. ARC signers in practice always write c=; we follow the suite.
AMS_DEFAULT_CANON = "relaxed/relaxed"

_INSTANCE = re.compile(r"^[1-9][0-9]{0,2}$")
_AAR = re.compile(r"^[ \t\r\n]*i[ \t\r\n]*=[ \t\r\n]*([0-9]+)[ \t\r\n]*;")
_DOMAIN = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                     r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")


def _tags(f: Field) -> dict[str, str]:
    try:
        return parse_tags(f.value.decode("ascii"))
    except (UnicodeDecodeError, DKIMSyntaxError) as e:
        raise _Fail(f"{f.name}: {e}") from None


def _instance(value: str | None, what: str) -> int:
    if value is None or not _INSTANCE.match(value) or int(value) > MAX_INSTANCE:
        raise _Fail(f"{what}: bad or missing i= ({value!r})")
    return int(value)


def _collect(fields: list[Field]) -> dict[int, _Set]:
    """§5.2 steps 1-2: one AAR, AMS and AS per instance, instances 1..N."""
    aars: dict[int, Field] = {}
    amss: dict[int, tuple[Field, dict[str, str]]] = {}
    seals: dict[int, tuple[Field, dict[str, str]]] = {}
    for f in fields:
        if f.lname == "arc-authentication-results":
            m = _AAR.match(f.value.decode("ascii", "replace"))
            i = _instance(m.group(1) if m else None, "ARC-Authentication-Results")
            if i in aars:
                raise _Fail(f"two ARC-Authentication-Results with i={i}")
            aars[i] = f
        elif f.lname in ("arc-message-signature", "arc-seal"):
            tags = _tags(f)
            i = _instance(tags.get("i"), f.name)
            table: dict[int, Any] = amss if f.lname == "arc-message-signature" else seals
            if i in table:
                raise _Fail(f"two {f.name} with i={i}")
            table[i] = (f, tags)
    n = max([*aars, *amss, *seals], default=0)
    sets: dict[int, _Set] = {}
    for i in range(1, n + 1):
        if i not in aars or i not in amss or i not in seals:
            raise _Fail(f"ARC set {i} is incomplete")
        sets[i] = _Set(aars[i], amss[i][0], amss[i][1], seals[i][0], seals[i][1])
    return sets


def _common(tags: dict[str, str], what: str, required: tuple[str, ...]) -> None:
    for t in required:
        if not tags.get(t):
            raise _Fail(f"{what}: missing or empty {t}=")
    if tags["a"] != "rsa-sha256" and tags["a"] != "ed25519-sha256":
        raise _Fail(f"{what}: algorithm a={tags['a']} not accepted")
    if not _DOMAIN.match(tags["d"]):
        raise _Fail(f"{what}: d={tags['d']} is not a domain name")
    if "t" in tags and not tags["t"].isdigit():
        raise _Fail(f"{what}: bad t=")


def _b64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(re.sub(r"[ \t\r\n]", "", value), validate=True)
    except ValueError:
        raise _Fail(f"{what} is not base64") from None


async def _key(resolver: IResolver, tags: dict[str, str], state: dict[str, bool]) -> Any:
    name = f"{tags['s']}._domainkey.{tags['d']}"
    try:
        answer = await resolver.lookup_txt(Domain.parse(name))
    except DomainError:
        raise _Fail(f"bad key name {name}") from None
    except DNSNegativeAnswer:
        raise _Fail(f"no key at {name}") from None
    except DNSTemporaryError as e:
        raise _Fail(f"key lookup {name}: {e}", temporary=True) from None
    state["authentic"] = state["authentic"] and bool(answer.authentic)
    if not answer.records:
        raise _Fail(f"no key at {name}")
    try:
        key = parse_key(answer.records[0])
    except DKIMSyntaxError as e:
        raise _Fail(f"{name}: {e}") from None
    if key.algorithm != tags["a"].split("-")[0]:
        raise _Fail(f"{name}: key type does not match a={tags['a']}")
    if key.algorithm == "rsa" and key.bits < 1024:
        raise _Fail(f"{name}: RSA key of {key.bits} bits (RFC 8301 §3.2)")
    return key


def _verify(key: Any, signature: bytes, data: bytes) -> bool:
    try:
        if key.algorithm == "rsa":
            key.public.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        else:
            key.public.verify(signature, hashlib.sha256(data).digest())
    except InvalidSignature:
        return False
    return True


def _seal_data(sets: dict[int, _Set], upto: int, only_own: bool = False) -> bytes:
    """§4.1.3: AAR, AMS, AS of instances 1..upto, relaxed; the last AS with b= empty.
    ``only_own``: a seal with cv=fail covers only its own set (§5.1.2)."""
    parts: list[bytes] = []
    for i in range(upto if only_own else 1, upto + 1):
        s = sets[i]
        parts.append(canon_header(s.aar, True))
        parts.append(canon_header(s.ams, True))
        if i < upto:
            parts.append(canon_header(s.seal, True))
    parts.append(signed_data([], (), sets[upto].seal, True))
    return b"".join(parts)


class Validator:
    """Validates the ARC chain of one message, hashing the body as it streams (for the
    newest AMS only, which is all that cv depends on)."""

    def __init__(self, fields: list[Field]) -> None:
        self.fields = fields
        self.error: str | None = None
        self.sets: dict[int, _Set] = {}
        self._hasher: BodyHasher | None = None
        try:
            self.sets = _collect(fields)
            if self.sets:
                ams = self.sets[len(self.sets)].ams_tags
                canon = ams.get("c", AMS_DEFAULT_CANON)
                body = canon.partition("/")[2] or "simple"
                if body not in ("simple", "relaxed"):
                    raise _Fail(f"AMS: bad c={canon}")
                self._hasher = BodyHasher(body == "relaxed", "sha256", None)
        except _Fail as e:
            self.error = e.reason

    def feed(self, data: bytes) -> None:
        if self._hasher is not None:
            self._hasher.feed(data)

    async def finish(self, resolver: IResolver) -> ARCOutcome:
        if self.error is not None:
            return ARCOutcome(ARCResult.FAIL, len(self.sets), self.error)
        if not self.sets:
            return ARCOutcome(ARCResult.NONE)
        n = len(self.sets)
        state = {"authentic": True}
        try:
            await self._check(resolver, n, state)
        except _Fail as e:
            return ARCOutcome(ARCResult.FAIL, n, e.reason, False, e.temporary)
        return ARCOutcome(ARCResult.PASS, n, "", state["authentic"])

    async def _check(self, resolver: IResolver, n: int, state: dict[str, bool]) -> None:
        sets = self.sets
        # §5.2 step 3-4: the cv= values of the chain.
        for i in range(n, 0, -1):
            tags = sets[i].seal_tags
            cv = tags.get("cv")
            if cv == "fail":
                raise _Fail(f"AS({i}) says cv=fail")
            if cv != ("none" if i == 1 else "pass"):
                raise _Fail(f"AS({i}) has cv={cv!r}")
            if "h" in tags:
                raise _Fail(f"AS({i}) must not have h= (RFC 8617 §4.1.3)")
        # §5.2 step 5: the newest AMS.
        ams = sets[n].ams_tags
        _common(ams, f"AMS({n})", ("a", "b", "bh", "d", "s"))
        if "h" not in ams:
            raise _Fail(f"AMS({n}): missing h=")
        canon = ams.get("c", AMS_DEFAULT_CANON)
        header_canon = canon.partition("/")[0]
        if header_canon not in ("simple", "relaxed"):
            raise _Fail(f"AMS({n}): bad c={canon}")
        signed = tuple(h.strip(" \t\r\n").lower() for h in ams["h"].split(":")) if ams["h"] else ()
        if "arc-seal" in signed:
            raise _Fail(f"AMS({n}) signs ARC-Seal (RFC 8617 §4.1.2)")
        assert self._hasher is not None
        if self._hasher.digest() != _b64(ams["bh"], f"AMS({n}) bh="):
            raise _Fail(f"AMS({n}): body hash did not verify")
        key = await _key(resolver, ams, state)
        data = signed_data(self.fields, signed, sets[n].ams, header_canon == "relaxed")
        if not _verify(key, _b64(ams["b"], f"AMS({n}) b="), data):
            raise _Fail(f"AMS({n}): signature did not verify")
        # §5.2 step 6: every AS, newest first.
        for i in range(n, 0, -1):
            tags = sets[i].seal_tags
            _common(tags, f"AS({i})", ("a", "b", "cv", "d", "s"))
            key = await _key(resolver, tags, state)
            if not _verify(key, _b64(tags["b"], f"AS({i}) b="),
                           _seal_data(sets, i, only_own=tags.get("cv") == "fail")):
                raise _Fail(f"AS({i}): seal did not verify")


async def validate_message(resolver: IResolver, message: bytes) -> ARCOutcome:
    idx = message.find(b"\r\n\r\n")
    header, body = (message[: idx + 2], message[idx + 4:]) if idx >= 0 else (message, b"")
    v = Validator(split_fields(header))
    v.feed(body)
    return await v.finish(resolver)


# -- sealing (RFC 8617 §5.1) -----------------------------------------------------------------

def _sign(key: DKIMKey, data: bytes) -> str:
    if isinstance(key.private_key, ed25519.Ed25519PrivateKey):
        sig = key.private_key.sign(hashlib.sha256(data).digest())
    else:
        sig = key.private_key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    return base64.b64encode(sig).decode("ascii")


def _loose_tags(f: Field) -> dict[str, str]:
    """The i= of any ARC field, even a broken one (for numbering the next set)."""
    if f.lname == "arc-authentication-results":
        m = _AAR.match(f.value.decode("ascii", "replace"))
        return {"i": m.group(1)} if m else {}
    m = re.search(r"(?:^|;)\s*i\s*=\s*([0-9]+)", f.value.decode("ascii", "replace"))
    return {"i": m.group(1)} if m else {}


def _fold_b(value: str) -> str:
    """b= is written on one line: a later seal covers this field as written, and folding
    inside b= would put spaces into what that seal signs (the ARC suite's seals are made
    over unfolded values). Lines stay far below the 998-octet limit (RFC 5322 §2.1.1)."""
    return value


def seal(key: DKIMKey, fields: list[Field], body_digest: bytes, *, authserv_id: str,
         auth_results: str, cv: ARCResult, signed_headers: tuple[str, ...],
         now: int) -> list[str]:
    """The next ARC set (AAR, AMS, AS, without CRLF) for a message whose relaxed body
    hash is ``body_digest``: ``auth_results`` is our Authentication-Results value after
    the authserv-id, ``cv`` the result of validating the existing chain.  A chain whose
    newest seal already says cv=fail is not sealed again (§5.1.1): the result is []."""
    existing: dict[int, _Set] = {}
    if cv is not ARCResult.NONE:
        try:
            existing = _collect(fields)
        except _Fail:
            existing = {}
        if existing and existing[len(existing)].seal_tags.get("cv") == "fail":
            return []
    i = max((int(t.get("i", "0")) if t.get("i", "0").isdigit() else 0
             for f in fields if f.lname in ARC_NAMES
             for t in [_loose_tags(f)]), default=0) + 1
    if i > MAX_INSTANCE:
        raise ValueError("ARC chain is full (RFC 8617 §4.2.1)")
    algorithm = "ed25519-sha256" if key.algorithm == "ed25519" else "rsa-sha256"
    aar = f"ARC-Authentication-Results: i={i}; {authserv_id}; {auth_results}".rstrip()
    aar_field = Field("ARC-Authentication-Results", aar.encode("utf-8") + b"\r\n")
    all_fields = [*fields, aar_field]
    bh = base64.b64encode(body_digest).decode("ascii")
    ams_head = (f"ARC-Message-Signature: a={algorithm};\r\n b=;\r\n bh={bh}; c=relaxed/relaxed;"
                f"\r\n d={key.domain}; h={':'.join(signed_headers)};\r\n"
                f" i={i}; s={key.selector}; t={now}")
    ams_field = Field("ARC-Message-Signature", ams_head.encode("ascii") + b"\r\n")
    b = _sign(key, signed_data(all_fields, signed_headers, ams_field, True))
    ams = ams_head.replace("\r\n b=;", f"\r\n b={_fold_b(b)};", 1)
    sets = dict(existing)
    as_head = (f"ARC-Seal: a={algorithm};\r\n b=; cv={cv}; d={key.domain}; i={i};"
               f" s={key.selector};\r\n t={now}")
    sets[i] = _Set(aar_field, Field("ARC-Message-Signature", ams.encode("ascii") + b"\r\n"), {},
                   Field("ARC-Seal", as_head.encode("ascii") + b"\r\n"), {})
    b2 = _sign(key, _seal_data(sets, i, only_own=cv is ARCResult.FAIL))
    as_ = as_head.replace("\r\n b=;", f"\r\n b={_fold_b(b2)};", 1)
    return [aar, ams, as_]
