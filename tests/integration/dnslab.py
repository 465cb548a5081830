"""A loopback DNSSEC lab: nsd serving zones signed at test time with ldns, unbound validating.

Usage in tests (import the fixtures into the test module or a conftest)::

    from tests.integration.dnslab import DNSLab, ZoneSpec, dns_lab, dns_lab_factory

    def test_x(dns_lab):                       # session lab with DEFAULT_ZONES
        host, port = dns_lab.resolver_address  # unbound, validating, on 127.0.0.1
        settings = dns_lab.resolver_settings()  # mxd ResolverSettings pointing at it

    def test_y(dns_lab_factory):               # a lab with your own zones
        lab = dns_lab_factory({
            "example.test": ZoneSpec(records=["@ MX 10 mx", "mx A 127.0.0.1"], signed=True,
                                     bogus=["bad A 192.0.2.66"]),
            "insecure.test": ZoneSpec(records=["@ TXT \"v=spf1 -all\""], signed=False),
        })

For programs that only read /etc/resolv.conf (posttls-finger, spfquery, dig)::

    lab = DNSLab(tmp).start(zones, port53=True)      # unbound also on 127.0.0.x:53 (root)
    subprocess.run(lab.wrap(["posttls-finger", ...]))  # /etc/resolv.conf bind-mounted

Zone records are zone-file lines relative to the zone (``$ORIGIN`` is the zone, ``$TTL`` 300);
the lab adds SOA (negative TTL 300), NS ``ns1`` and ``ns1 A 127.0.0.1``. Signed zones get an
ECDSAP256SHA256 KSK and ZSK (ldns-keygen), NSEC (ldns-signzone), and their DS (ldns-key2ds)
becomes unbound's trust anchor. ``bogus`` lines are added to a signed zone and their RRSIG is
corrupted after signing, so unbound answers SERVFAIL (EDE 6, DNSSEC Bogus) for them. Names
under ``test.`` and the lab's reverse zones never leave the machine: unbound has a stub zone
per lab zone and forwards everything else to nsd, which refuses it.
"""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from tests.integration.tools import STARTUP_TIMEOUT, require_tool

TLSA_SAMPLE = "3 1 1 " + "0123456789abcdef" * 4

DEFAULT_ZONES: dict[str, Any] = {}  # filled below, after ZoneSpec


@attrs.frozen
class ZoneSpec:
    """One lab zone: zone-file lines, whether it is signed, and lines served as bogus."""

    records: list[str] = attrs.field(factory=list)
    signed: bool = True
    bogus: list[str] = attrs.field(factory=list)


DEFAULT_ZONES.update({
    "example.test": ZoneSpec(
        records=[
            "@ MX 10 mx",
            "@ TXT \"v=spf1 ip4:127.0.0.1 -all\"",
            "mx A 127.0.0.1",
            "mx AAAA ::1",
            f"_25._tcp.mx TLSA {TLSA_SAMPLE}",
            "www CNAME mx",
            "alias CNAME www",
            "long TXT \"first part \" \"second part\"",
            "nodata A 127.0.0.2",
        ],
        signed=True,
        bogus=["bogus A 192.0.2.66", f"_25._tcp.bogus TLSA {TLSA_SAMPLE}"],
    ),
    "insecure.test": ZoneSpec(
        records=["@ MX 10 mx", "mx A 127.0.0.1", f"_25._tcp.mx TLSA {TLSA_SAMPLE}"],
        signed=False,
    ),
    "2.0.192.in-addr.arpa": ZoneSpec(records=["1 PTR mx.example.test."], signed=True),
})


def _free_udp_tcp_port() -> int:
    """A port free on 127.0.0.1 for both UDP and TCP right now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = int(u.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port on 127.0.0.1")


def _free_port53_address() -> str:
    """A 127.0.0.x address whose port 53 is free for UDP and TCP (needs root)."""
    import secrets

    for _ in range(50):
        addr = f"127.0.{secrets.randbelow(250) + 1}.{secrets.randbelow(250) + 2}"
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, \
                    socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                u.bind((addr, 53))
                t.bind((addr, 53))
        except PermissionError:
            pytest.skip("port 53 needs root (DNSLab.start(port53=True))")
        except OSError:
            continue
        return addr
    raise RuntimeError("no 127.0.0.x address with a free port 53")


def _run(argv: list[str], cwd: Path) -> str:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr}")
    return proc.stdout


class DNSLab:
    """nsd + validating unbound on 127.0.0.1, in ``tmpdir``; ``start`` then ``stop``."""

    def __init__(self, tmpdir: Path | str) -> None:
        self.dir = Path(tmpdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.zones: dict[str, ZoneSpec] = {}
        self.trust_anchors: list[str] = []
        self.nsd_port = 0
        self.unbound_port = 0
        self.port53_address: str | None = None
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    # -- public ------------------------------------------------------------------------

    @property
    def resolver_address(self) -> tuple[str, int]:
        """(host, port) of the validating unbound."""
        return ("127.0.0.1", self.unbound_port)

    @property
    def authoritative_address(self) -> tuple[str, int]:
        """(host, port) of nsd (answers without validation, never sets AD)."""
        return ("127.0.0.1", self.nsd_port)

    def resolver_settings(self, trusted: bool = True, **kw: Any) -> Any:
        """mxd ResolverSettings with the lab's unbound as the only nameserver."""
        from mxd.dns.resolver import Nameserver, ResolverSettings

        host, port = self.resolver_address
        kw.setdefault("timeout", 2.0)
        return ResolverSettings(nameservers=(Nameserver(host, port, trusted),), **kw)

    def start(self, zones: dict[str, ZoneSpec] | None = None,
              timeout: float = STARTUP_TIMEOUT, *,
              port53: bool = False) -> DNSLab:
        """Generate, sign and serve ``zones`` (default DEFAULT_ZONES); wait until ready.

        ``port53``: unbound also listens on port 53 of a random 127.0.0.x address, for
        third-party programs that only read /etc/resolv.conf (see ``wrap``); needs root.
        """
        if port53:
            self.port53_address = _free_port53_address()
        tools = {t: require_tool(t) for t in
                 ("nsd", "unbound", "ldns-keygen", "ldns-signzone", "ldns-key2ds")}
        self.zones = dict(DEFAULT_ZONES if zones is None else zones)
        zonefiles = {name: self._make_zone(name.rstrip(".").lower(), spec, tools)
                     for name, spec in self.zones.items()}
        try:
            self.nsd_port = _free_udp_tcp_port()
            self._start("nsd", [tools["nsd"], "-d", "-c", str(self._nsd_conf(zonefiles))])
            first = next(iter(zonefiles))
            self._wait(self.authoritative_address, first, "SOA", timeout)
            self.unbound_port = _free_udp_tcp_port()
            self._start("unbound", [tools["unbound"], "-d", "-c", str(self._unbound_conf())])
            self._wait(self.resolver_address, first, "SOA", timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def resolv_conf(self) -> Path:
        """A resolv.conf naming the lab's port-53 unbound (``start(port53=True)``)."""
        if self.port53_address is None:
            raise RuntimeError("start the lab with port53=True for a resolv.conf")
        path = self.dir / "resolv.conf"
        path.write_text(f"nameserver {self.port53_address}\noptions edns0 trust-ad\n")
        return path

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` run in a private mount namespace where /etc/resolv.conf is the lab's
        (TESTING.md): the program resolves through the lab and nothing else."""
        unshare = require_tool("unshare")
        script = 'mount --bind "$0" /etc/resolv.conf && exec "$@"'
        return [unshare, "-m", "sh", "-c", script, str(self.resolv_conf()), *argv]

    def stop(self) -> None:
        """Stop both servers (idempotent)."""
        for name, proc in list(self._procs.items()):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            del self._procs[name]

    def log(self, name: str) -> str:
        """The log of ``nsd`` or ``unbound`` (for failure messages)."""
        path = self.dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def __enter__(self) -> DNSLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- zones ---------------------------------------------------------------------------

    def _make_zone(self, zone: str, spec: ZoneSpec, tools: dict[str, str]) -> Path:
        zdir = self.dir / "zones" / zone
        zdir.mkdir(parents=True, exist_ok=True)
        lines = [
            f"$ORIGIN {zone}.",
            "$TTL 300",
            f"@ SOA ns1.{zone}. hostmaster.{zone}. 1 3600 900 604800 300",
            "@ NS ns1",
            "ns1 A 127.0.0.1",
            *spec.records,
            *spec.bogus,
        ]
        path = zdir / f"{zone}.zone"
        path.write_text("\n".join(lines) + "\n")
        if not spec.signed:
            if spec.bogus:
                raise ValueError(f"bogus records need a signed zone ({zone})")
            return path
        alg = "ECDSAP256SHA256"
        ksk = _run([tools["ldns-keygen"], "-a", alg, "-k", zone], zdir).strip()
        zsk = _run([tools["ldns-keygen"], "-a", alg, zone], zdir).strip()
        inception = time.strftime("%Y%m%d%H%M%S", time.gmtime(time.time() - 3600))
        _run([tools["ldns-signzone"], "-i", inception, path.name, ksk, zsk], zdir)
        signed = zdir / f"{zone}.zone.signed"
        ds = _run([tools["ldns-key2ds"], "-n", "-2", f"{ksk}.key"], zdir).strip()
        self.trust_anchors.append(ds)
        if spec.bogus:
            self._corrupt(zone, signed, spec.bogus)
        return signed

    @staticmethod
    def _corrupt(zone: str, signed: Path, bogus: list[str]) -> None:
        """Break the RRSIG of each bogus line's RRset: the data no longer matches its
        signature, so a validator finds it bogus (RFC 4035 §5.3)."""
        import dns.name
        import dns.rdatatype

        origin = dns.name.from_text(zone)
        targets: set[tuple[str, str]] = set()
        for line in bogus:
            words = line.split()
            owner = dns.name.from_text(words[0], origin).to_text().lower()
            rtype = next(w.upper() for w in words[1:] if _is_type(w))
            targets.add((owner, rtype))
        out, hit = [], set()
        for line in signed.read_text().splitlines():
            f = line.split()
            if len(f) > 12 and f[3] == "RRSIG" and (f[0].lower(), f[4].upper()) in targets:
                sig = bytearray(base64.b64decode("".join(f[12:])))
                sig[len(sig) // 2] ^= 0xFF
                line = "\t".join([*f[:12], base64.b64encode(bytes(sig)).decode()])
                hit.add((f[0].lower(), f[4].upper()))
            out.append(line)
        if hit != targets:
            raise RuntimeError(f"no RRSIG found for bogus records {sorted(targets - hit)}")
        signed.write_text("\n".join(out) + "\n")

    # -- servers -------------------------------------------------------------------------

    def _nsd_conf(self, zonefiles: dict[str, Path]) -> Path:
        d = self.dir
        conf = [
            "server:",
            f"    ip-address: 127.0.0.1@{self.nsd_port}",
            f"    port: {self.nsd_port}",
            '    username: ""',
            '    chroot: ""',
            '    database: ""',
            f'    zonesdir: "{d}"',
            f'    zonelistfile: "{d}/nsd.zonelist"',
            f'    xfrdfile: "{d}/nsd.xfrd.state"',
            f'    xfrdir: "{d}"',
            f'    pidfile: "{d}/nsd.pid"',
            f'    logfile: "{d}/nsd.log"',
            "    server-count: 1",
            "    do-ip6: no",
            "    verbosity: 1",
            "remote-control:",
            "    control-enable: no",
        ]
        for name, path in zonefiles.items():
            conf += ["zone:", f"    name: {name}", f'    zonefile: "{path}"']
        path = d / "nsd.conf"
        path.write_text("\n".join(conf) + "\n")
        return path

    def _unbound_conf(self) -> Path:
        d = self.dir
        anchors = d / "trust-anchors.ds"
        anchors.write_text("\n".join(self.trust_anchors) + "\n")
        conf = [
            "server:",
            f"    interface: 127.0.0.1@{self.unbound_port}",
            f"    port: {self.unbound_port}",
            "    do-ip6: no",
            '    username: ""',
            '    chroot: ""',
            f'    directory: "{d}"',
            f'    pidfile: "{d}/unbound.pid"',
            "    use-syslog: no",
            f'    logfile: "{d}/unbound.log"',
            "    verbosity: 1",
            "    val-log-level: 2",
            "    ede: yes",
            "    num-threads: 1",
            "    so-reuseport: no",
            "    do-not-query-localhost: no",
            '    module-config: "validator iterator"',
            "    qname-minimisation: no",
            "    trust-anchor-signaling: no",
            "    access-control: 127.0.0.0/8 allow",
            *([f"    interface: {self.port53_address}@53"] if self.port53_address else []),
            '    local-zone: "test." nodefault',
        ]
        if self.trust_anchors:
            conf.append(f'    trust-anchor-file: "{anchors}"')
        for name in self.zones:
            if name.rstrip(".").endswith(".arpa"):
                conf.append(f'    local-zone: "{name.rstrip(".")}." nodefault')
        conf += ["remote-control:", "    control-enable: no"]
        for name in self.zones:
            conf += ["stub-zone:", f'    name: "{name.rstrip(".")}."',
                     f"    stub-addr: 127.0.0.1@{self.nsd_port}"]
        conf += ["forward-zone:", '    name: "."', f"    forward-addr: 127.0.0.1@{self.nsd_port}"]
        path = d / "unbound.conf"
        path.write_text("\n".join(conf) + "\n")
        return path

    def _start(self, name: str, argv: list[str]) -> None:
        out = open(self.dir / f"{name}.out", "wb")
        try:
            self._procs[name] = subprocess.Popen(
                argv, cwd=self.dir, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env={**os.environ, "LC_ALL": "C"},
            )
        finally:
            out.close()

    def _wait(self, address: tuple[str, int], zone: str, rdtype: str, timeout: float) -> None:
        """Poll with a DNS query until the server answers NOERROR (bounded)."""
        import dns.message
        import dns.query
        import dns.rcode

        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited ({proc.returncode}): "
                        f"{(self.dir / f'{name}.out').read_text(errors='replace')}"
                        f"{self.log(name)}"
                    )
            try:
                r = dns.query.udp(dns.message.make_query(zone, rdtype), address[0],
                                  port=address[1], timeout=0.25)
                if r.rcode() == dns.rcode.NOERROR:
                    return
                last = dns.rcode.to_text(r.rcode())
            except Exception as e:
                last = e
            time.sleep(0.05)  # poll interval while the server starts
        raise RuntimeError(f"DNS server at {address} not ready in {timeout}s: {last}")


def _is_type(word: str) -> bool:
    import dns.rdatatype

    if word.upper() in ("IN", "CH", "HS") or word.isdigit():
        return False
    try:
        dns.rdatatype.from_text(word)
    except Exception:
        return False
    return True


@pytest.fixture(scope="session")
def dns_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DNSLab]:
    """A running lab with DEFAULT_ZONES for the whole test session."""
    lab = DNSLab(tmp_path_factory.mktemp("dnslab"))
    lab.start()
    try:
        yield lab
    finally:
        lab.stop()


@pytest.fixture
def dns_lab_factory(tmp_path: Path) -> Iterator[Callable[[dict[str, ZoneSpec]], DNSLab]]:
    """``make(zones) -> DNSLab``: labs with custom zones, all stopped after the test."""
    labs: list[DNSLab] = []

    def make(zones: dict[str, ZoneSpec]) -> DNSLab:
        lab = DNSLab(tmp_path / f"dnslab{len(labs)}")
        labs.append(lab)
        return lab.start(zones)

    try:
        yield make
    finally:
        for lab in labs:
            lab.stop()
