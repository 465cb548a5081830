"""The ``mxd`` admin command: accounts, config checks, a local instance, DNS and queue tools.

Every command that needs the config takes ``--config PATH`` (default ``$MXD_CONFIG`` or
``etc/mxd.toml``).  Passwords are read from a prompt or standard input, never from argv
(which other local users can see in ``ps``), except ``localserve --password`` for the
throwaway local instance.
"""

from __future__ import annotations

import argparse
import getpass
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mxd
from mxd.clirun import run_deferred, with_directory
from mxd.config import Config, ConfigError, load_config, parse_config, reference_markdown
from mxd.errors import MxdError


class CLIError(Exception):
    """Printed as ``mxd: <message>`` with exit status 1 (2 for usage errors)."""


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config)


def _read_password(args: argparse.Namespace, confirm: bool = True) -> str:
    if getattr(args, "password_stdin", False) or not sys.stdin.isatty():
        line = sys.stdin.readline()
        pw = line.rstrip("\r\n")
    else:
        pw = getpass.getpass("Password: ")
        if confirm and getpass.getpass("Repeat password: ") != pw:
            raise CLIError("passwords do not match")
    if not pw:
        raise CLIError("empty password")
    if len(pw) < 8:
        raise CLIError("password too short (at least 8 characters)")
    return pw


# --- commands -------------------------------------------------------------------------

def cmd_version(args: argparse.Namespace) -> int:
    print(f"mxd {mxd.__version__}")
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    from mxd.tap import check_ports_free, tls_settings_for

    cfg = _config(args)
    for li in cfg.listeners:
        tls_settings_for(cfg, li)
    if args.ports:
        check_ports_free(cfg)
    print(f"{cfg.source}: OK ({len(cfg.listeners)} listeners, {len(cfg.domains.names)} domains)")
    if args.ldap_test is not None:
        return _ldap_test(cfg, args.ldap_test)
    return 0


def _ldap_test(cfg: Config, login: str) -> int:
    """Connect with the service bind, search the login name as a login would, and say what
    was found (exit 1 when the directory cannot be used or the name finds nothing)."""
    if cfg.directory.backend != "ldap":
        raise CLIError("--ldap-test needs [directory] backend = \"ldap\"")
    from mxd.directory.ldapfilter import name_filter

    print(f"LDAP {', '.join(cfg.ldap.uris)}: user filter {name_filter(cfg.ldap.user_filter, login)}")
    acct = with_directory(cfg, lambda d: d.test_login(login))
    if acct is None:
        print(f"{login}: no entry found (or several: see the log)")
        return 1
    print(f"{login}: {acct.dn}\n  account {acct.name}\n  addresses {' '.join(acct.addresses) or '-'}"
          f"\n  quota {acct.quota if acct.quota is not None else 'default'}"
          f"\n  SCRAM secrets {', '.join(sorted(acct.scram)) or 'none (PLAIN/LOGIN only)'}"
          f"\n  may log in {'yes' if acct.may_login else 'no (not matched by group_filter)'}")
    return 0


def cmd_config_reference(args: argparse.Namespace) -> int:
    sys.stdout.write(reference_markdown())
    return 0


def cmd_account_add(args: argparse.Namespace) -> int:
    cfg = _config(args)
    pw = _read_password(args)
    acct = with_directory(cfg, lambda d: d.add_account(args.name, pw, args.address or ()))
    print(f"added account {acct.name}" + (f" ({', '.join(acct.addresses)})" if acct.addresses else ""))
    return 0


def cmd_account_passwd(args: argparse.Namespace) -> int:
    cfg = _config(args)
    pw = _read_password(args)
    with_directory(cfg, lambda d: d.set_password(args.name, pw))
    print(f"password changed for {args.name}")
    return 0


def cmd_account_del(args: argparse.Namespace) -> int:
    cfg = _config(args)
    with_directory(cfg, lambda d: d.delete_account(args.name))
    print(f"deleted account {args.name} and its mail")
    return 0


def cmd_account_list(args: argparse.Namespace) -> int:
    cfg = _config(args)
    if args.orphans:
        if cfg.directory.backend != "ldap":
            raise CLIError("--orphans lists mailboxes of accounts gone from LDAP: it needs "
                           "[directory] backend = \"ldap\"")
        accounts = with_directory(cfg, lambda d: d.orphans())
    else:
        accounts = with_directory(cfg, lambda d: d.list_accounts())
    for a in accounts:
        print(a.name + ("\t" + " ".join(a.addresses) if a.addresses else ""))
    return 0


def cmd_account_show(args: argparse.Namespace) -> int:
    cfg = _config(args)
    async def both(d: Any) -> tuple[Any, Any]:
        entry = await d.get_entry(args.name) if cfg.directory.backend == "ldap" else None
        return await d.get_account(args.name), entry

    # One reactor run: a Twisted reactor cannot be started twice in one process.
    acct, entry = with_directory(cfg, both)
    if acct is None:
        raise CLIError(f"no account {args.name!r}")
    print(f"account {acct.name}\naddresses {' '.join(acct.addresses) or '-'}")
    if cfg.directory.backend == "ldap":
        if entry is not None:
            print(f"ldap {entry.dn}\nscram {', '.join(sorted(entry.scram)) or 'none'}"
                  "\npasswords are managed in the directory")
    return 0


def cmd_account_scram_keys(args: argparse.Namespace) -> int:
    """Print RFC 5803 authPassword values of a password for an LDAP entry."""
    from mxd.directory.authpassword import derive_values

    pw = _read_password(args)
    for value in derive_values(pw, iterations=args.iterations):
        print(f"{args.attribute}: {value}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    cfg = _config(args)
    return _serve(cfg, banner=None)


def _serve(cfg: Config, banner: str | None,
           prepare: Callable[[Any], Any] | None = None) -> int:
    """Run the service tree on the reactor until SIGINT/SIGTERM; return the exit status.

    ``prepare(reactor)`` (may return a Deferred) runs first, inside the same reactor run.
    """
    from twisted.internet import defer
    from twisted.internet import reactor as _reactor
    from twisted.logger import globalLogBeginner

    from mxd.log import make_observer
    from mxd.tap import build_service, check_host_keys, check_ports_free, tls_settings_for

    for li in cfg.listeners:
        tls_settings_for(cfg, li)
    check_host_keys(cfg)
    check_ports_free(cfg)
    globalLogBeginner.beginLoggingTo(
        [make_observer(cfg.log.level, cfg.log.format, cfg.log.levels, sys.stderr)],
        redirectStandardIO=False)
    reactor: Any = _reactor
    status: dict[str, Any] = {"code": 0}

    async def start() -> None:
        try:
            if prepare is not None:
                await defer.maybeDeferred(prepare, reactor)
            top = build_service(cfg, reactor)
            top.privilegedStartService()  # binds every port or raises ListenError
            top.startService()
        except Exception as e:  # noqa: BLE001 - reported, then the process exits 1
            print(f"mxd: {e}", file=sys.stderr, flush=True)
            status["code"] = 1
            reactor.stop()
            return
        reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
        if banner:
            ports = {n.split(":")[0]: li.port for n, li in top.listeners.items()}
            print(banner.format(**ports), flush=True)

    def stop(*_: Any) -> None:
        def stop_once() -> None:
            if reactor.running and not status.get("stopping"):
                status["stopping"] = True
                reactor.stop()

        reactor.callFromThread(stop_once)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    reactor.callWhenRunning(lambda: defer.ensureDeferred(start()))
    reactor.run(installSignalHandlers=False)
    return int(status["code"])


LOCAL_PORTS = {"smtp": 1025, "submission": 1587, "submissions": 1465, "imap": 1143,
               "imaps": 1993, "admin": 1080, "webmail": 1081}
LOCAL_ACCOUNT = "mxd@localhost"
LOCAL_PASSWORD = "mxdmxdmxd"


def localserve_config(directory: Path, port_offset: int = 0) -> str:
    """The embedded configuration of `mxd localserve` (TOML)."""
    listeners = "\n".join(
        f'[[listeners]]\nprotocol = "{p}"\naddress = "127.0.0.1"\nport = {port + port_offset}\n'
        for p, port in LOCAL_PORTS.items())
    return f'''# Written by `mxd localserve`; regenerated at each start.
hostname = "localhost"
data_dir = "data"

[tls]
cert = "cert.pem"
key = "key.pem"

[domains]
names = ["localhost"]
# RFC 5321 §4.5.1: postmaster@localhost (and a bare <postmaster>) reach the account.
postmaster = "{LOCAL_ACCOUNT}"

[[accounts]]
name = "{LOCAL_ACCOUNT}"
addresses = ["{LOCAL_ACCOUNT}"]

[auth]
# Loopback only: PLAIN/LOGIN are also offered without TLS here.
allow_plaintext_on_loopback = true

[queue]
# Nothing leaves this machine: outbound mail stays queued (see `mxd queue list`).
hold_all = true

[resolver]
nameservers = ["127.0.0.1"]

{listeners}'''


LOCAL_BANNER = """\
mxd {version} is serving a local instance from {dir}

  account      {account}
  password     {password}
  SMTP         127.0.0.1:{smtp}   (inbound, STARTTLS offered)
  submission   127.0.0.1:{submission}   (STARTTLS, then AUTH)
  submissions  127.0.0.1:{submissions}   (implicit TLS)
  IMAP         127.0.0.1:{imap}   (STARTTLS)
  IMAPS        127.0.0.1:{imaps}   (implicit TLS)
  admin        http://127.0.0.1:{admin}/   (log in with the password above)
  webmail      http://127.0.0.1:{webmail}/   (log in as {account})
  CA file      {ca}
  config       {config}

Outbound mail is held in the queue, never sent. Stop with Ctrl-C."""


def cmd_localserve(args: argparse.Namespace) -> int:
    from mxd.selfsigned import make_local_ca

    directory = Path(args.dir).resolve()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    tls = make_local_ca(directory)
    cfg_path = directory / "mxd.toml"
    text = localserve_config(directory, args.port_offset)
    cfg_path.write_text(text, encoding="utf-8")
    cfg = parse_config(text, str(cfg_path), directory)
    password = args.password or LOCAL_PASSWORD
    from mxd.admin.auth import hash_password, write_private
    from mxd.components import admin_password_file

    write_private(admin_password_file(cfg), (hash_password(password) + "\n").encode())

    async def ensure_account(directory_: Any) -> None:
        if await directory_.get_account(LOCAL_ACCOUNT) is None:
            await directory_.add_account(LOCAL_ACCOUNT, password, [LOCAL_ACCOUNT])
        else:
            await directory_.set_password(LOCAL_ACCOUNT, password)

    async def prepare(reactor: Any) -> None:
        from mxd import components

        store, directory_ = await components.open_store_and_directory(cfg, reactor)
        try:
            await ensure_account(directory_)
        finally:
            await store.close()

    banner = LOCAL_BANNER.replace("{version}", mxd.__version__).replace(
        "{dir}", str(directory)).replace("{account}", LOCAL_ACCOUNT).replace(
        "{password}", password).replace("{ca}", str(tls["ca"])).replace("{config}", str(cfg_path))
    return _serve(cfg, banner, prepare)


def cmd_quickstart(args: argparse.Namespace) -> int:
    from mxd.quickstart import DEFAULT_DIR, QuickstartOptions, run

    opts = QuickstartOptions(
        address=args.address, directory=Path(args.dir) if args.dir else DEFAULT_DIR,
        hostname=args.hostname, data_dir=Path(args.data_dir) if args.data_dir else None,
        public_ips=tuple(args.ip or ()), acme=not args.no_acme,
        acme_directory=args.acme_directory,
        acme_ca_file=Path(args.acme_ca_file).resolve() if args.acme_ca_file else None,
        resolver=args.resolver)
    return run(opts)


def cmd_hostkeys_next(args: argparse.Namespace) -> int:
    """Make the next host keys of a rollover and print their TLSA records."""
    import datetime

    from mxd.config import normalise_domain
    from mxd.hostkeys import load_all, next_keys

    cfg = _config(args)
    if not cfg.tls.host_keys:
        raise CLIError(f"{cfg.source}: [tls].host_keys is not set (mxd quickstart makes them)")
    stamp = args.stamp or datetime.datetime.now(datetime.UTC).strftime("%Y%m%d")
    made = next_keys(load_all(cfg.tls.host_keys), stamp)
    host = normalise_domain(cfg.hostname)
    print("; New host keys (mode 0600): " + ", ".join(str(k.path) for k in made))
    print("; 1. Publish their TLSA records now, next to the current ones:")
    for k in made:
        print(f"_25._tcp.{host}. 300 IN TLSA 3 1 1 {k.spki_sha256.hex()}")
    print("; 2. Wait until the old answers have left caches (twice the TLSA TTL), then check")
    print(f";    `mxd dns check` and set in {cfg.source}:")
    print(";    [tls] host_keys = [" + ", ".join(f'"{k.path}"' for k in made) + "]")
    print(";    and restart mxd (ACME then orders certificates for the new keys; self-signed")
    print(";    ones on them are served meanwhile, which DANE accepts).")
    print("; 3. Remove the old TLSA records (`mxd dns check` warns while they remain).")
    return 0


def _domain_in_config(cfg: Config, domain: str) -> str:
    from mxd.config import normalise_domain

    d = normalise_domain(domain)
    if d not in {normalise_domain(x) for x in cfg.domains.names}:
        raise CLIError(f"{domain} is not in [domains].names of {cfg.source}")
    return d


def cmd_dns_records(args: argparse.Namespace) -> int:
    from mxd.dnsrecords import records, render
    from mxd.recordsconfig import record_inputs

    cfg = _config(args)
    inputs = record_inputs(cfg, _domain_in_config(cfg, args.domain))
    sys.stdout.write(render(records(inputs), inputs))
    return 0


def cmd_dns_check(args: argparse.Namespace) -> int:
    from mxd.dnscheck_cli import run_check

    cfg = _config(args)
    return run_check(cfg, _domain_in_config(cfg, args.domain), as_json=args.json,
                     ca_file=args.ca_file, run=run_deferred)


# --- argument parsing -----------------------------------------------------------------

def _wake_server(cfg: Config) -> None:
    """Ask a running server (through its admin listener, with the local token that only
    the mxd user can read) to look at the queue now."""
    from mxd.admin.client import AdminUnreachable, local_admin_post

    if not any(li.protocol == "admin" for li in cfg.listeners):
        return
    try:
        status, _ = local_admin_post(cfg, "/api/queue/wake")
        if status != 200:
            raise AdminUnreachable(f"the admin listener answered HTTP {status}")
    except AdminUnreachable as e:
        print(f"mxd queue: {e}; the server will see the change at its next wake-up",
              file=sys.stderr)


def cmd_admin_password(args: argparse.Namespace) -> int:
    """Set the admin web password: an scrypt hash in a file of mode 0600."""
    from mxd.admin.auth import hash_password, write_private
    from mxd.components import admin_password_file

    cfg = _config(args)
    pw = _read_password(args)
    path = admin_password_file(cfg)
    write_private(path, (hash_password(pw) + "\n").encode())
    print(f"admin password set in {path}; log in at the admin listener's /login")
    return 0


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", metavar="PATH",
                   help="config file (default: $MXD_CONFIG or etc/mxd.toml)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mxd", description="mxd mail server administration.",
        epilog="Run the server with `twistd -n mxd --config PATH` or `mxd serve`.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("sendmail", add_help=False,
                       help="submit a message from stdin, sendmail-compatible (also "
                       "mxd-sendmail; see its module doc for flags and config)")
    p.add_argument("args", nargs=argparse.REMAINDER)

    def run_sendmail(args: argparse.Namespace) -> int:
        from mxd import sendmail

        return sendmail.main(args.args)

    p.set_defaults(func=run_sendmail)
    p = sub.add_parser("version", help="print the version")
    p.set_defaults(func=cmd_version)

    p = sub.add_parser("serve", help="run the server in the foreground (like twistd -n mxd)")
    _add_config(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("localserve", help="run a complete local instance with no set-up",
                       description="Start mxd on 127.0.0.1 with domain localhost, account "
                       f"{LOCAL_ACCOUNT} and a self-signed certificate; state is kept in --dir.")
    p.add_argument("--dir", default="localserve", help="state directory (default ./localserve)")
    p.add_argument("--password", help=f"password of {LOCAL_ACCOUNT} (default {LOCAL_PASSWORD})")
    p.add_argument("--port-offset", type=int, default=0, metavar="N",
                   help="add N to every port (to run a second instance)")
    p.set_defaults(func=cmd_localserve)

    p = sub.add_parser("quickstart", help="configure a new domain: config, keys, account, "
                       "and the DNS records to publish",
                       description="Writes DIR/mxd.toml, host keys, DKIM keys and an admin "
                       "password hash (never overwriting a file), creates the account with a "
                       "generated password, and prints every DNS record to add. Run again, it "
                       "prints the records of the existing config.")
    p.add_argument("address", help="your address, e.g. you@example.org")
    p.add_argument("--hostname", help="the mail host name (default mail.DOMAIN)")
    p.add_argument("--dir", help="config directory (default /etc/mxd)")
    p.add_argument("--data-dir", help="data directory (default /var/lib/mxd)")
    p.add_argument("--ip", action="append", help="a public IP address of this server "
                   "(repeatable): A/AAAA, SPF, reverse DNS")
    p.add_argument("--no-acme", action="store_true", help="do not request certificates "
                   "with ACME (self-signed certificates on the host keys are served)")
    p.add_argument("--acme-directory", help="ACME directory URL (default Let's Encrypt)")
    p.add_argument("--acme-ca-file", help="roots for the ACME server's HTTPS")
    p.add_argument("--resolver", default="127.0.0.1",
                   help="validating resolver as IP[:PORT] (default 127.0.0.1)")
    p.set_defaults(func=cmd_quickstart)

    hp = sub.add_parser("hostkeys", help="host keys: make the next keys of a rollover")
    hsub = hp.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    p = hsub.add_parser("next", help="generate new host keys next to the current ones and "
                        "print their TLSA records to publish before switching (RFC 7671 §8.1)")
    _add_config(p)
    p.add_argument("--stamp", help="suffix of the new file names (default: today, YYYYMMDD)")
    p.set_defaults(func=cmd_hostkeys_next)

    cp = sub.add_parser("config", help="check the config or print its reference")
    csub = cp.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    p = csub.add_parser("check", help="validate the config file (and, with --ports, free ports)")
    _add_config(p)
    p.add_argument("--ports", action="store_true", help="also check the ports can be bound")
    p.add_argument("--ldap-test", metavar="USER", help="with an LDAP directory: connect, "
                   "search USER as a login would and show the entry found")
    p.set_defaults(func=cmd_config_check)
    p = csub.add_parser("reference", help="print the configuration reference (Markdown)")
    p.set_defaults(func=cmd_config_reference)

    ap = sub.add_parser("admin", help="the admin web interface")
    asub = ap.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    p = asub.add_parser("password", help="set the admin web password (prompt or stdin)")
    _add_config(p)
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p.set_defaults(func=cmd_admin_password)
    ap = sub.add_parser("account", help="manage accounts")
    asub = ap.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    p = asub.add_parser("add", help="add an account (password from a prompt or stdin)")
    _add_config(p)
    p.add_argument("name")
    p.add_argument("--address", "-a", action="append", help="address (repeatable)")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p.set_defaults(func=cmd_account_add)
    p = asub.add_parser("passwd", help="set an account's password (prompt or stdin)")
    _add_config(p)
    p.add_argument("name")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p.set_defaults(func=cmd_account_passwd)
    p = asub.add_parser("del", help="delete an account and all its mail")
    _add_config(p)
    p.add_argument("name")
    p.set_defaults(func=cmd_account_del)
    p = asub.add_parser("list", help="list accounts and their addresses")
    _add_config(p)
    p.add_argument("--orphans", action="store_true", help="with LDAP: accounts that have "
                   "mail in the store but no entry in the directory any more")
    p.set_defaults(func=cmd_account_list)
    p = asub.add_parser("show", help="show an account (with LDAP: its entry)")
    _add_config(p)
    p.add_argument("name")
    p.set_defaults(func=cmd_account_show)
    p = asub.add_parser("scram-keys", help="print RFC 5803 authPassword values for a "
                        "password (to store in LDAP)",
                        description="Reads a password (prompt or --password-stdin) and prints "
                        "SCRAM-SHA-256 and SCRAM-SHA-1 authPassword values (RFC 5803) as LDIF "
                        "attribute lines; add them to the user's entry (objectClass "
                        "authPasswordObject) so that SCRAM and SCRAM-PLUS work with LDAP.")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p.add_argument("--iterations", type=int, default=4096,
                   help="PBKDF2 iteration count (RFC 7677: at least 4096)")
    p.add_argument("--attribute", default="authPassword", help="attribute name to print")
    p.set_defaults(func=cmd_account_scram_keys)

    _add_optional_commands(sub)
    return parser


def _add_optional_commands(sub: Any) -> None:
    """Commands owned by other packages (DNS, queue)."""
    try:
        from mxd.dns import cli as dns_cli
    except ImportError:
        dns_cli = None  # type: ignore[assignment]
    if dns_cli is not None and hasattr(dns_cli, "add_arguments"):
        dp = sub.add_parser("dns", help="DNS lookups through mxd's DNSSEC-aware resolver")
        dsub = dp.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
        p = dsub.add_parser("lookup", help="look up TYPE NAME; show records, authenticity, EDE")
        dns_cli.add_arguments(p)
        p.add_argument("--config", "-c", metavar="PATH",
                       help="ask the [resolver] nameservers of this mxd config (as the server "
                       "does) instead of /etc/resolv.conf")

        def run_dns(args: argparse.Namespace) -> int:
            if args.config and not args.server:
                cfg = load_config(args.config)
                args.server = list(cfg.resolver.nameservers)
                trusted = set(cfg.resolver.trusted)
                args.trust_ad = bool(trusted) and set(args.server) <= trusted
            return int(dns_cli.run(args))

        p.set_defaults(func=run_dns)
        p = dsub.add_parser("records", help="print the DNS records DOMAIN needs, with what "
                            "each is for")
        _add_config(p)
        p.add_argument("domain")
        p.set_defaults(func=cmd_dns_records)
        p = dsub.add_parser("check", help="check DOMAIN's DNS records through mxd's resolver "
                            "(OK/WARN/ERROR per check with the fix; exit 1 on any ERROR)")
        _add_config(p)
        p.add_argument("domain")
        p.add_argument("--json", action="store_true", help="print the results as JSON")
        p.add_argument("--ca-file", metavar="PEM", help="roots to verify the MTA-STS policy "
                       "host with (default [outbound].ca_file or the system store)")
        p.set_defaults(func=cmd_dns_check)

    from mxd.queue import cli as queue_cli

    qp = sub.add_parser("queue", help="inspect and manage the outbound queue",
                        description="list, show, hold, release, drop or kick (retry now) queued "
                        "messages, override REQUIRETLS (requiretls ID yes|no|default) or the "
                        "transport (transport ID NAME), and show the last TLS result per "
                        "recipient domain (domains); works on the database while the server "
                        "runs")
    _add_config(qp)
    queue_cli.add_arguments(qp)
    for action in qp._subparsers._group_actions if qp._subparsers else ():
        for sp in getattr(action, "choices", {}).values():
            # Also accept --config after the subcommand; SUPPRESS keeps the parent's value.
            sp.add_argument("--config", "-c", metavar="PATH", default=argparse.SUPPRESS,
                            help="config file (default: $MXD_CONFIG or etc/mxd.toml)")

    def run_queue(args: argparse.Namespace) -> int:
        cfg = None if args.data_dir else _config(args)
        data_dir = args.data_dir or cfg.data_dir  # type: ignore[union-attr]
        if cfg is not None and cfg.store.backend != "sqlite":
            raise CLIError("mxd queue works on the SQLite store; with [store] backend = "
                           f"{cfg.store.backend!r} use the admin API or web interface")
        if cfg is not None:
            args.transport_names = frozenset(cfg.transports)
        rc = queue_cli.run(args, data_dir=data_dir)
        if rc == 0 and cfg is not None and args.queue_command in ("release", "kick",
                                                                   "requiretls", "transport"):
            _wake_server(cfg)
        return int(rc)


    qp.set_defaults(func=run_queue)

    sp = sub.add_parser("store", help="the store: move an installation between backends")
    ssub = sp.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    p = ssub.add_parser(
        "migrate", help="copy every account, mailbox, message, flag, UID and queue entry "
        "from one store to another (stop mxd first) and verify the copy")
    p.add_argument("--from", dest="source", required=True, metavar="SPEC",
                   help="sqlite:DATA_DIR or postgresql:DSN")
    p.add_argument("--to", dest="target", required=True, metavar="SPEC",
                   help="sqlite:DATA_DIR or postgresql:DSN")
    p.add_argument("--blob-dir", type=Path, default=None,
                   help="the postgresql side's body directory ([store] blob_dir)")
    p.add_argument("--replace", action="store_true",
                   help="empty a target that already holds accounts, mail or queue entries")
    p.set_defaults(func=_store_migrate)

    from mxd.msgauth import cli as dkim_cli

    kp = sub.add_parser("dkim", help="DKIM signing keys: generate, print DNS records")
    dkim_cli.add_arguments(kp, _add_config)
    kp.set_defaults(func=lambda args: dkim_cli.run(args, _config))
    mp = sub.add_parser("dmarc", help="DMARC aggregate reports received")
    dkim_cli.add_dmarc_arguments(mp, _add_config)
    mp.set_defaults(func=lambda args: dkim_cli.run(args, _config))
    from mxd.tlsrpt import cli as tlsrpt_cli

    tp = sub.add_parser("tlsrpt", help="SMTP TLS reports (RFC 8460) received")
    tlsrpt_cli.add_arguments(tp, _add_config)
    tp.set_defaults(func=lambda args: tlsrpt_cli.run(args, _config))


def _store_migrate(args: argparse.Namespace) -> int:
    from mxd.store.transfer import Endpoint, migrate_store

    src = Endpoint.parse(args.source, args.blob_dir)
    dst = Endpoint.parse(args.target, args.blob_dir)
    report = migrate_store(src, dst, replace=args.replace,
                           progress=lambda line: print(line, file=sys.stderr))
    print(f"migrated {src.describe()} to {dst.describe()}: "
          + ", ".join(f"{n} {t}" for t, n in report.rows.items() if n)
          + f"; {report.bodies} bodies ({report.body_bytes} bytes); verified")
    return 0


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    if args_list[:1] == ["sendmail"]:
        # sendmail's own flags (-t, -oi, -fADDR, ...) are not argparse's: hand them over.
        from mxd import sendmail

        return sendmail.main(args_list[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"mxd: {e}", file=sys.stderr)
        return 1
    except CLIError as e:
        print(f"mxd: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except MxdError as e:
        print(f"mxd: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

