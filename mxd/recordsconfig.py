"""The inputs of ``mxd.dnsrecords`` and of the web/ACME services, read from a Config.

Part of the composition layer (like ``mxd.components``): the only place that turns config
keys and key files into the plain values the record, check and serving code take.
"""

from __future__ import annotations

import json
from pathlib import Path

from mxd.autoconfig import ClientSettings, Endpoint
from mxd.config import Config, normalise_domain
from mxd.dnsrecords import RecordInputs
from mxd.mtasts.policy import Policy
from mxd.mtasts.publish import policy_for, policy_id


def acme_dir(cfg: Config) -> Path:
    return cfg.data_dir / "acme"


def acme_account_uri(cfg: Config) -> str | None:
    """The ACME account URL once registered (kept in DATA_DIR/acme/account.json)."""
    try:
        data = json.loads((acme_dir(cfg) / "account.json").read_text())
    except (OSError, ValueError):
        return None
    uri = data.get("uri") if isinstance(data, dict) else None
    return uri if isinstance(uri, str) else None


def sts_policy(cfg: Config) -> Policy:
    return policy_for(cfg.mta_sts.mode, cfg.mta_sts.max_age,
                      cfg.mta_sts.mx or [normalise_domain(cfg.hostname)])


def _port(cfg: Config, protocol: str) -> int | None:
    for li in cfg.listeners:
        if li.protocol == protocol:
            return li.port
    return None


def client_settings(cfg: Config, domain: str) -> ClientSettings:
    """The endpoints mail clients of ``domain`` are told about (implicit TLS first)."""
    host = normalise_domain(cfg.hostname)
    imap = [Endpoint(host, p, s) for p, s in ((_port(cfg, "imaps"), "SSL"),
                                              (_port(cfg, "imap"), "STARTTLS")) if p]
    sub = [Endpoint(host, p, s) for p, s in ((_port(cfg, "submissions"), "SSL"),
                                             (_port(cfg, "submission"), "STARTTLS")) if p]
    return ClientSettings(domain, f"Mail at {domain}", tuple(imap), tuple(sub))


def dkim_records(cfg: Config, domain: str) -> tuple[tuple[str, str], ...]:
    """(owner, TXT value) of every configured DKIM selector of ``domain`` whose key exists."""
    from mxd.msgauth.dkimkeys import DKIMKeyError, load_key

    out = []
    for d, selectors in cfg.dkim.selectors.items():
        if normalise_domain(d) != domain:
            continue
        for sel in selectors:
            try:
                key = load_key(cfg.dkim_key_dir, domain, sel)
            except DKIMKeyError:
                continue
            out.append((key.dns_name, key.txt))
    return tuple(out)


def socks5_ips(cfg: Config) -> tuple[str, ...]:
    """Public addresses of the SOCKS5 transports: mail leaves from them, so SPF must allow
    them ([transports.NAME] remote_ips)."""
    out: list[str] = []
    for t in cfg.transports.values():
        if t.kind == "socks5":
            out += [ip for ip in t.remote_ips if ip not in out]
    return tuple(out)


def record_inputs(cfg: Config, domain: str) -> RecordInputs:
    """Everything ``mxd.dnsrecords.records`` needs for ``domain``; raises HostKeyError
    when a configured host key cannot be read."""
    from mxd.hostkeys import load_all

    domain = normalise_domain(domain)
    keys = load_all(cfg.tls.host_keys)
    policy = sts_policy(cfg)
    https = any(li.protocol == "https" for li in cfg.listeners)
    return RecordInputs(
        domain=domain, hostname=normalise_domain(cfg.hostname),
        public_ips=tuple(cfg.dns.public_ips),
        tlsa_spki_sha256=tuple(k.spki_sha256 for k in keys),
        dkim=dkim_records(cfg, domain),
        sts_id=policy_id(policy) if https else None,
        sts_policy_text=policy.to_text() if https else "",
        dmarc_policy=cfg.dns.dmarc_policy,
        dmarc_rua=f"{cfg.dns.dmarc_rua}@{domain}" if cfg.dns.dmarc_rua else "",
        tlsrpt_rua=f"{cfg.dns.tlsrpt_rua}@{domain}" if cfg.dns.tlsrpt_rua else "",
        tlsrpt_host_rua=(cfg.tlsrpt.host_address if "@" in cfg.tlsrpt.host_address
                         else f"{cfg.tlsrpt.host_address}@{domain}"
                         if cfg.tlsrpt.host_address else ""),
        caa_issuer=cfg.acme.caa_issuer if cfg.acme.enabled else "",
        acme_account_uri=acme_account_uri(cfg),
        extra_spf_ips=socks5_ips(cfg),
        submissions_port=_port(cfg, "submissions"), submission_port=_port(cfg, "submission"),
        imaps_port=_port(cfg, "imaps"), imap_port=_port(cfg, "imap"), https=https)
