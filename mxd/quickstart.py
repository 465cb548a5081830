"""``mxd quickstart you@example.org``: a complete, secure configuration for a new domain.

Writes (never overwriting anything that exists) into the config directory:

* ``mxd.toml`` with listeners on the standard ports, ACME on, DKIM selectors, MTA-STS;
* the two host keys (``mxd.hostkeys``) every certificate is made for, mode 0600;
* DKIM keys, RSA-2048 and Ed25519 (RFC 8463 §3), through ``mxd.msgauth.dkimkeys``;
* ``admin-password`` (an scrypt hash, mode 0600) of a generated admin password;

creates the account with a generated password, prints both passwords once, and prints every
DNS record to publish with what it is for.  Run it again and it prints the records again.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path
from typing import Any, TextIO

import attrs

from mxd.config import Config, load_config, normalise_domain
from mxd.errors import MxdError

DEFAULT_DIR = Path("/etc/mxd")
DEFAULT_DATA_DIR = Path("/var/lib/mxd")
PORTS = {"smtp": 25, "submission": 587, "submissions": 465, "imap": 143, "imaps": 993,
         "https": 443, "http": 80}


class QuickstartError(MxdError):
    """The address is not usable, or a file that should not exist does."""


@attrs.frozen
class QuickstartOptions:
    address: str
    directory: Path = DEFAULT_DIR
    hostname: str | None = None
    data_dir: Path | None = None
    public_ips: tuple[str, ...] = ()
    acme: bool = True
    acme_directory: str | None = None
    acme_ca_file: Path | None = None
    resolver: str = "127.0.0.1"
    listen: str = "::"
    ports: dict[str, int] = attrs.field(factory=lambda: dict(PORTS))
    admin_port: int = 8080


def generate_password() -> str:
    """16 random characters from an unambiguous alphabet, in four groups (80 bits)."""
    alphabet = "abcdefghjkmnpqrstuvwxyz23456789"
    chars = "".join(secrets.choice(alphabet) for _ in range(16))
    return "-".join(chars[i:i + 4] for i in range(0, 16, 4))


def hash_admin_password(password: str) -> str:
    """``scrypt$N$r$p$salt$hash`` (RFC 7914 parameters N=2^15, r=8, p=1)."""
    from mxd.admin.auth import hash_password

    return hash_password(password)


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def config_text(o: QuickstartOptions, domain: str, hostname: str, data_dir: Path,
                host_keys: list[Path], selectors: list[str], account: str) -> str:
    listeners = []
    for proto, port in o.ports.items():
        listeners.append(f"[[listeners]]\nprotocol = \"{proto}\"\naddress = "
                         f"{_toml_str(o.listen)}\nport = {port}\n")
    listeners.append(f"[[listeners]]\nprotocol = \"admin\"\naddress = \"127.0.0.1\"\n"
                     f"port = {o.admin_port}\n")
    acme = [f"enabled = {'true' if o.acme else 'false'}"]
    if o.acme_directory:
        acme.append(f"directory_url = {_toml_str(o.acme_directory)}")
    if o.acme_ca_file:
        acme.append(f"ca_file = {_toml_str(str(o.acme_ca_file))}")
    acme.append(f"contact = {_toml_str(o.address)}")
    keys = ", ".join(_toml_str(str(p)) for p in host_keys)
    sels = ", ".join(_toml_str(s) for s in selectors)
    ips = ", ".join(_toml_str(ip) for ip in o.public_ips)
    return f"""# Written by `mxd quickstart {o.address}`. Every key: `mxd config reference`.
hostname = {_toml_str(hostname)}
data_dir = {_toml_str(str(data_dir))}

[tls]
# Certificates (ACME, self-signed until then) are made for these keys, so the TLSA
# records stay valid across renewals. Keep them; back them up.
host_keys = [{keys}]

[acme]
{chr(10).join(acme)}

[domains]
names = [{_toml_str(domain)}]
postmaster = {_toml_str(account)}

[[accounts]]
name = {_toml_str(account)}
addresses = [{_toml_str(account)}, "postmaster@{domain}", "dmarc-reports@{domain}", "tls-reports@{domain}"]

[dkim]
selectors = {{ {_toml_str(domain)} = [{sels}] }}

[mta_sts]
mode = "enforce"

[dns]
public_ips = [{ips}]

[admin]
# scrypt hash of the admin web password; change it with `mxd admin password`.
password_file = "admin-password"

[resolver]
# A validating resolver on this machine (unbound): DANE and DNSSEC checks need it.
nameservers = [{_toml_str(o.resolver)}]

""" + "\n".join(listeners)


def _create_account(cfg: Config, name: str, password: str, addresses: list[str]) -> None:
    from mxd.clirun import with_directory

    async def add(directory: Any) -> None:
        if await directory.get_account(name) is None:
            await directory.add_account(name, password, addresses)

    with_directory(cfg, add)


def run(o: QuickstartOptions, out: TextIO = sys.stdout) -> int:
    """Set up (or, when the config exists, only print the records); returns exit status."""
    from mxd.dnsrecords import records, render
    from mxd.recordsconfig import record_inputs

    if "@" not in o.address:
        raise QuickstartError(f"expected an address such as you@example.org, got {o.address!r}")
    local, dom = o.address.rsplit("@", 1)
    try:
        domain = normalise_domain(dom)
    except ValueError as e:
        raise QuickstartError(str(e)) from None
    if not local:
        raise QuickstartError(f"no local part in {o.address!r}")
    account = f"{local}@{domain}"
    directory = o.directory.resolve()
    cfg_path = directory / "mxd.toml"
    if cfg_path.exists():
        cfg = load_config(cfg_path)
        print(f"; {cfg_path} exists and was left as it is; its DNS records:\n", file=out)
        for d in cfg.domains.names:
            print(render(records(record_inputs(cfg, d)), record_inputs(cfg, d)), file=out)
        return 0
    from mxd import hostkeys
    from mxd.msgauth.dkimkeys import default_selector, generate_key, key_path

    hostname = normalise_domain(o.hostname or f"mail.{domain}")
    data_dir = (o.data_dir or DEFAULT_DATA_DIR).resolve()
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    keys = hostkeys.ensure(directory)
    dkim_dir = directory / "dkim"
    selectors = []
    for alg in ("rsa", "ed25519"):
        sel = default_selector(alg)
        if not key_path(dkim_dir, domain, sel).exists():
            generate_key(dkim_dir, domain, sel, alg)
        selectors.append(sel)
    text = config_text(o, domain, hostname, data_dir, [k.path for k in keys], selectors,
                       account).replace("[dkim]\n", f"[dkim]\nkey_dir = \"{dkim_dir}\"\n")
    # Write the config last and exclusively: never overwrite one written meanwhile.
    fd = os.open(cfg_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    cfg = load_config(cfg_path)
    password = generate_password()
    _create_account(cfg, account, password,
                    [account, f"postmaster@{domain}", f"dmarc-reports@{domain}",
                     f"tls-reports@{domain}"])
    admin_password = generate_password()
    hostkeys.write_private(directory / "admin-password",
                           (hash_admin_password(admin_password) + "\n").encode())
    inputs = record_inputs(cfg, domain)
    print(f"""mxd is configured for {domain} in {cfg_path}.

  account          {account}
  password         {password}
  admin password   {admin_password}   (admin web on http://127.0.0.1:{o.admin_port}/)

These passwords are shown only now; store them. Change them with `mxd account passwd`.
Host keys: {', '.join(str(k.path) for k in keys)} (mode 0600) — back them up: the TLSA
records below pin them.

Add these DNS records (then `mxd dns check {domain}` verifies them), and start the server:
  twistd -n mxd --config {cfg_path}
""", file=out)
    print(render(records(inputs), inputs), file=out)
    return 0
