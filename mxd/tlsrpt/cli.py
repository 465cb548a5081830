"""``mxd tlsrpt list|show``: the SMTP TLS reports (RFC 8460) received; ``mxd tlsrpt send
--day``: the running server sends a chosen day's reports now."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections.abc import Callable
from typing import Any

from mxd.tlsrpt.incoming import TLSReportStore


def add_arguments(parser: argparse.ArgumentParser,
                  add_config: Callable[[argparse.ArgumentParser], None]) -> None:
    sub = parser.add_subparsers(dest="tlsrpt_command", metavar="SUBCOMMAND", required=True)
    p = sub.add_parser("list", help="list the TLS reports received",
                       description="Reports that arrived at [tlsrpt].report_addresses or "
                       "host_address, oldest period first: one line per policy with the "
                       "reporter, period, policy domain and type, session counts and the "
                       "failure types.")
    add_config(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(tlsrpt_func=_list)
    p = sub.add_parser("show", help="show one TLS report with its failure details")
    add_config(p)
    p.add_argument("id", help="the id shown by `mxd tlsrpt list` or the report-id")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(tlsrpt_func=_show)
    p = sub.add_parser("send", help="have the running server send a day's TLS reports now",
                       description="The running server builds the reports of the UTC day "
                       "(RFC 8460 §4.1) from its TLS results and queues or posts them to the "
                       "rua of each policy domain now, through the admin listener with the "
                       "local token (run as the mxd user). A finished day is then not sent "
                       "again by the daily run; today's reports still go out after midnight.")
    add_config(p)
    p.add_argument("--day", required=True, type=_day, metavar="YYYY-MM-DD",
                   help="the UTC day to report")
    p.set_defaults(tlsrpt_func=_send)


def _store(args: argparse.Namespace, config_loader: Callable[[argparse.Namespace], Any]
           ) -> TLSReportStore:
    cfg = config_loader(args)
    return TLSReportStore(cfg.data_dir / "tlsrpt" / "incoming")


def policy_line(p: dict[str, Any]) -> str:
    types = ", ".join(f"{k} {v}" for k, v in sorted(p.get("failure_types", {}).items()))
    return (f"{p.get('policy_domain', '')} ({p.get('policy_type', '')}): "
            f"{p.get('successful', 0)} successful, {p.get('failed', 0)} failed"
            + (f" [{types}]" if types else ""))


def _list(args: argparse.Namespace, config_loader: Callable[[argparse.Namespace], Any]) -> int:
    reports = _store(args, config_loader).reports()
    if args.json:
        print(json.dumps(reports, indent=2))
        return 0
    if not reports:
        print("no TLS reports received")
        return 0
    for r in reports:
        for p in r.get("policies", []):
            print(f"{r.get('id', '')}  {r.get('start', '')} - {r.get('end', '')}  from "
                  f"{r.get('organization', '')}: {policy_line(p)}")
    return 0


def _show(args: argparse.Namespace, config_loader: Callable[[argparse.Namespace], Any]) -> int:
    r = _store(args, config_loader).get(args.id)
    if r is None:
        print(f"mxd tlsrpt: no report {args.id!r}")
        return 1
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    print(f"report {r.get('report_id', '')} from {r.get('organization', '')} "
          f"({r.get('contact', '')}), {r.get('start', '')} - {r.get('end', '')}, received "
          f"from {r.get('source', '')} sender {r.get('sender', '')}")
    for p in r.get("policies", []):
        print(f"  {policy_line(p)}")
        for mta, n in sorted(p.get("sending_mta", {}).items()):
            print(f"    sending MTA {mta}: {n} failed")
        for d in p.get("failure_details", []):
            print(f"    {d.get('result_type')} x{d.get('count')} mx={d.get('receiving_mx')} "
                  f"ip={d.get('receiving_ip')} {d.get('reason') or ''}".rstrip())
    return 0


def _day(text: str) -> str:
    try:
        datetime.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a day (YYYY-MM-DD): {text!r}") from None
    if len(text) != 10:
        raise argparse.ArgumentTypeError(f"not a day (YYYY-MM-DD): {text!r}")
    return text


def _send(args: argparse.Namespace, config_loader: Callable[[argparse.Namespace], Any]) -> int:
    from mxd.admin.client import AdminUnreachable, local_admin_post

    cfg = config_loader(args)
    try:
        status, body = local_admin_post(cfg, f"/api/tlsrpt/send?day={args.day}", timeout=60)
    except AdminUnreachable as e:
        print(f"mxd tlsrpt: {e}", file=sys.stderr)
        return 1
    try:
        answer = json.loads(body)
    except ValueError:
        answer = {"error": body.decode("utf-8", "replace").strip()}
    if status != 200:
        print(f"mxd tlsrpt: the server refused (HTTP {status}): {answer.get('error', '')}",
              file=sys.stderr)
        return 1
    print(f"{answer['day']}: {answer['reports']} report(s), {answer['deliveries']} "
          "delivery(ies) started")
    return 0


def run(args: argparse.Namespace, config_loader: Callable[[argparse.Namespace], Any]) -> int:
    return int(args.tlsrpt_func(args, config_loader))
