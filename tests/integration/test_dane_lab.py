"""DANE against the real DNSSEC lab, with Postfix's posttls-finger as an independent verifier.

A lab zone ``example.test`` (signed) holds one MX host per case, each with its own TLSA
record and an aiosmtpd server with STARTTLS on loopback presenting the case's certificate
chain.  mxd looks the TLSA records up through its real resolver (authentic answers from the
validating unbound), fetches the server's chain with a STARTTLS handshake (SNI = the host)
and runs ``mxd.dane.verify_chain``; posttls-finger runs against the same server and zone
(a second unbound of the same configuration on ``127.x.y.z:53`` for the C library resolver,
bound into a private mount namespace's /etc/resolv.conf).  The two verdicts must agree.
"""

from __future__ import annotations

import datetime
import os
import random
import re
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL

from mxd import dane
from mxd.dns.resolver import Resolver
from mxd.dns.testing import run_with_reactor
from mxd.queue import tlspolicy
from mxd.queue.tlspolicy import HostRefusal, HostTLSPolicy, PolicyMode
from mxd.tlsrpt.results import ResultType
from tests.integration import dnslab
from tests.integration.dnslab import DNSLab, ZoneSpec
from tests.integration.tools import (
    STARTUP_TIMEOUT,
    free_port,
    in_ci,
    require_module,
    require_tool,
)

dns_lab = dnslab.dns_lab  # the session lab (DEFAULT_ZONES: insecure.test, bogus TLSA)

pytestmark = pytest.mark.integration


@attrs.frozen
class Case:
    host: str  # MX host label under example.test
    leaf_names: tuple[str, ...]
    intermediate: bool  # leaf issued by an intermediate that the server sends
    record: str  # "ee-match" | "ee-mismatch" | "ta-match" (2 0 1) | "ta-spki" (2 1 1)
    expect_verified: bool
    expect_result: ResultType | None = None
    finger_says: str = "Verified TLS connection"  # a line posttls-finger prints
    expired: bool = False  # the leaf's validity ended yesterday
    expired_anchor: bool = False  # the DANE-TA intermediate's validity ended yesterday


CASES = [
    Case("mx1", ("mx1.example.test",), False, "ee-match", True, None, "Matched DANE EE"),
    Case("mx2", ("mx2.example.test",), False, "ee-mismatch", False,
         ResultType.VALIDATION_FAILURE, "no matching DANE TLSA records"),
    Case("mx3", ("mx3.example.test",), True, "ta-match", True, None, "Matched DANE TA"),
    Case("mx4", ("other.example.test",), True, "ta-match", False,  # DANE-TA, wrong name
         ResultType.CERTIFICATE_HOST_MISMATCH, "hostname mismatch"),
    # RFC 7672 §3.1.1: DANE-EE ignores expiry; DANE-TA does not.
    Case("mx5", ("mx5.example.test",), False, "ee-match", True, None, "Matched DANE EE",
         expired=True),
    Case("mx6", ("mx6.example.test",), True, "ta-match", False,
         ResultType.CERTIFICATE_EXPIRED, "certificate has expired", expired=True),
    Case("mx7", ("*.example.test",), True, "ta-spki", True, None, "Matched DANE TA"),
    # The trust anchor's own dates are not checked (by either side).
    Case("mx8", ("mx8.example.test",), True, "ta-match", True, None, "Matched DANE TA",
         expired_anchor=True),
]


def _der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


class _Sink:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 OK"


@attrs.define
class Server:
    case: Case
    port: int
    tlsa: dane.TLSA
    controller: Any


def _expired_anchor_chain(names: tuple[str, ...], tmp: Path) -> tuple[list[bytes], Path, Path]:
    """root -> intermediate (expired yesterday) -> leaf: DER chain and PEM files."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    day = datetime.timedelta(days=1)

    def make(cn: str, issuer: Any, issuer_key: Any, ca: bool, start: Any, end: Any) -> Any:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        b = (x509.CertificateBuilder().subject_name(name)
             .issuer_name(issuer.subject if issuer is not None else name)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(start).not_valid_after(end)
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                                critical=False)
        return b.sign(issuer_key or key, hashes.SHA256()), key

    root, root_key = make("root", None, None, True, now - 30 * day, now + 30 * day)
    inter, inter_key = make("intermediate", root, root_key, True, now - 30 * day, now - day)
    leaf, leaf_key = make(names[0], inter, inter_key, False, now - 2 * day, now + 30 * day)
    chain_pem, key_pem = tmp / "chain.pem", tmp / "key.pem"
    chain_pem.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, inter)))
    key_pem.write_bytes(leaf_key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return [c.public_bytes(serialization.Encoding.DER) for c in (leaf, inter)], chain_pem, key_pem


def _start_server(case: Case, root: trustme.CA, tmp: Path) -> Server:
    from aiosmtpd.controller import Controller

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    if case.expired_anchor:
        chain, chain_pem, key_pem = _expired_anchor_chain(case.leaf_names, tmp)
        ctx.load_cert_chain(str(chain_pem), str(key_pem))
        record = dane.tlsa_for_certificate(chain[1], 2, 0, 1)
        port = free_port()
        controller = Controller(_Sink(), hostname="127.0.0.1", port=port, tls_context=ctx,
                                require_starttls=False)
        controller.start()
        return Server(case, port, record, controller)
    ca = root.create_child_ca() if case.intermediate else root
    if case.expired:
        now = datetime.datetime.now(datetime.UTC)
        leaf = ca.issue_cert(*case.leaf_names, not_before=now - datetime.timedelta(days=30),
                             not_after=now - datetime.timedelta(days=1))
    else:
        leaf = ca.issue_cert(*case.leaf_names)
    chain = [_der(b.bytes()) for b in leaf.cert_chain_pems]
    if case.record == "ee-match":
        record = dane.tlsa_for_certificate(chain[0], 3, 1, 1)
    elif case.record == "ee-mismatch":
        record = dane.tlsa_for_certificate(_der(trustme.CA().issue_cert(
            f"{case.host}.example.test").cert_chain_pems[0].bytes()), 3, 1, 1)
    elif case.record == "ta-spki":
        record = dane.tlsa_for_certificate(chain[1], 2, 1, 1)
    else:
        record = dane.tlsa_for_certificate(chain[1], 2, 0, 1)  # the intermediate, sent by the server
    leaf.configure_cert(ctx)
    port = free_port()
    controller = Controller(_Sink(), hostname="127.0.0.1", port=port, tls_context=ctx,
                            require_starttls=False)
    controller.start()
    return Server(case, port, record, controller)


def _second_unbound(lab: DNSLab) -> tuple[subprocess.Popen[bytes], str]:
    """The lab's unbound configuration again, on port 53 of a random 127/8 address (the C
    library resolver cannot use another port)."""
    import dns.message
    import dns.query

    unbound = require_tool("unbound")
    base = (lab.dir / "unbound.conf").read_text()
    for _ in range(5):
        addr = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
        conf = re.sub(r"interface: .*", f"interface: {addr}@53", base)
        conf = re.sub(r"(?m)^(\s+)port: \d+", r"\1port: 53", conf)
        conf = conf.replace("unbound.pid", "unbound-53.pid").replace("unbound.log", "unbound-53.log")
        path = lab.dir / "unbound-53.conf"
        path.write_text(conf)
        proc = subprocess.Popen([unbound, "-d", "-c", str(path)], cwd=lab.dir,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        last: Exception | None = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                r = dns.query.udp(dns.message.make_query("example.test", "SOA"), addr, port=53,
                                  timeout=0.25)
                if r.rcode() == 0:
                    return proc, addr
            except Exception as e:
                last = e  # not up yet
            time.sleep(0.05)  # poll interval while unbound starts
        proc.terminate()
        proc.wait(5)
    raise RuntimeError(f"could not start a second unbound on port 53: {last}")


@pytest.fixture(scope="module")
def dane_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The servers, the lab with their TLSA records, and (as root) unbound on :53."""
    require_module("aiosmtpd")
    root = trustme.CA()
    servers = []
    lab = DNSLab(tmp_path_factory.mktemp("dane-lab"))
    extra: subprocess.Popen[bytes] | None = None
    try:
        for case in CASES:
            servers.append(_start_server(case, root, tmp_path_factory.mktemp(case.host)))
        records = ["@ MX 10 mx1"]
        for s in servers:
            text = dane.tlsa_text(s.tlsa)
            records += [f"{s.case.host} A 127.0.0.1", f"_25._tcp.{s.case.host} TLSA {text}",
                        f"_{s.port}._tcp.{s.case.host} TLSA {text}"]
        # A host whose TLSA records fail DNSSEC validation (served by mx1's server).
        bogus_port = servers[0].port
        records.append("mxbogus A 127.0.0.1")
        bogus = [f"_25._tcp.mxbogus TLSA {dane.tlsa_text(servers[0].tlsa)}",
                 f"_{bogus_port}._tcp.mxbogus TLSA {dane.tlsa_text(servers[0].tlsa)}"]
        lab.start({"example.test": ZoneSpec(records=records, bogus=bogus)})
        world: dict[str, Any] = {"lab": lab, "servers": servers, "resolver_addr": None,
                                 "bogus_port": bogus_port}
        if os.geteuid() == 0:
            extra, world["resolver_addr"] = _second_unbound(lab)
        yield world
    finally:
        if extra is not None:
            extra.terminate()
            extra.wait(5)
        lab.stop()
        for s in servers:
            s.controller.stop()


def _peer_chain(port: int, sni: str) -> list[bytes]:
    """EHLO, STARTTLS, TLS handshake with SNI (no verification): the server's chain."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        f = sock.makefile("rb")

        def reply() -> bytes:
            while True:
                line = f.readline()
                if len(line) < 4 or line[3:4] != b"-":
                    return line

        reply()
        sock.sendall(b"EHLO client.test\r\n")
        reply()
        sock.sendall(b"STARTTLS\r\n")
        assert reply().startswith(b"220")
        sock.settimeout(None)  # pyOpenSSL needs a blocking socket (the server is local)
        options = tlspolicy.UnverifiedSNIOptions(sni)
        conn = SSL.Connection(options._ctx, sock)
        conn.set_tlsext_host_name(sni.encode())
        conn.set_connect_state()
        conn.do_handshake()
        chain = [c.to_cryptography().public_bytes(serialization.Encoding.DER)
                 for c in conn.get_peer_cert_chain() or []]
        conn.shutdown()
        return chain


def _mxd_verdict(lab: DNSLab, server: Server) -> tuple[HostTLSPolicy | HostRefusal, Any]:
    host = f"{server.case.host}.example.test"

    async def go(reactor: Any) -> Any:
        resolver = Resolver(reactor, lab.resolver_settings())
        mx = await resolver.lookup_mx("example.test")
        addr = await resolver.lookup_a(host)
        return await tlspolicy.policy_for_host(resolver, None, "example.test", host,
                                               mx.authentic, addr.authentic)

    policy = run_with_reactor(go, timeout=20)
    if not isinstance(policy, HostTLSPolicy):
        return policy, None
    chain = _peer_chain(server.port, policy.sni or host)
    return policy, policy.check(chain, None, time.time())


def _posttls_finger(world: dict[str, Any], host: str, port: int, tmp: Path) -> tuple[bool, str]:
    finger = require_tool("posttls-finger")
    unshare = require_tool("unshare")
    if world["resolver_addr"] is None:
        msg = "posttls-finger needs root (unshare, a resolver on port 53)"
        if in_ci():
            pytest.fail(msg)
        pytest.skip(msg)
    resolv = tmp / "resolv.conf"
    resolv.write_text(f"nameserver {world['resolver_addr']}\noptions edns0 trust-ad\n")
    config = tmp / "postfix"
    config.mkdir(exist_ok=True)
    (config / "main.cf").write_text("dnssec_probe =\ncompatibility_level = 3.6\n"
                                    "smtp_dns_support_level = dnssec\n")
    target = f"[{host}.example.test]:{port}"
    proc = subprocess.run(
        [unshare, "-m", "sh", "-c", 'mount --bind "$0" /etc/resolv.conf && exec "$@"',
         str(resolv), finger, "-c", "-l", "dane", "-L", "summary,certmatch", target],
        env={**os.environ, "MAIL_CONFIG": str(config)}, capture_output=True, text=True,
        timeout=60,
    )
    out = proc.stdout + proc.stderr
    return "Verified TLS connection established" in out, out


@pytest.mark.parametrize("case", CASES, ids=[f"{c.host}-{c.record}" for c in CASES])
def test_mxd_agrees_with_posttls_finger(dane_world: dict[str, Any], case: Case,
                                        tmp_path: Path) -> None:
    """mxd's DANE verdict (real resolver, real TLS chain) equals posttls-finger's: DANE-EE
    match and mismatch, DANE-TA (certificate and key) with the right, a wildcard and a wrong
    name, an expired leaf under DANE-EE (accepted) and DANE-TA (refused), and an expired
    DANE-TA anchor (accepted)."""
    server = next(s for s in dane_world["servers"] if s.case == case)
    policy, check = _mxd_verdict(dane_world["lab"], server)
    assert isinstance(policy, HostTLSPolicy) and policy.mode is PolicyMode.DANE
    assert policy.tlsa == (server.tlsa,)
    assert check.verified is case.expect_verified and check.ok is case.expect_verified
    assert check.result_type is case.expect_result
    finger_verified, transcript = _posttls_finger(dane_world, case.host, server.port, tmp_path)
    assert finger_verified is check.verified, transcript
    assert case.finger_says in transcript, transcript


def test_bogus_tlsa_agrees_with_posttls_finger(dane_world: dict[str, Any],
                                               tmp_path: Path) -> None:
    """TLSA records that fail DNSSEC validation: mxd refuses the host for now (4.7.5,
    dnssec-invalid) and posttls-finger does not establish a verified connection either."""
    lab: DNSLab = dane_world["lab"]

    async def go(reactor: Any) -> Any:
        resolver = Resolver(reactor, lab.resolver_settings())
        mx = await resolver.lookup_mx("example.test")
        addr = await resolver.lookup_a("mxbogus.example.test")
        return await tlspolicy.policy_for_host(resolver, None, "example.test",
                                               "mxbogus.example.test", mx.authentic,
                                               addr.authentic)

    refusal = run_with_reactor(go, timeout=20)
    assert isinstance(refusal, HostRefusal) and not refusal.permanent
    assert refusal.result_type is ResultType.DNSSEC_INVALID
    verified, transcript = _posttls_finger(dane_world, "mxbogus", dane_world["bogus_port"],
                                           tmp_path)
    assert not verified, transcript
    assert "TLSA lookup error" in transcript, transcript


def test_real_lookup_is_authentic_and_matches(dane_world: dict[str, Any]) -> None:
    """The TLSA record generated from the certificate comes back authentic through the
    real resolver and verify_chain matches it against the served chain."""
    lab: DNSLab = dane_world["lab"]
    server = dane_world["servers"][0]

    async def go(reactor: Any) -> Any:
        resolver = Resolver(reactor, lab.resolver_settings())
        return await resolver.lookup_tlsa("_25._tcp.mx1.example.test")

    answer = run_with_reactor(go, timeout=20)
    assert answer.authentic and answer.records == (server.tlsa,)
    chain = _peer_chain(server.port, "mx1.example.test")
    result = dane.verify_chain(answer.records, chain, ["mx1.example.test"], time.time())
    assert result.verified and result.matched == server.tlsa


def _policy_from_default_lab(lab: DNSLab, domain: str, host: str) -> Any:
    async def go(reactor: Any) -> Any:
        resolver = Resolver(reactor, lab.resolver_settings())
        mx = await resolver.lookup_mx(domain)
        addr = await resolver.lookup_a(host)
        return await tlspolicy.policy_for_host(resolver, None, domain, host, mx.authentic,
                                               addr.authentic)

    return run_with_reactor(go, timeout=20)


def test_unsigned_zone_is_opportunistic(dns_lab: DNSLab) -> None:
    """An MX host in an unsigned zone (with a TLSA record) gets opportunistic TLS: no DANE."""
    policy = _policy_from_default_lab(dns_lab, "insecure.test", "mx.insecure.test")
    assert isinstance(policy, HostTLSPolicy) and policy.mode is PolicyMode.OPPORTUNISTIC


def test_bogus_tlsa_defers(dns_lab: DNSLab) -> None:
    """A bogus TLSA answer (signature broken) refuses the host temporarily: dnssec-invalid."""
    async def go(reactor: Any) -> Any:
        resolver = Resolver(reactor, dns_lab.resolver_settings())
        return await tlspolicy.policy_for_host(resolver, None, "example.test",
                                               "bogus.example.test", True, True)

    refusal = run_with_reactor(go, timeout=20)
    assert isinstance(refusal, HostRefusal) and not refusal.permanent
    assert refusal.enhanced == "4.7.5" and refusal.result_type is ResultType.DNSSEC_INVALID
