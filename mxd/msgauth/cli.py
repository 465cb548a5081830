"""``mxd dkim ...``: generate DKIM keys and print the DNS records to publish."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mxd.msgauth.dkimkeys import Algorithm, DKIMKeyError, default_selector, generate_key, load_key


def add_arguments(parser: argparse.ArgumentParser,
                  add_config: Callable[[argparse.ArgumentParser], None]) -> None:
    sub = parser.add_subparsers(dest="dkim_command", metavar="SUBCOMMAND", required=True)
    p = sub.add_parser(
        "genkey", help="generate signing keys for DOMAIN and print the DNS TXT records",
        description="Writes KEY_DIR/DOMAIN/SELECTOR.pem (mode 0600) for each key and prints "
        "the TXT record to publish at SELECTOR._domainkey.DOMAIN. By default an RSA-2048 and "
        "an Ed25519 key are made (RFC 8463 §3 asks signers to sign with both). Then list the "
        "selectors under [dkim].selectors in the config.")
    add_config(p)
    p.add_argument("domain")
    p.add_argument("--algorithm", "-a", choices=("both", "rsa", "ed25519"), default="both")
    p.add_argument("--selector", "-s", action="append", metavar="NAME",
                   help="selector (default YYYYMMDDr / YYYYMMDDe); with --algorithm both, "
                   "give it twice: RSA first")
    p.add_argument("--bits", type=int, default=2048, help="RSA key size (default 2048)")
    p.add_argument("--key-dir", metavar="DIR", help="override [dkim].key_dir of the config")
    p.set_defaults(dkim_func=_genkey)
    p = sub.add_parser("records", help="print the TXT records of the configured selectors")
    add_config(p)
    p.add_argument("--key-dir", metavar="DIR", help="override [dkim].key_dir of the config")
    p.set_defaults(dkim_func=_records)


def add_dmarc_arguments(parser: argparse.ArgumentParser,
                        add_config: Callable[[argparse.ArgumentParser], None]) -> None:
    sub = parser.add_subparsers(dest="dmarc_command", metavar="SUBCOMMAND", required=True)
    p = sub.add_parser("reports", help="list the DMARC aggregate reports received",
                       description="Reports that arrived at [msgauth].dmarc_report_addresses, "
                       "oldest period first: reporter, period, domain, messages and how many "
                       "passed DMARC.")
    add_config(p)
    p.add_argument("--json", action="store_true", help="print JSON (records included)")
    p.set_defaults(dkim_func=_dmarc_reports)


def _dmarc_reports(args: argparse.Namespace,
                   config_loader: Callable[[argparse.Namespace], Any]) -> int:
    import json
    from datetime import UTC, datetime

    from mxd.msgauth.reportstore import ReportStore

    cfg = config_loader(args)
    reports = ReportStore(cfg.data_dir / "dmarc" / "incoming").reports()
    if args.json:
        print(json.dumps(reports, indent=2))
        return 0
    if not reports:
        print("no DMARC aggregate reports received")
        return 0
    for r in reports:
        begin = datetime.fromtimestamp(int(r.get("begin", 0)), UTC).strftime("%Y-%m-%d %H:%M")
        end = datetime.fromtimestamp(int(r.get("end", 0)), UTC).strftime("%Y-%m-%d %H:%M")
        print(f"{begin} - {end}  {r.get('domain', '')}  from {r.get('org_name', '')} "
              f"<{r.get('email', '')}>  id {r.get('report_id', '')}: "
              f"{r.get('messages', 0)} messages, {r.get('dmarc_pass', 0)} passed DMARC "
              f"(p={r.get('policy', '')})")
    return 0


def run(args: argparse.Namespace, config_loader: Callable[[argparse.Namespace], Any]) -> int:
    try:
        return int(args.dkim_func(args, config_loader))
    except DKIMKeyError as e:
        print(f"mxd dkim: {e}", file=sys.stderr)
        return 1


def _key_dir(args: argparse.Namespace, config_loader: Callable[[argparse.Namespace], Any]
             ) -> tuple[Path, Any]:
    if args.key_dir:
        return Path(args.key_dir), None
    cfg = config_loader(args)
    return cfg.dkim_key_dir, cfg


def _genkey(args: argparse.Namespace, config_loader: Callable[[argparse.Namespace], Any]) -> int:
    key_dir, _ = _key_dir(args, config_loader)
    algorithms: list[Algorithm] = ["rsa", "ed25519"] if args.algorithm == "both" else [
        args.algorithm]
    selectors = list(args.selector or [])
    if selectors and len(selectors) != len(algorithms):
        print(f"mxd dkim: give {len(algorithms)} --selector values for "
              f"--algorithm {args.algorithm}", file=sys.stderr)
        return 2
    made = []
    for i, alg in enumerate(algorithms):
        sel = selectors[i] if selectors else default_selector(alg)
        made.append(generate_key(key_dir, args.domain, sel, alg, rsa_bits=args.bits))
    for key in made:
        print(f"; {key.algorithm} key {key.path}")
        print(key.zone_line())
    names = ", ".join(f'"{k.selector}"' for k in made)
    print(f'; then in the config: [dkim] selectors = {{ "{made[0].domain}" = [{names}] }}')
    return 0


def _records(args: argparse.Namespace, config_loader: Callable[[argparse.Namespace], Any]) -> int:
    cfg = config_loader(args)
    key_dir = Path(args.key_dir) if args.key_dir else cfg.dkim_key_dir
    for domain, selectors in sorted(cfg.dkim.selectors.items()):
        for sel in selectors:
            print(load_key(key_dir, domain, sel).zone_line())
    return 0
