"""``mxd queue list|show|hold|release|drop|kick|requiretls|transport|domains``: queue administration on
the database file.

Works directly on the store's SQLite database (WAL, so safe while the server runs).  A
running server sees held/released/kicked recipients at its next wake-up (within the next
due time); dropping a message lowers its body's reference count, and the store removes a
body left unreferenced at its next start.

``requiretls ID yes|no|default`` overrides a message's REQUIRETLS (RFC 8689): yes requires
it, no delivers as with ``TLS-Required: No``, default is as received.  ``domains`` prints
the last TLS result per recipient domain (STARTTLS, REQUIRETLS, verified by DANE/MTA-STS).

Selectors: a queue id, ``--domain`` and/or ``--recipient``; ``--all`` to select everything.
Exit status: 0 done, 1 nothing matched / no such id, 2 usage or database errors.

Wiring (mxd/cli.py)::

    qp = sub.add_parser("queue", help="inspect and manage the outbound queue")
    _add_config(qp)
    queue_cli.add_arguments(qp)
    qp.set_defaults(func=lambda a: queue_cli.run(a, data_dir=_config(a).<store data dir>))
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from mxd.queue import queue as qq
from mxd.queue import views
from mxd.store import queuedb as qs

EXIT_OK, EXIT_NOMATCH, EXIT_ERROR = 0, 1, 2
DB_NAME_FALLBACK = "mxd.sqlite3"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the queue subcommands to the ``queue`` parser."""
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="the store's data directory (default: from the config)")
    sub = parser.add_subparsers(dest="queue_command", metavar="COMMAND")
    sub.required = True
    p = sub.add_parser("list", help="list queued messages")
    p.add_argument("--domain", help="only messages with a recipient in this domain")
    p.add_argument("--sender", help="only messages from this envelope sender")
    p.add_argument("--held", action="store_true", help="only messages with held recipients")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = sub.add_parser("show", help="show one message, its recipients and attempts")
    p.add_argument("queue_id")
    p.add_argument("--json", action="store_true", help="print JSON")
    for name, text in (("hold", "stop delivery attempts"), ("release", "undo hold"),
                       ("drop", "remove from the queue without a DSN"),
                       ("kick", "retry now")):
        p = sub.add_parser(name, help=text)
        p.add_argument("queue_id", nargs="?")
        p.add_argument("--domain")
        p.add_argument("--recipient")
        p.add_argument("--all", action="store_true", help="select every queued recipient")
    p = sub.add_parser("requiretls", help="override a message's REQUIRETLS (RFC 8689)")
    p.add_argument("queue_id")
    p.add_argument("setting", choices=qs.TLS_OVERRIDES,
                   help="yes: require TLS; no: as TLS-Required: No; default: as received")
    p = sub.add_parser("transport", help="send a message through a named transport "
                       "(wins over routes; \"default\" clears the override)")
    p.add_argument("queue_id")
    p.add_argument("name", help="a [transports.NAME] of the config, \"direct\" or \"default\"")
    p = sub.add_parser("domains", help="last TLS result per recipient domain")
    p.add_argument("--domain", help="only this domain")
    p.add_argument("--json", action="store_true", help="print JSON")


def _db_path(data_dir: Path) -> Path:
    try:
        from mxd.store.sqlite import DB_NAME
    except ImportError:  # pragma: no cover - the store is part of mxd
        DB_NAME = DB_NAME_FALLBACK
    return Path(data_dir) / DB_NAME


def _connect(path: Path) -> sqlite3.Connection:
    if not path.exists():
        raise FileNotFoundError(f"no database at {path}")
    conn = sqlite3.connect(path, isolation_level=None, timeout=10.0)
    conn.execute("PRAGMA foreign_keys=ON")
    row = conn.execute("SELECT name FROM sqlite_master WHERE type='table' AND "
                       "name='queue_messages'").fetchone()
    if row is None:
        conn.close()
        raise LookupError(f"{path} has no queue tables (start the server once)")
    return conn


def _write(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], Any]) -> Any:
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result


def _ts(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


def run(args: argparse.Namespace, data_dir: Path | None = None, out: TextIO = sys.stdout,
        err: TextIO = sys.stderr) -> int:
    """Run one queue command; returns the exit status."""
    data_dir = getattr(args, "data_dir", None) or data_dir
    if data_dir is None:
        print("mxd queue: no data directory (give --data-dir or a config)", file=err)
        return EXIT_ERROR
    try:
        conn = _connect(_db_path(data_dir))
    except (OSError, LookupError, sqlite3.Error) as e:
        print(f"mxd queue: {e}", file=err)
        return EXIT_ERROR
    try:
        return _dispatch(args, conn, out, err)
    except sqlite3.Error as e:
        print(f"mxd queue: database error: {e}", file=err)
        return EXIT_ERROR
    finally:
        conn.close()


def _dispatch(args: argparse.Namespace, conn: sqlite3.Connection, out: TextIO,
              err: TextIO) -> int:
    cmd = args.queue_command
    if cmd == "list":
        msgs = qs.list_messages(conn, domain=args.domain, sender=args.sender,
                                held=True if args.held else None, limit=100000)
        if args.json:
            json.dump([views.message_dict(m) for m in msgs], out, indent=1)
            out.write("\n")
        else:
            for m in msgs:
                flags = "".join(("H" if any(r.hold for r in m.recipients) else "",
                                 "T" if m.requiretls else "", "D" if m.is_dsn else ""))
                print(f"{m.queue_id}  {_ts(m.queued_at)}  {m.size:>8}  {flags:<3} "
                      f"<{m.mail_from}>", file=out)
                for r in m.recipients:
                    last = f"  {r.last_code} {r.last_text}" if r.last_code else ""
                    print(f"    {r.address}  {r.state}{' held' if r.hold else ''}"
                          f"  attempts={r.attempts} next={_ts(r.next_attempt)}{last}", file=out)
            print(f"{len(msgs)} message(s)", file=out)
        return EXIT_OK
    if cmd == "show":
        found = qs.get_message(conn, args.queue_id)
        if found is None:
            print(f"mxd queue: no message {args.queue_id}", file=err)
            return EXIT_NOMATCH
        info = views.message_dict(found, qs.attempts_for(conn, args.queue_id))
        if args.json:
            json.dump(info, out, indent=1)
            out.write("\n")
        else:
            for key, value in info.items():
                if key in ("recipients", "attempts"):
                    print(f"{key}:", file=out)
                    for item in value:
                        print("  " + "  ".join(f"{k}={v}" for k, v in item.items()), file=out)
                else:
                    print(f"{key}: {value}", file=out)
        return EXIT_OK
    if cmd == "requiretls":
        found = _write(conn, lambda c: qs.op_requiretls(c, args.queue_id, args.setting))
        if not found:
            print(f"mxd queue: no message {args.queue_id}", file=err)
            return EXIT_NOMATCH
        print(f"requiretls: {args.queue_id} set to {args.setting}"
              " (takes effect at its next attempt; kick it to retry now)", file=out)
        return EXIT_OK
    if cmd == "transport":
        known = getattr(args, "transport_names", None)
        if args.name not in ("default", "direct") and known is not None \
                and args.name not in known:
            print(f"mxd queue: unknown transport {args.name!r} (transports: "
                  f"{', '.join(sorted(known)) or 'none defined'})", file=err)
            return EXIT_ERROR
        try:
            qq.check_transport_name(args.name)
            n = _write(conn, lambda c: qs.op_transport(c, args.queue_id, args.name))
        except qq.QueueError as e:
            print(f"mxd queue: {e}", file=err)
            return EXIT_ERROR
        if not n:
            print(f"mxd queue: no message {args.queue_id}", file=err)
            return EXIT_NOMATCH
        print(f"transport: {args.queue_id} set to {args.name} for {n} recipient(s)"
              " (takes effect at its next attempt; kick it to retry now)", file=out)
        return EXIT_OK
    if cmd == "domains":
        return _domains(conn, args, out)
    if not (args.queue_id or args.domain or args.recipient or args.all):
        print(f"mxd queue {cmd}: give a queue id, --domain, --recipient or --all", file=err)
        return EXIT_ERROR
    sel = {"queue_id": args.queue_id, "domain": args.domain, "recipient": args.recipient}
    if cmd == "hold":
        n = _write(conn, lambda c: qs.op_hold(c, hold=True, **sel))
    elif cmd == "release":
        n = _write(conn, lambda c: qs.op_hold(c, hold=False, **sel))
    elif cmd == "kick":
        now = time.time()
        n = _write(conn, lambda c: qs.op_kick(c, now, **sel))
    elif cmd == "drop":
        n = _write(conn, lambda c: qs.op_drop(c, qs.unref_blob_sql, **sel))
    else:  # pragma: no cover - argparse restricts the choices
        return EXIT_ERROR
    print(f"{cmd}: {n} recipient(s)", file=out)
    return EXIT_OK if n else EXIT_NOMATCH


def _domains(conn: sqlite3.Connection, args: argparse.Namespace, out: TextIO) -> int:
    rows = qs.domain_tls(conn, args.domain)
    if args.json:
        json.dump([views.domain_tls_dict(d) for d in rows], out, indent=1)
        out.write("\n")
    else:
        def yn(b: bool) -> str:
            return "yes" if b else "no"

        print(f"{'domain':<30} {'last attempt':<19}  starttls requiretls verified  policy"
              "           mx", file=out)
        for d in rows:
            print(f"{d.domain:<30} {_ts(d.at):<19}  {yn(d.starttls):<8} {yn(d.requiretls):<10} "
                  f"{yn(d.verified):<9} {d.policy_type or '-':<16} {d.mx_host or '-'}"
                  + (f"  failure={d.result_type}" if d.result_type else ""), file=out)
        print(f"{len(rows)} domain(s)", file=out)
    if args.domain and not rows:
        return EXIT_NOMATCH
    return EXIT_OK
