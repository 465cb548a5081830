"""DKIM against OpenDKIM (Debian opendkim-tools and the opendkim milter in test mode),
with keys served by the DNSSEC lab.

``opendkim-testmsg`` resolves key records through the C library, so it runs in a private
mount namespace whose /etc/resolv.conf names the lab's unbound (``DNSLab.wrap``).  mxd's
own verifier asks the same unbound through ``mxd.dns.Resolver`` and must see the key
records as authentic (the zone is signed).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from mxd.dns.resolver import Resolver
from mxd.dns.testing import run_with_reactor
from mxd.msgauth.dkim import Result, Verifier, check_signature, parse_key, signed_data
from mxd.msgauth.dkimkeys import DKIMKey, generate_key
from mxd.msgauth.dkimsign import sign_message
from mxd.msgauth.headers import split_fields
from tests.integration.dnslab import DNSLab, ZoneSpec
from tests.integration.tools import require_tool

pytestmark = pytest.mark.integration

# libopendkim refuses (dkim_chunk "Syntax error") a message without a Date field.
MSG = (b"From: Alice <a@dkim.test>\r\nTo: b@example.net\r\nSubject: interop\r\n"
       b"Date: Sat, 05 Dec 2026 07:00:00 +0000\r\nMessage-ID: <1@dkim.test>\r\n\r\n"
       b"Hello,\r\n\r\n  spaced   line \r\nbye\r\n")


def _record(key: DKIMKey, zone: str) -> str:
    owner, rdata = key.zone_line().split(". IN ", 1)
    return owner.removesuffix("." + zone) + " IN " + rdata


@pytest.fixture(scope="module")
def lab_keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DNSLab, dict[str, DKIMKey], Path]]:
    require_tool("opendkim-testmsg")
    require_tool("opendkim")
    tmp = tmp_path_factory.mktemp("dkimlab")
    keys = {"rsa": generate_key(tmp / "keys", "dkim.test", "r1", "rsa"),
            "ed25519": generate_key(tmp / "keys", "dkim.test", "e1", "ed25519")}
    # A key made by OpenDKIM's own tool, for the opposite direction.
    subprocess.run([require_tool("opendkim-genkey"), "-D", str(tmp), "-d", "dkim.test",
                    "-s", "odk"], check=True, capture_output=True)
    # odk.txt is a zone-file line: odk._domainkey IN TXT ( "..." "..." ) ; ----- comment
    odk_txt = (tmp / "odk.txt").read_text()
    odk_record = "odk._domainkey " + odk_txt.split("_domainkey", 1)[1].split(";  -----")[0].strip()
    lab = DNSLab(tmp / "lab").start({"dkim.test": ZoneSpec(
        records=[_record(k, "dkim.test") for k in keys.values()] + [odk_record], signed=True)},
        port53=True)
    try:
        yield lab, keys, tmp
    finally:
        lab.stop()


def _opendkim(lab: DNSLab, tmp: Path, message: bytes, *sign_args: str) -> subprocess.CompletedProcess[bytes]:
    # opendkim-testmsg reads a file (LF line endings) as standard input.
    path = tmp / "in.eml"
    path.write_bytes(message.replace(b"\r\n", b"\n"))
    argv = [require_tool("opendkim-testmsg"), *sign_args]
    with path.open("rb") as fh:
        return subprocess.run(lab.wrap(argv) if not sign_args else argv, stdin=fh,
                              capture_output=True, timeout=30)


@pytest.mark.parametrize("alg", ["rsa", "ed25519"])
def test_opendkim_verifies_mxd_signature(lab_keys, alg: str) -> None:  # type: ignore[no-untyped-def]
    """mxd-signed messages (RSA-SHA256, Ed25519-SHA256) verify in OpenDKIM; a changed
    body is a bad signature there."""
    lab, keys, tmp = lab_keys
    signed = sign_message([keys[alg]], MSG, int(time.time()))
    ok = _opendkim(lab, tmp, signed)
    assert ok.returncode == 0, ok.stderr
    bad = _opendkim(lab, tmp, signed.replace(b"bye", b"bye!"))
    assert bad.returncode != 0 and b"Bad signature" in bad.stderr


def _verify_in_mxd(lab: DNSLab, message: bytes) -> list:  # type: ignore[type-arg]
    async def run(reactor) -> list:  # type: ignore[no-untyped-def, type-arg]
        resolver = Resolver(reactor, lab.resolver_settings(cache_size=0))
        idx = message.find(b"\r\n\r\n")
        v = Verifier(message[: idx + 2])
        v.feed(message[idx + 4:])
        return await v.finish(resolver, time.time())

    return run_with_reactor(run)  # type: ignore[no-any-return]


@pytest.mark.parametrize("alg", ["rsa", "ed25519"])
def test_mxd_verifies_through_lab_with_dnssec(lab_keys, alg: str) -> None:  # type: ignore[no-untyped-def]
    """mxd's verifier fetches the key from the signed lab zone: pass, authentic."""
    lab, keys, _ = lab_keys
    (res,) = _verify_in_mxd(lab, sign_message([keys[alg]], MSG, int(time.time())))
    assert res.result is Result.PASS and res.authentic, res


def test_opendkim_signature_verifies_in_mxd(lab_keys) -> None:  # type: ignore[no-untyped-def]
    """opendkim-testmsg can only sign with rsa-sha1, which RFC 8301 forbids accepting: mxd
    reports fail for that reason, and its signature check on OpenDKIM's canonicalised
    header input still succeeds (canonicalisation and RSA agree)."""
    lab, _, tmp = lab_keys
    out = _opendkim(lab, tmp, MSG, "-d", "dkim.test", "-s", "odk", "-k", str(tmp / "odk.private"), "-C")
    assert out.returncode == 0, out.stderr
    signed = out.stdout.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    (res,) = _verify_in_mxd(lab, signed)
    assert res.result is Result.FAIL and "8301" in res.reason and res.selector == "odk"
    fields = split_fields(signed[: signed.find(b"\r\n\r\n") + 2])
    v = Verifier(b"", fields)
    sig = v.results[0]
    key_txt = (tmp / "odk.txt").read_text()
    p = "".join(part for part in key_txt.split('"')[1::2])
    # opendkim-genkey publishes h=sha256 yet opendkim-testmsg signs with rsa-sha1: lift the
    # key's hash restriction to check the cryptography alone.
    key = attrs.evolve(parse_key(p.encode()), hashes=("sha1", "sha256"))
    data = signed_data(fields, sig.signed_headers, sig.field,  # type: ignore[union-attr]
                       sig.header_canon == "relaxed")  # type: ignore[union-attr]
    assert check_signature(sig, key, data) is None  # type: ignore[arg-type]


def _opendkim_daemon_sign(tmp: Path, message: bytes) -> bytes:
    """Sign ``message`` with rsa-sha256 by the OpenDKIM milter's test mode (``opendkim -t``),
    which runs the milter callbacks on a file and prints the header it would insert."""
    conf = tmp / "opendkim-sign.conf"
    # RequireSafeKeys: the key lies under pytest's tmp (inside world-writable /tmp), which
    # the daemon otherwise refuses.
    conf.write_text(f"Mode s\nDomain dkim.test\nSelector odk\nKeyFile {tmp / 'odk.private'}\n"
                    "SignatureAlgorithm rsa-sha256\nCanonicalization relaxed/relaxed\n"
                    "Syslog no\nRequireSafeKeys no\n")
    path = tmp / "daemon-in.eml"
    path.write_bytes(message.replace(b"\r\n", b"\n"))
    out = subprocess.run([require_tool("opendkim"), "-x", str(conf), "-t", str(path), "-vv"],
                         capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    # ### INSHEADER: idx=0 hname='DKIM-Signature' hvalue='v=1; ...\n\tb=...'
    head, sep, rest = out.stdout.partition(b"hname='DKIM-Signature' hvalue='")
    assert sep, out.stdout
    value = rest[: rest.rindex(b"'")].replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return b"DKIM-Signature: " + value + b"\r\n" + message


def test_opendkim_daemon_rsa_sha256_signature_verifies_in_mxd(lab_keys) -> None:  # type: ignore[no-untyped-def]
    """A message signed rsa-sha256 by the opendkim milter (test mode) passes mxd's verifier
    with the key from the signed lab zone; a changed body fails (RFC 6376 section 6.1.3)."""
    lab, _, tmp = lab_keys
    signed = _opendkim_daemon_sign(tmp, MSG)
    assert b"a=rsa-sha256" in signed
    (res,) = _verify_in_mxd(lab, signed)
    assert res.result is Result.PASS and res.authentic and res.selector == "odk", res
    (bad,) = _verify_in_mxd(lab, signed.replace(b"bye", b"bye!"))
    assert bad.result is Result.FAIL, bad
