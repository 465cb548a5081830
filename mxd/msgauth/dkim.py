"""DomainKeys Identified Mail (DKIM) verification, RFC 6376, with RFC 8463 (Ed25519-SHA256)
and RFC 8301 (no rsa-sha1, no RSA keys under 1024 bits).

The body is hashed while it arrives: ``Verifier(header_section)`` parses the signatures
and sets up one streaming body hash per distinct (canonicalisation, hash, l=) triple;
``feed`` takes body bytes as SMTP delivers them; ``finish`` fetches the keys through the
resolver passed in and returns one ``DKIMResult`` per signature, each with the DNSSEC
status of its key record.  Canonicalisation, signature parsing and the signature check are
pure functions; ``mxd.msgauth.dkimsign`` uses them to sign.
"""

from __future__ import annotations

import base64
import binascii
import enum
import functools
import hashlib
import re
from typing import Any

import attrs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from twisted.internet.defer import Deferred

from mxd.dns.errors import DNSNegativeAnswer, DNSTemporaryError, DomainError
from mxd.dns.interfaces import IResolver
from mxd.dns.names import Domain
from mxd.msgauth.headers import Field, split_fields

MAX_SIGNATURES = 8  # verified per message; more are reported as policy (bounded cost)
MAX_SIGNED_HEADERS = 64


class Result(enum.StrEnum):
    """Results of the ``dkim`` method (RFC 8601 §2.7.1)."""

    NONE = "none"
    PASS = "pass"
    FAIL = "fail"
    POLICY = "policy"
    NEUTRAL = "neutral"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"



class DKIMSyntaxError(ValueError):
    """A DKIM-Signature or key record is malformed (RFC 6376 §6.1.1, §6.1.2: PERMFAIL)."""


@attrs.frozen
class Signature:
    """A parsed DKIM-Signature field (RFC 6376 §3.5)."""

    field: Field
    algorithm: str  # "rsa-sha256" | "ed25519-sha256" | "rsa-sha1"
    header_canon: str  # "simple" | "relaxed"
    body_canon: str
    domain: str  # d=, lower case
    selector: str
    signed_headers: tuple[str, ...]  # h=, lower case, in order
    body_hash: bytes
    signature: bytes
    auid: str  # i=, default "@" + d
    length: int | None = None  # l=
    timestamp: int | None = None  # t=
    expiration: int | None = None  # x=

    @property
    def hash_name(self) -> str:
        return "sha1" if self.algorithm == "rsa-sha1" else "sha256"


@attrs.frozen
class DKIMResult:
    """The outcome of one signature, with what Authentication-Results reports
    (RFC 8601 §2.7.1: header.d, header.i, header.s, header.a, header.b)."""

    result: Result
    domain: str = ""
    selector: str = ""
    auid: str = ""
    algorithm: str = ""
    b: str = ""  # the first characters of the signature (RFC 6008 header.b)
    reason: str = ""
    authentic: bool = False  # the key record was DNSSEC-validated
    unsigned_body: int = 0  # octets of the canonical body beyond l= (not covered)


_TAG_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_B64_WS = str.maketrans("", "", " \t\r\n")


def parse_tags(text: str) -> dict[str, str]:
    """tag-list (RFC 6376 §3.2): ``tag=value`` pairs separated by ``;``, FWS around.
    Duplicate tags are an error."""
    tags: dict[str, str] = {}
    parts = text.split(";")
    for index, part in enumerate(parts):
        part = part.strip(" \t\r\n")
        if not part:
            if index == len(parts) - 1:
                continue  # a trailing ";" is allowed
            raise DKIMSyntaxError("empty tag (\";;\")")
        name, eq, value = part.partition("=")
        name = name.strip(" \t\r\n")
        if not eq or not _TAG_NAME.fullmatch(name):
            raise DKIMSyntaxError(f"bad tag {part[:40]!r}")
        if name in tags:
            raise DKIMSyntaxError(f"duplicate tag {name}=")
        tags[name] = value.strip(" \t\r\n")
    return tags


def _b64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value.translate(_B64_WS), validate=True)
    except (binascii.Error, ValueError):
        raise DKIMSyntaxError(f"{what} is not valid base64") from None


def _int(value: str, what: str) -> int:
    if not value.isdigit() or len(value) > 76:
        raise DKIMSyntaxError(f"{what} is not a number")
    return int(value)


def parse_signature(field: Field) -> Signature:
    """Parse and check a DKIM-Signature field (RFC 6376 §3.5, §6.1.1)."""
    try:
        text = field.value.decode("ascii")
    except UnicodeDecodeError:
        raise DKIMSyntaxError("non-ASCII DKIM-Signature") from None
    tags = parse_tags(text)
    for required in ("v", "a", "b", "bh", "d", "h", "s"):
        if required not in tags:
            raise DKIMSyntaxError(f"missing {required}= tag")
    if tags["v"] != "1":
        raise DKIMSyntaxError(f"unsupported version v={tags['v']}")
    algorithm = tags["a"].lower()
    if algorithm not in ("rsa-sha256", "ed25519-sha256", "rsa-sha1"):
        raise DKIMSyntaxError(f"unknown algorithm a={algorithm}")
    canon = tags.get("c", "simple/simple").lower()
    header_canon, _, body_canon = canon.partition("/")
    body_canon = body_canon or "simple"
    if header_canon not in ("simple", "relaxed") or body_canon not in ("simple", "relaxed"):
        raise DKIMSyntaxError(f"unknown canonicalization c={canon}")
    domain = tags["d"].lower().rstrip(".")
    selector = tags["s"].lower()
    try:
        Domain.parse(domain)
        Domain.parse(f"{selector}._domainkey.{domain}")
    except DomainError:
        raise DKIMSyntaxError(f"bad d= or s= ({tags['s']}._domainkey.{tags['d']})") from None
    signed = tuple(h.strip(" \t\r\n").lower() for h in tags["h"].split(":"))
    if "from" not in signed:
        raise DKIMSyntaxError("h= does not include From (RFC 6376 §5.4)")
    if len(signed) > MAX_SIGNED_HEADERS or any(not h for h in signed):
        raise DKIMSyntaxError("bad h= list")
    auid = tags.get("i", "@" + domain)
    auid_domain = auid.rpartition("@")[2].lower().rstrip(".")
    if "@" not in auid or not (auid_domain == domain or auid_domain.endswith("." + domain)):
        raise DKIMSyntaxError(f"i={auid} is not in d={domain} (RFC 6376 §3.5)")
    if tags.get("q", "dns/txt").lower() != "dns/txt":
        raise DKIMSyntaxError(f"unknown query method q={tags['q']}")
    length = _int(tags["l"], "l=") if "l" in tags else None
    timestamp = _int(tags["t"], "t=") if "t" in tags else None
    expiration = _int(tags["x"], "x=") if "x" in tags else None
    if timestamp is not None and expiration is not None and expiration < timestamp:
        raise DKIMSyntaxError("x= is before t=")
    return Signature(field, algorithm, header_canon, body_canon, domain, selector, signed,
                     _b64(tags["bh"], "bh="), _b64(tags["b"], "b="), auid, length,
                     timestamp, expiration)


# -- canonicalisation (RFC 6376 §3.4) --------------------------------------------------------

_WSP_RUN = re.compile(rb"[ \t]+")
_WSP_TO_CHANGE = re.compile(rb"[ \t]{2,}|\t")  # what relaxed body canonicalisation changes
_FOLD = re.compile(rb"\r\n(?=[ \t])")


def canon_header(field: Field | bytes, relaxed: bool) -> bytes:
    """One header field canonicalised, ending in CRLF (§3.4.1, §3.4.2)."""
    raw = field.raw if isinstance(field, Field) else field
    if not relaxed:
        return raw if raw.endswith(b"\r\n") else raw + b"\r\n"
    name, _, value = raw.partition(b":")
    value = _FOLD.sub(b"", value.removesuffix(b"\r\n"))
    value = _WSP_RUN.sub(b" ", value).strip(b" ")
    return name.rstrip(b" \t").lower() + b":" + value + b"\r\n"


class BodyCanonicalizer:
    """Streaming body canonicalisation (§3.4.3 simple, §3.4.4 relaxed): ``feed`` returns
    the canonical bytes that are certain so far; trailing empty lines are held back until
    non-empty content follows, as both algorithms drop them at the end."""

    def __init__(self, relaxed: bool) -> None:
        self.relaxed = relaxed
        self._carry = b""
        self._pending = 0  # empty lines held back
        self._emitted = False

    def _relax(self, lines: bytes) -> bytes:
        # A single space is already canonical: only runs and tabs need replacing, which
        # keeps the common case (prose with single spaces) to one scan.
        if b"\t" in lines or b"  " in lines:
            lines = _WSP_TO_CHANGE.sub(b" ", lines)
        return lines.replace(b" \r\n", b"\r\n")

    def feed(self, data: bytes) -> bytes:
        buf = self._carry + data if self._carry else data
        idx = buf.rfind(b"\r\n")
        if idx < 0:
            self._carry = buf
            return b""
        complete, self._carry = buf[: idx + 2], buf[idx + 2:]
        if self.relaxed:
            complete = self._relax(complete)
        body = complete.rstrip(b"\r\n")
        trailing = (len(complete) - len(body)) // 2
        if not body and len(complete) == 2 * trailing:
            self._pending += trailing
            return b""
        out = b"\r\n" * self._pending + body + b"\r\n"
        self._pending = trailing - 1
        self._emitted = True
        return out

    def finish(self) -> bytes:
        tail = self._carry
        self._carry = b""
        if self.relaxed:
            tail = _WSP_RUN.sub(b" ", tail).rstrip(b" ")
        if tail:
            self._emitted = True
            return b"\r\n" * self._pending + tail + b"\r\n"
        if not self._emitted and not self.relaxed:
            return b"\r\n"  # §3.4.3: an empty body is one CRLF
        return b""


class BodyHasher:
    """A streaming body hash for one (canonicalisation, hash, l=) combination."""

    def __init__(self, relaxed: bool, hash_name: str, length: int | None) -> None:
        self._canon = BodyCanonicalizer(relaxed)
        self._hash = hashlib.new(hash_name)
        self._length = length
        self.total = 0  # canonical octets seen (hashed or not)

    def _take(self, data: bytes) -> None:
        if not data:
            return
        if self._length is not None:
            room = self._length - self.total
            if room > 0:
                self._hash.update(data[:room])
        else:
            self._hash.update(data)
        self.total += len(data)

    def feed(self, data: bytes) -> None:
        self._take(self._canon.feed(data))

    def digest(self) -> bytes:
        self._take(self._canon.finish())
        return self._hash.digest()


def body_hash(body: bytes, relaxed: bool, hash_name: str = "sha256",
              length: int | None = None) -> bytes:
    """The body hash of a whole body at once (signing, tests)."""
    h = BodyHasher(relaxed, hash_name, length)
    h.feed(body)
    return h.digest()


_B_VALUE = re.compile(rb"((?:^|;)[ \t\r\n]*b[ \t\r\n]*=)[^;]*", re.S)


def signed_data(fields: list[Field], signed_headers: tuple[str, ...], sig_field: Field,
                relaxed: bool) -> bytes:
    """The header hash input (§3.7): the h= fields, each the last not-yet-used instance
    from the bottom (a name with no instance left contributes nothing), then the
    signature field with its b= value emptied and no final CRLF."""
    by_name: dict[str, list[Field]] = {}
    for f in fields:
        by_name.setdefault(f.lname, []).append(f)
    parts: list[bytes] = []
    for name in signed_headers:
        stack = by_name.get(name)
        if stack:
            parts.append(canon_header(stack.pop(), relaxed))
    fname, _, value = sig_field.raw.partition(b":")
    emptied = fname + b":" + _B_VALUE.sub(rb"\1", value, count=1)
    parts.append(canon_header(emptied, relaxed).removesuffix(b"\r\n"))
    return b"".join(parts)


# -- keys (RFC 6376 §3.6.1) ------------------------------------------------------------------

@attrs.frozen
class Key:
    algorithm: str  # "rsa" | "ed25519"
    public: Any = attrs.field(repr=False)
    hashes: tuple[str, ...] = ("sha1", "sha256")
    strict_domain: bool = False  # t=s
    testing: bool = False  # t=y

    @property
    def bits(self) -> int:
        return int(self.public.key_size) if self.algorithm == "rsa" else 256


@functools.lru_cache(maxsize=256)
def parse_key(txt: bytes) -> Key:
    """A key record; DKIMSyntaxError for anything not usable (revoked keys included).
    Cached: the same few keys sign most of the mail a server receives."""
    try:
        tags = parse_tags(txt.decode("ascii"))
    except UnicodeDecodeError:
        raise DKIMSyntaxError("non-ASCII key record") from None
    if tags.get("v", "DKIM1") != "DKIM1":
        raise DKIMSyntaxError(f"key record v={tags['v']}")
    if "p" not in tags:
        raise DKIMSyntaxError("key record without p=")
    if not tags["p"]:
        raise DKIMSyntaxError("key revoked (empty p=)")
    kind = tags.get("k", "rsa").lower()
    services = [s.strip() for s in tags.get("s", "*").split(":")]
    if "*" not in services and "email" not in services:
        raise DKIMSyntaxError("key not for email (s=)")
    flags = [f.strip() for f in tags.get("t", "").split(":")]
    hash_algs = tuple(h.strip().lower() for h in tags["h"].split(":")) if "h" in tags else (
        "sha1", "sha256")
    raw = _b64(tags["p"], "p=")
    public: Any
    if kind == "rsa":
        try:
            public = serialization.load_der_public_key(raw)
        except (ValueError, TypeError):
            raise DKIMSyntaxError("p= is not an RSA public key") from None
        if not isinstance(public, rsa.RSAPublicKey):
            raise DKIMSyntaxError("k=rsa but p= is another key type")
    elif kind == "ed25519":
        if len(raw) != 32:
            raise DKIMSyntaxError("Ed25519 p= must be 32 octets (RFC 8463 §4.2)")
        public = ed25519.Ed25519PublicKey.from_public_bytes(raw)
    else:
        raise DKIMSyntaxError(f"unknown key type k={kind}")
    return Key(kind, public, hash_algs, "s" in flags, "y" in flags)


def check_signature(sig: Signature, key: Key, data: bytes) -> str | None:
    """None when ``sig.signature`` is valid for ``data`` under ``key``, else the reason."""
    if sig.algorithm.split("-")[0] != key.algorithm:
        return f"a={sig.algorithm} does not match k={key.algorithm}"
    if sig.hash_name not in key.hashes:
        return f"key does not allow {sig.hash_name} (h=)"
    try:
        if key.algorithm == "rsa":
            key.public.verify(sig.signature, data, padding.PKCS1v15(),
                              hashes.SHA256() if sig.hash_name == "sha256" else hashes.SHA1())
        else:
            # RFC 8463 §3: Ed25519 signs the SHA-256 hash of the header hash input.
            key.public.verify(sig.signature, hashlib.sha256(data).digest())
    except InvalidSignature:
        return "signature did not verify"
    return None


# -- verification of a received message ------------------------------------------------------

class Verifier:
    """Verifies every DKIM-Signature of one message, hashing the body as it streams."""

    def __init__(self, header_section: bytes, fields: list[Field] | None = None) -> None:
        self.fields = fields if fields is not None else split_fields(header_section)
        self.results: list[DKIMResult | Signature] = []
        self._hashers: dict[tuple[str, str, int | None], BodyHasher] = {}
        count = 0
        for f in self.fields:
            if f.lname != "dkim-signature":
                continue
            count += 1
            if count > MAX_SIGNATURES:
                self.results.append(DKIMResult(Result.POLICY, reason=f"more than "
                                               f"{MAX_SIGNATURES} signatures; not verified"))
                continue
            try:
                sig = parse_signature(f)
            except DKIMSyntaxError as e:
                ids = _ids(f)
                self.results.append(DKIMResult(Result.PERMERROR, ids.get("domain", ""),
                                               ids.get("selector", ""), reason=str(e)))
                continue
            self.results.append(sig)
            k = (sig.body_canon, sig.hash_name, sig.length)
            if k not in self._hashers:
                self._hashers[k] = BodyHasher(sig.body_canon == "relaxed", sig.hash_name,
                                              sig.length)

    @property
    def wants_body(self) -> bool:
        return bool(self._hashers)

    def feed(self, data: bytes) -> None:
        for h in self._hashers.values():
            h.feed(data)

    async def finish(self, resolver: IResolver, now: float) -> list[DKIMResult]:
        digests = {k: (h.digest(), h.total) for k, h in self._hashers.items()}
        out: list[DKIMResult] = []
        for item in self.results:
            if isinstance(item, DKIMResult):
                out.append(item)
                continue
            digest, total = digests[(item.body_canon, item.hash_name, item.length)]
            out.append(await _verify_one(resolver, self.fields, item, digest, total, now))
        return out


def _ids(f: Field) -> dict[str, str]:
    """d=/s=/b= of a signature that did not parse, for the report (best effort)."""
    found: dict[str, str] = {}
    text = f.value.decode("ascii", "replace")
    for tag, key in (("d", "domain"), ("s", "selector")):
        m = re.search(rf"(?:^|;)\s*{tag}\s*=\s*([^;\s]+)", text)
        if m:
            found[key] = m.group(1)[:253].lower()
    return found


def _summary(sig: Signature, **kw: Any) -> DKIMResult:
    return DKIMResult(domain=sig.domain, selector=sig.selector, auid=sig.auid,
                      algorithm=sig.algorithm,
                      b=base64.b64encode(sig.signature).decode("ascii")[:12], **kw)


async def _verify_one(resolver: IResolver, fields: list[Field], sig: Signature,
                      digest: bytes, total: int, now: float) -> DKIMResult:
    if sig.algorithm == "rsa-sha1":
        return _summary(sig, result=Result.FAIL, reason="rsa-sha1 is not accepted (RFC 8301 §3.1)")
    if sig.expiration is not None and sig.expiration < now:
        return _summary(sig, result=Result.PERMERROR, reason="signature expired (x=)")
    if sig.length is not None and sig.length > total:
        return _summary(sig, result=Result.FAIL, reason=f"l={sig.length} is longer than the body")
    unsigned = total - sig.length if sig.length is not None else 0
    name = f"{sig.selector}._domainkey.{sig.domain}"
    try:
        answer = await resolver.lookup_txt(name)
    except DNSNegativeAnswer as e:
        return _summary(sig, result=Result.PERMERROR, reason=f"no key record at {name}",
                        authentic=e.authentic)
    except DNSTemporaryError as e:
        return _summary(sig, result=Result.TEMPERROR, reason=f"key lookup {name}: {e}")
    except DomainError:
        return _summary(sig, result=Result.PERMERROR, reason=f"bad key name {name}")
    authentic = bool(answer.authentic)
    if not answer.records:
        return _summary(sig, result=Result.PERMERROR, reason=f"no key record at {name}",
                        authentic=authentic)
    try:
        key = parse_key(answer.records[0])
    except DKIMSyntaxError as e:
        return _summary(sig, result=Result.PERMERROR, reason=str(e), authentic=authentic)
    if key.strict_domain and sig.auid.rpartition("@")[2].lower() != sig.domain:
        return _summary(sig, result=Result.PERMERROR, authentic=authentic,
                        reason="key has t=s but i= is a subdomain of d=")
    if key.algorithm == "rsa" and key.bits < 1024:
        return _summary(sig, result=Result.FAIL, authentic=authentic,
                        reason=f"RSA key of {key.bits} bits (RFC 8301 §3.2)")
    if digest != sig.body_hash:
        return _summary(sig, result=Result.FAIL, authentic=authentic,
                        reason="body hash did not verify")
    data = signed_data(fields, sig.signed_headers, sig.field, sig.header_canon == "relaxed")
    problem = check_signature(sig, key, data)
    if problem is not None:
        return _summary(sig, result=Result.FAIL, reason=problem, authentic=authentic)
    reason = "l= leaves part of the body unsigned" if unsigned else ""
    if key.testing:
        reason = (reason + "; " if reason else "") + "key in testing mode (t=y)"
    return _summary(sig, result=Result.PASS, reason=reason, authentic=authentic,
                    unsigned_body=unsigned)


def verify_message(resolver: IResolver, message: bytes, now: float) -> Deferred[list[DKIMResult]]:
    """Verify a whole message held in memory (tests, tools)."""
    idx = message.find(b"\r\n\r\n")
    header, body = (message[: idx + 2], message[idx + 4:]) if idx >= 0 else (message, b"")
    v = Verifier(header)
    v.feed(body)
    return Deferred.fromCoroutine(v.finish(resolver, now))
