"""Shared fixtures for the go-live tests: host keys (made once per session) and records."""

from __future__ import annotations

import datetime
from pathlib import Path

from mxd import hostkeys
from mxd.dnsrecords import RecordInputs
from mxd.hostkeys import HostKey, KeyKind

_KEYS: dict[KeyKind, object] = {}


def host_keys(directory: Path) -> list[HostKey]:
    """Host key files in ``directory``; the RSA key is generated once per session."""
    out = []
    for kind, name in hostkeys.DEFAULT_FILES.items():
        key = _KEYS.get(kind) or hostkeys.generate(kind)
        _KEYS[kind] = key
        path = directory / name
        if not path.exists():
            hostkeys.write_private(path, HostKey(kind, path, key).pem())  # type: ignore[arg-type]
        out.append(hostkeys.load(path))
    return out


NOW = datetime.datetime(2026, 12, 5, 12, 0, tzinfo=datetime.UTC)


def _dkim_record() -> str:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from mxd.msgauth.dkimkeys import dns_record

    return dns_record(ed25519.Ed25519PrivateKey.generate())


DKIM_RECORD = _dkim_record()


def inputs(keys: list[HostKey], **kw: object) -> RecordInputs:
    base: dict[str, object] = dict(
        domain="example.test", hostname="mx.example.test", public_ips=("192.0.2.10",),
        tlsa_spki_sha256=tuple(k.spki_sha256 for k in keys),
        dkim=(("sel1._domainkey.example.test", DKIM_RECORD),),
        sts_id="ABC123", sts_policy_text="version: STSv1\r\nmode: enforce\r\nmx: "
        "mx.example.test\r\nmax_age: 604800\r\n",
        dmarc_policy="reject", dmarc_rua="dmarc@example.test", tlsrpt_rua="tls@example.test",
        caa_issuer="letsencrypt.org", acme_account_uri="https://ca.test/acct/1")
    base.update(kw)
    return RecordInputs(**base)  # type: ignore[arg-type]
