"""``mxd dns lookup TYPE NAME``: what mxd's resolver sees, for operators.

Prints the records, whether the answer is authentic (DNSSEC-validated by a trusted resolver),
the canonical name and any extended DNS error (RFC 8914). Exit status: 0 answer,
1 NXDOMAIN or no data, 2 failure (SERVFAIL, timeout, bad arguments).

Wiring (mxd/cli.py): ``add_arguments`` fills the ``lookup`` parser, ``run`` runs it::

    lookup = dns_subcommands.add_parser("lookup", help=...)
    mxd.dns.cli.add_arguments(lookup)
    lookup.set_defaults(func=mxd.dns.cli.run)
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

import dns.rdatatype
from twisted.internet.defer import Deferred

from mxd.dns.errors import (
    DNSError,
    DNSLookupError,
    DNSNegativeAnswer,
    DNSNotFound,
    DNSServFail,
    DNSTimeout,
    DomainError,
)
from mxd.dns.names import Domain
from mxd.dns.resolver import Nameserver, Resolver, ResolverSettings, settings_from_resolv_conf
from mxd.dns.results import MX, TLSA, Answer, ExtendedError, Record

EXIT_ANSWER, EXIT_NEGATIVE, EXIT_FAILURE = 0, 1, 2


def add_arguments(lookup: argparse.ArgumentParser) -> None:
    """Add the arguments of ``mxd dns lookup`` to its parser."""
    lookup.add_argument("type", metavar="TYPE", help="A, AAAA, MX, TXT, TLSA, PTR, CNAME, ...")
    lookup.add_argument("name", metavar="NAME",
                        help="domain name (ASCII or Unicode); an IP address for PTR")
    lookup.add_argument("--server", action="append", metavar="IP[:PORT]",
                        help="nameserver to ask (repeatable; default: /etc/resolv.conf)")
    lookup.add_argument("--trust-ad", action="store_true",
                        help="trust the AD bit of non-loopback --server addresses")
    lookup.add_argument("--resolv-conf", default="/etc/resolv.conf", metavar="PATH",
                        help="resolv.conf to read when no --server is given")
    lookup.add_argument("--timeout", type=float, default=3.0, metavar="S",
                        help="seconds to wait for each nameserver (default 3)")


def _settings(args: argparse.Namespace) -> ResolverSettings:
    if args.server:
        servers = tuple(
            Nameserver.parse(s, True if args.trust_ad else None) for s in args.server
        )
        return ResolverSettings(nameservers=servers, timeout=args.timeout, attempts=2,
                                cache_size=0)
    return settings_from_resolv_conf(args.resolv_conf, timeout=args.timeout, cache_size=0)


def format_record(record: Record) -> str:
    """One record in presentation form."""
    if isinstance(record, MX):
        return f"{record.preference} {_name(record.host)}"
    if isinstance(record, TLSA):
        return f"{record.usage} {record.selector} {record.mtype} {record.data.hex()}"
    if isinstance(record, bytes):
        text = "".join(chr(b) if 0x20 <= b < 0x7F and b not in (0x22, 0x5C) else f"\\{b:03d}"
                       for b in record)
        return f'"{text}"'
    if isinstance(record, Domain):
        return _name(record)
    return str(getattr(record, "text", record))


def _name(d: Domain) -> str:
    return d.ascii if d.unicode == d.ascii else f"{d.ascii} ({d.unicode})"


def _ede_lines(out: TextIO, ede: tuple[ExtendedError, ...]) -> None:
    for e in ede:
        out.write(f"extended-error: {e}\n")


async def lookup(reactor: Any, args: argparse.Namespace, out: TextIO) -> int:
    """Do the lookup of ``args`` on ``reactor``, print it to ``out``; return the exit code."""
    try:
        settings = _settings(args)
        rdtype = int(dns.rdatatype.from_text(args.type))
    except (ValueError, OSError, dns.rdatatype.UnknownRdatatype) as e:
        out.write(f"error: {e}\n")
        return EXIT_FAILURE
    resolver = Resolver(reactor, settings)
    type_text = dns.rdatatype.to_text(dns.rdatatype.RdataType.make(rdtype))
    try:
        if rdtype == dns.rdatatype.PTR and _is_ip(args.name):
            answer: Answer[Any] = await resolver.lookup_ptr(args.name)
        else:
            answer = await resolver.query(Domain.parse(args.name), rdtype)
    except DomainError as e:
        out.write(f"error: {e}\n")
        return EXIT_FAILURE
    except DNSLookupError as e:
        out.write(f"name: {_name(e.name)}\ntype: {type_text}\n")
        code = _report_error(e, out)
        _trust_note(settings, out)
        return code
    except DNSError as e:
        out.write(f"error: {e}\n")
        return EXIT_FAILURE
    out.write(f"name: {_name(answer.name)}\ntype: {type_text}\nstatus: answer\n")
    out.write(f"authentic: {'yes' if answer.authentic else 'no'}\n")
    if answer.canonical_name != answer.name:
        out.write(f"canonical-name: {_name(answer.canonical_name)}\n")
    out.write(f"ttl: {answer.ttl}\n")
    for record in answer.records:
        out.write(f"record: {format_record(record)}\n")
    _ede_lines(out, answer.extended_errors)
    _trust_note(settings, out)
    return EXIT_ANSWER


def _report_error(e: DNSLookupError, out: TextIO) -> int:
    if isinstance(e, DNSNegativeAnswer):
        status = "NXDOMAIN" if isinstance(e, DNSNotFound) else "no data (NOERROR, no records)"
        out.write(f"status: {status}\nauthentic: {'yes' if e.authentic else 'no'}\n")
        if e.canonical_name != e.name:
            out.write(f"canonical-name: {_name(e.canonical_name)}\n")
        _ede_lines(out, e.extended_errors)
        return EXIT_NEGATIVE
    if isinstance(e, DNSServFail):
        import dns.rcode

        rcode = dns.rcode.to_text(dns.rcode.Rcode.make(e.rcode))
        out.write(f"status: {rcode} (temporary failure)\n")
    elif isinstance(e, DNSTimeout):
        out.write("status: timeout (no answer from any nameserver)\n")
    else:
        out.write(f"status: failure ({e})\n")
    _ede_lines(out, e.extended_errors)
    return EXIT_FAILURE


def _trust_note(settings: ResolverSettings, out: TextIO) -> None:
    if not any(ns.trusted for ns in settings.nameservers):
        out.write(
            "note: no trusted nameserver: answers are never authentic (DANE cannot apply); "
            "run a local validating resolver (e.g. unbound) on 127.0.0.1 or ::1\n"
        )


def _is_ip(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run the parsed ``mxd dns`` command on the global reactor; return the exit code."""
    from twisted.internet.task import react

    stream = out or sys.stdout
    code = [EXIT_FAILURE]

    def main(reactor: Any) -> Deferred[None]:
        d: Deferred[int] = Deferred.fromCoroutine(lookup(reactor, args, stream))
        return d.addCallback(lambda c: code.__setitem__(0, c))

    try:
        react(main)
    except SystemExit:
        pass
    return code[0]


def main(argv: list[str] | None = None) -> int:
    """``python -m mxd.dns.cli lookup TYPE NAME ...`` (the same as ``mxd dns ...``)."""
    parser = argparse.ArgumentParser(prog="mxd dns")
    sub = parser.add_subparsers(dest="dns_command", metavar="COMMAND", required=True)
    add_arguments(sub.add_parser("lookup", help="look up TYPE NAME; authenticity, EDE"))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
